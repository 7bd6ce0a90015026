//! Any text frame on a JSON session: decoding must never panic, and a
//! command that decodes must survive an encode/decode round trip in both
//! encodings unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use switchboard::codec::{as_inbound, Inbound, decode_command, encode, Encoding};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(command) = decode_command(Encoding::Json, &Inbound::Text(text.as_bytes().to_vec().into())) else {
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
