//! The server-side Actions Framework, from configuration and from Rust.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};
use switchboard::{ActionError, ActionRegistry, CustomAction, Roles};

const CONFIG: &str = r#"
[[actions.custom]]
name = "contact-sales"
action = "StartEngagement"
payload = { formData = { department = "sales" } }
description = "Start a chat with sales"

[[actions.after]]
on = "StartEngagement"
invoke = "SendMessage"
as = "greeter"
payload = { body = "Thanks for reaching out! An agent will be with you shortly." }

[[actions.before]]
on = "SendTyping"
reject = "typing indicators are off"
"#;

#[tokio::test]
async fn configured_custom_action_after_greeter_and_before_reject() {
    let server = TestServer::start(CONFIG).await;
    let mut queue = server.staff("q", "agent").await;
    queue
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    let mut c = server.customer().await;
    assert!(c.connect_result["actions"]
        .to_string()
        .contains("contact-sales"));

    let list = c.call("GetActions", json!({})).await.unwrap();
    let actions = list["actions"].as_array().unwrap();
    let custom = actions
        .iter()
        .find(|a| a["name"] == "contact-sales")
        .unwrap();
    assert_eq!(custom["kind"], "custom");
    assert_eq!(custom["description"], "Start a chat with sales");
    assert_eq!(
        custom["payload"],
        json!({"formData": {"department": "sales"}})
    );
    let builtin = actions.iter().find(|a| a["name"] == "SendMessage").unwrap();
    assert_eq!(builtin["kind"], "builtin");
    assert!(builtin.get("payload").is_none());
    for name in [
        "Connect",
        "GetActions",
        "TriggerAction",
        "StartEngagement",
        "RestartEngagement",
        "ToggleChatVisibility",
        "MinimizeChat",
        "SendMessage",
        "SetInputText",
        "SendTyping",
        "JoinChannel",
        "LeaveChannel",
        "Subscribe",
        "Unsubscribe",
    ] {
        assert!(
            actions.iter().any(|a| a["name"] == name),
            "GetActions lists {name}"
        );
    }

    // TriggerAction merges the given payload over the preset.
    let r = c
        .call(
            "TriggerAction",
            json!({"name": "contact-sales", "payload": {"formData": {"name": "Ada"}}}),
        )
        .await
        .unwrap();
    let sid = r["channelSid"].as_str().unwrap().to_owned();
    let started = queue.push("engagementStarted").await;
    assert_eq!(
        started["formData"],
        json!({"department": "sales", "name": "Ada"})
    );
    // The after listener greets as service identity "greeter".
    let greeting = c.push("messageAdded").await;
    assert_eq!(greeting["channelSid"], sid.as_str());
    assert_eq!(greeting["author"], "greeter");
    assert_eq!(greeting["authorRole"], "service");
    assert_eq!(greeting["index"], 0);
    assert!(greeting["body"]
        .as_str()
        .unwrap()
        .starts_with("Thanks for reaching out"));

    // The before listener rejects.
    let err = c
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap_err();
    assert_eq!(err["code"], "rejected");
    assert_eq!(err["message"], "typing indicators are off");

    // A custom action by its own name works too; unknown names do not.
    let mut c2 = server.customer().await;
    c2.call("contact-sales", json!({})).await.unwrap();
    assert_eq!(
        c2.fails("TriggerAction", json!({"name": "nope"})).await,
        "unknown_action"
    );
    assert_eq!(
        c2.fails("TriggerAction", json!({"name": "SendMessage"}))
            .await,
        "unknown_action"
    );
    // An agent may not run a customer-only preset.
    let mut agent = server.staff("bob", "agent").await;
    assert_eq!(
        agent
            .fails("TriggerAction", json!({"name": "contact-sales"}))
            .await,
        "forbidden"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_action_config_is_refused() {
    for toml in [
        "[[actions.custom]]\nname = \"x\"\naction = \"NoSuch\"\n",
        "[[actions.custom]]\nname = \"SendMessage\"\naction = \"StartEngagement\"\n",
        "[[actions.after]]\non = \"NoSuch\"\ninvoke = \"SendMessage\"\n",
        "[[actions.after]]\non = \"StartEngagement\"\ninvoke = \"Connect\"\n",
        "[[actions.before]]\non = \"Nope\"\nreject = \"x\"\n",
    ] {
        let config = switchboard::Config::from_toml(toml).unwrap();
        let err = switchboard::Broker::new(config, ActionRegistry::new()).err();
        assert!(err.is_some(), "accepted: {toml}");
    }
}

#[tokio::test]
async fn rust_listeners_replacements_and_custom_actions() {
    let mut actions = ActionRegistry::new();
    // before: rewrite the payload, or reject.
    actions
        .before("SendMessage", |_ctx, mut payload| async move {
            let body = payload["body"].as_str().unwrap_or_default().to_owned();
            if body.contains("forbidden word") {
                return Err(ActionError::Rejected("mind your language".into()));
            }
            payload["body"] = json!(body.replace("darn", "d**n"));
            Ok(payload)
        })
        .unwrap();
    // after: sees payload and result.
    let seen: Arc<Mutex<Vec<(Value, Value)>>> = Arc::default();
    let seen_in = seen.clone();
    actions
        .after("SendMessage", move |_ctx, payload, result| {
            let seen = seen_in.clone();
            async move { seen.lock().unwrap().push((payload, result)) }
        })
        .unwrap();
    // replace: MinimizeChat also counts, then runs the original.
    let minimized = Arc::new(AtomicUsize::new(0));
    let counter = minimized.clone();
    actions
        .replace("MinimizeChat", move |ctx, payload| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let original = ActionRegistry::builtin("MinimizeChat").unwrap();
                let mut result = original.call(&ctx, payload).await?;
                result["replaced"] = json!(true);
                Ok(result)
            }
        })
        .unwrap();
    // A custom action for agents that runs other actions as the caller.
    actions
        .register(
            CustomAction::new("escalate")
                .description("Post an escalation note into a channel")
                .roles(Roles::STAFF),
            |ctx, payload| async move {
                let sid = payload["channelSid"].clone();
                ctx.invoke(
                    "SendMessage",
                    json!({"channelSid": sid, "body": "escalated to tier 2"}),
                )
                .await?;
                Ok(json!({"escalated": true}))
            },
        )
        .unwrap();

    let server = TestServer::start_with("", actions).await;
    let mut c = server.customer().await;
    let sid = c.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    let sent = c
        .call("SendMessage", json!({"channelSid": sid, "body": "darn it"}))
        .await
        .unwrap();
    assert_eq!(c.push("messageAdded").await["body"], "d**n it");
    assert_eq!(
        c.fails(
            "SendMessage",
            json!({"channelSid": sid, "body": "a forbidden word"})
        )
        .await,
        "rejected"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            1,
            "after runs only for the action that succeeded"
        );
        assert_eq!(
            seen[0].0["body"], "d**n it",
            "after sees the payload as changed"
        );
        assert_eq!(seen[0].1, sent);
    }

    let r = c.call("MinimizeChat", json!({})).await.unwrap();
    assert_eq!(r, json!({"expanded": false, "replaced": true}));
    assert_eq!(minimized.load(Ordering::SeqCst), 1);

    let mut agent = server.staff("bob", "agent").await;
    let list = agent.call("GetActions", json!({})).await.unwrap();
    let escalate = list["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "escalate")
        .unwrap()
        .clone();
    assert_eq!(escalate["kind"], "custom");
    assert_eq!(escalate["allowed"], true);
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(
        agent
            .call("escalate", json!({"channelSid": sid}))
            .await
            .unwrap(),
        json!({"escalated": true})
    );
    let note = c.push("messageAdded").await;
    assert_eq!(
        (note["author"].clone(), note["body"].clone()),
        (json!("bob"), json!("escalated to tier 2"))
    );
    assert_eq!(
        agent
            .call(
                "TriggerAction",
                json!({"name": "escalate", "payload": {"channelSid": sid}})
            )
            .await
            .unwrap()["escalated"],
        true
    );
    assert_eq!(
        c.fails("escalate", json!({"channelSid": sid})).await,
        "forbidden"
    );
    c.no_push("widgetStateChanged", Duration::from_millis(10))
        .await;
    server.shutdown().await;
}
