//! Decoding and dispatch: the input is a sequence of frames (split on 0xff
//! bytes, each frame's first byte picking the session and encoding), each
//! decoded and run through the actions pipeline as a customer, an agent or a
//! service on one long-lived broker, the way the reader loop runs them. No
//! action may panic, whatever the payload, and every reply must encode.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use switchboard::actions::ActionContext;
use switchboard::auth::Role;
use switchboard::codec::{decode_command, encode_error, encode_result, Encoding, Inbound};
use switchboard::outbox::Outbox;
use switchboard::{ActionRegistry, Broker, Config};

struct World {
    runtime: tokio::runtime::Runtime,
    sessions: Vec<(ActionContext, Arc<Outbox>, Encoding)>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let config = Config::from_toml(
            "[[actions.custom]]\nname = \"hi\"\naction = \"SendMessage\"\npayload = { body = \"hi\" }\n",
        )
        .unwrap();
        let broker = Arc::new(Broker::new(config, ActionRegistry::new()).unwrap());
        let people = [
            ("fuzz-customer", Role::Customer, Encoding::Json),
            ("fuzz-customer-2", Role::Customer, Encoding::MsgPack),
            ("fuzz-agent", Role::Agent, Encoding::MsgPack),
            ("fuzz-service", Role::Service, Encoding::Json),
        ];
        let sessions = people
            .iter()
            .map(|(name, role, encoding)| {
                let (ctx, outbox) = runtime
                    .block_on(broker.session_without_socket(name, *role, *encoding))
                    .expect("connect");
                (ctx, outbox, *encoding)
            })
            .collect();
        World { runtime, sessions }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    for chunk in data.split(|b| *b == 0xff).take(16) {
        let Some((&selector, frame)) = chunk.split_first() else {
            continue;
        };
        let (ctx, _, encoding) = &world.sessions[selector as usize % world.sessions.len()];
        let message = match encoding {
            Encoding::Json => match std::str::from_utf8(frame) {
                Ok(text) => Inbound::Text(text.as_bytes().to_vec().into()),
                Err(_) => continue,
            },
            Encoding::MsgPack => Inbound::Binary(frame.to_vec().into()),
        };
        let Ok(command) = decode_command(*encoding, &message) else {
            continue;
        };
        // The reader loop handles these two itself, not the registry.
        if command.action == "Connect" || command.action == "RefreshToken" {
            continue;
        }
        let outcome = world
            .runtime
            .block_on(ctx.invoke(&command.action, command.payload));
        let _ = match outcome {
            Ok(result) => encode_result(*encoding, command.id, &result),
            Err(error) => encode_error(*encoding, Some(command.id), &error.to_wire()),
        };
    }
    // Keep the outboxes from growing for ever (nobody writes them out).
    for (_, outbox, _) in &world.sessions {
        if outbox.len() > 512 {
            outbox.drain();
        }
    }
});
