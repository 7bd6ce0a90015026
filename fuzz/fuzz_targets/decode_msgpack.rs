//! Any binary frame on a MessagePack session: the length/nesting guard and
//! the decoder must never panic or allocate from a length prefix; a command
//! that decodes must survive a round trip in both encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use switchboard::codec::{as_inbound, Inbound, decode_command, encode, Encoding};
use switchboard::validate::{check_msgpack, MAX_FRAME_DEPTH};

fuzz_target!(|data: &[u8]| {
    let guard = check_msgpack(data, MAX_FRAME_DEPTH);
    let decoded = decode_command(Encoding::MsgPack, &Inbound::Binary(data.to_vec().into()));
    if guard.is_err() {
        assert!(decoded.is_err(), "the guard refused but decoding went on");
    }
    let Ok(command) = decoded else {
        return;
    };
    let frame = json!({"id": command.id, "action": command.action, "payload": command.payload});
    for encoding in Encoding::ALL {
        let again = decode_command(encoding, &as_inbound(&encode(encoding, &frame)))
            .unwrap_or_else(|e| panic!("{encoding:?} round trip failed: {}", e.message));
        assert_eq!(
            again, command,
            "{encoding:?} round trip changed the command"
        );
    }
});
