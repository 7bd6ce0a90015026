//! Protocol v1 over real WebSockets: framing, sessions, engagements, the
//! web-chat actions and their pushes.

mod common;

use std::time::Duration;

use common::{Client, Enc, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TYPING: &str = "[typing]\nwindow_ms = 300\n";

#[tokio::test]
async fn connect_returns_identity_state_and_actions() {
    let server = TestServer::start("").await;
    let mut c = Client::open(&server, Enc::Json).await;
    let r = c.connect(json!({})).await.unwrap();
    assert!(r["sessionId"].as_str().unwrap().starts_with("SE"));
    assert!(r["identity"].as_str().unwrap().starts_with("anon-"));
    assert_eq!(r["role"], "customer");
    assert!(r["resumeToken"].is_string());
    assert_eq!(r["engagement"], Value::Null);
    assert_eq!(r["widget"], json!({"expanded": false}));
    assert_eq!(r["inputText"], json!({}));
    let actions: Vec<&str> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(actions.contains(&"StartEngagement") && actions.contains(&"SendMessage"));
    assert!(
        !actions.contains(&"JoinChannel"),
        "customers may not join: {actions:?}"
    );

    let mut agent = server.staff("alice", "agent").await;
    let r = agent.connect_result.clone();
    assert_eq!(r["identity"], "alice");
    assert_eq!(r["role"], "agent");
    assert!(r.get("resumeToken").is_none());
    let actions = r["actions"].to_string();
    assert!(actions.contains("JoinChannel") && !actions.contains("StartEngagement"));
    assert_eq!(
        agent.fails("Connect", json!({})).await,
        "bad_request",
        "second Connect"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn no_subprotocol_means_json_and_unknown_ones_are_refused() {
    let server = TestServer::start("").await;
    let mut c = Client::open(&server, Enc::None).await;
    c.connect(json!({})).await.unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-ws".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn commands_before_connect_and_malformed_frames() {
    let server = TestServer::start("").await;
    let mut c = Client::open(&server, Enc::Json).await;
    assert_eq!(c.fails("GetActions", json!({})).await, "not_connected");
    c.send_raw(Message::Text("{not json".into())).await;
    let reply = c.read_frame().await.unwrap();
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["error"]["code"], "bad_request");
    c.send_raw(Message::Text(r#"{"id": 41}"#.into())).await;
    let reply = c.read_frame().await.unwrap();
    assert_eq!(reply["id"], 41, "id is kept when readable");
    assert_eq!(reply["error"]["code"], "bad_request");
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(
        c.read_frame().await.unwrap()["error"]["code"],
        "bad_request"
    );
    // The connection carries on.
    c.connect(json!({})).await.unwrap();
    assert_eq!(c.fails("NoSuchAction", json!({})).await, "unknown_action");
    assert_eq!(
        c.fails("SendMessage", json!({"channelSid": "nope", "body": "x"}))
            .await,
        "bad_request"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn resume_token_reconnects_the_same_customer_with_its_state() {
    let server = TestServer::start("").await;
    let mut tab1 = server.customer().await;
    let resume = tab1.connect_result["resumeToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let sid = tab1.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    tab1.call(
        "SetInputText",
        json!({"channelSid": sid, "body": "half a thought"}),
    )
    .await
    .unwrap();
    tab1.call("ToggleChatVisibility", json!({})).await.unwrap();
    drop(tab1);

    let mut tab2 = Client::open(&server, Enc::MsgPack).await;
    let r = tab2.connect(json!({"resumeToken": resume})).await.unwrap();
    assert_eq!(r["engagement"]["channelSid"], sid);
    assert!(r["engagement"]["startedAt"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(r["widget"]["expanded"], true);
    assert_eq!(r["inputText"][sid.as_str().unwrap()], "half a thought");
    // Still a member: it can post into its engagement.
    let sent = tab2
        .call("SendMessage", json!({"channelSid": sid, "body": "back"}))
        .await
        .unwrap();
    assert_eq!(sent["index"], 0);
    let mut bad = Client::open(&server, Enc::Json).await;
    assert_eq!(
        bad.fails("Connect", json!({"resumeToken": "forged"})).await,
        "unauthorized"
    );
    assert_eq!(bad.close_code().await, 4001);
    server.shutdown().await;
}

#[tokio::test]
async fn a_whole_engagement_in_json_and_msgpack() {
    let server = TestServer::start(TYPING).await;
    let mut console = server.staff_enc("bob", "agent", Enc::MsgPack).await;
    let sub = console
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    assert_eq!(sub["channel"], "queue:default");
    assert_eq!(sub["engagements"], json!([]));

    let mut customer = server.customer().await;
    let me = customer.identity();
    let started = customer
        .call("StartEngagement", json!({"formData": {"name": "Ada"}}))
        .await
        .unwrap();
    let sid = started["channelSid"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("CH") && sid.len() == 34);
    let pushed = customer.push("engagementStarted").await;
    assert_eq!(pushed["channelSid"], sid);
    let queued = console.push("engagementStarted").await;
    assert_eq!(queued["channelSid"], sid);
    assert_eq!(queued["identity"], me.as_str());
    assert_eq!(queued["formData"], json!({"name": "Ada"}));
    assert_eq!(
        customer.fails("StartEngagement", json!({})).await,
        "already_engaged"
    );

    // A late console sees the open engagement in its Subscribe result.
    let mut late = server.staff("carol", "agent").await;
    let sub = late
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    assert_eq!(sub["engagements"][0]["channelSid"], sid);

    let joined = console
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(joined["lastIndex"], -1);
    assert_eq!(joined["members"].as_array().unwrap().len(), 2);
    let mj = customer.push("memberJoined").await;
    assert_eq!(
        mj,
        json!({"channelSid": sid, "identity": "bob", "role": "agent"})
    );

    // A JSON observer and the msgpack agent see the same stream.
    let mut observer = server.staff("obs", "service").await;
    observer
        .call("Subscribe", json!({"channel": sid}))
        .await
        .unwrap();

    let m0 = customer
        .call(
            "SendMessage",
            json!({"channelSid": sid, "body": "hello", "messageAttributes": {"k": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(m0["index"], 0);
    assert!(m0["dateCreated"].as_str().unwrap().ends_with('Z'));
    // Attributes sent in MessagePack reach JSON and MessagePack sessions
    // alike (kept as JSON text in between).
    let nested = json!({"f": 1.5, "n": {"a": [1, "x", null, true]}, "s": "é\"q"});
    let m1 = console
        .call(
            "SendMessage",
            json!({"channelSid": sid, "body": "hi Ada", "messageAttributes": nested}),
        )
        .await
        .unwrap();
    assert_eq!(m1["index"], 1);
    for client in [&mut customer, &mut console, &mut observer] {
        let a = client.push("messageAdded").await;
        let b = client.push("messageAdded").await;
        assert_eq!(a["index"], 0);
        assert_eq!(a["author"], me.as_str());
        assert_eq!(a["authorRole"], "customer");
        assert_eq!(a["body"], "hello");
        assert_eq!(a["attributes"], json!({"k": 1}));
        assert_eq!(a["dateCreated"], m0["dateCreated"]);
        assert_eq!(b["index"], 1);
        assert_eq!(b["author"], "bob");
        assert_eq!(b["attributes"], nested);
    }

    // Typing: to the others only; repeats inside the window are not re-sent;
    // the window's end ends it.
    customer
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    customer
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(
        console.push("typingStarted").await,
        json!({"channelSid": sid, "identity": me})
    );
    assert_eq!(
        observer.push("typingStarted").await["identity"],
        me.as_str()
    );
    assert_eq!(
        console.push("typingEnded").await,
        json!({"channelSid": sid, "identity": me})
    );
    console
        .no_push("typingStarted", Duration::from_millis(100))
        .await;
    customer
        .no_push("typingStarted", Duration::from_millis(50))
        .await;
    // The author's next message ends it at once.
    console
        .call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(customer.push("typingStarted").await["identity"], "bob");
    console
        .call("SendMessage", json!({"channelSid": sid, "body": "done"}))
        .await
        .unwrap();
    assert_eq!(customer.push("typingEnded").await["identity"], "bob");
    assert_eq!(customer.push("messageAdded").await["index"], 2);

    // The agent leaves; the customer hears it.
    console
        .call("LeaveChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    let left = customer.push("memberLeft").await;
    assert_eq!(
        left,
        json!({"channelSid": sid, "identity": "bob", "reason": "left"})
    );
    assert_eq!(
        console
            .fails("SendMessage", json!({"channelSid": sid, "body": "x"}))
            .await,
        "not_a_member"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn restart_returns_the_customer_to_the_form() {
    let server = TestServer::start(TYPING).await;
    let mut queue = server.staff("q", "agent").await;
    queue
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    let mut tab1 = server.customer().await;
    let resume = tab1.connect_result["resumeToken"].clone();
    let mut tab2 = Client::open(&server, Enc::Json).await;
    tab2.connect(json!({"resumeToken": resume})).await.unwrap();
    let me = tab1.identity();

    assert_eq!(
        tab1.fails("RestartEngagement", json!({})).await,
        "no_engagement"
    );
    let sid = tab1.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    assert_eq!(tab2.push("engagementStarted").await["channelSid"], sid);
    let mut agent = server.staff("bob", "agent").await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    tab1.call("SetInputText", json!({"channelSid": sid, "body": "draft"}))
        .await
        .unwrap();
    assert_eq!(
        tab2.push("inputTextSet").await,
        json!({"channelSid": sid, "body": "draft"})
    );
    tab1.call("SendTyping", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(agent.push("typingStarted").await["identity"], me.as_str());

    let r = tab2.call("RestartEngagement", json!({})).await.unwrap();
    assert_eq!(r["channelSid"], sid);
    assert_eq!(agent.push("typingEnded").await["identity"], me.as_str());
    assert_eq!(
        agent.push("memberLeft").await,
        json!({"channelSid": sid, "identity": me, "reason": "restart"})
    );
    agent
        .no_push("memberLeft", Duration::from_millis(100))
        .await;
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(
            tab.push("engagementRestarted").await,
            json!({"channelSid": sid})
        );
        tab.no_push("memberLeft", Duration::from_millis(20)).await;
    }
    assert_eq!(queue.push("engagementStarted").await["channelSid"], sid);
    assert_eq!(
        queue.push("engagementEnded").await,
        json!({"channelSid": sid, "reason": "restart"})
    );
    assert_eq!(
        tab1.fails("SendMessage", json!({"channelSid": sid, "body": "late"}))
            .await,
        "not_a_member"
    );
    // Back at the form: a fresh Connect shows no engagement and no draft;
    // a new engagement can start.
    let mut tab3 = Client::open(&server, Enc::Json).await;
    let state = tab3.connect(json!({"resumeToken": resume})).await.unwrap();
    assert_eq!(state["engagement"], Value::Null);
    assert_eq!(state["inputText"], json!({}));
    let again = tab1.call("StartEngagement", json!({})).await.unwrap();
    assert_ne!(again["channelSid"], sid);
    server.shutdown().await;
}

#[tokio::test]
async fn widget_state_syncs_across_tabs() {
    let server = TestServer::start("").await;
    let mut tab1 = server.customer().await;
    let mut tab2 = Client::open(&server, Enc::MsgPack).await;
    tab2.connect(json!({"resumeToken": tab1.connect_result["resumeToken"]}))
        .await
        .unwrap();

    assert_eq!(
        tab1.call("ToggleChatVisibility", json!({})).await.unwrap(),
        json!({"expanded": true})
    );
    assert_eq!(
        tab2.push("widgetStateChanged").await,
        json!({"expanded": true})
    );
    tab1.no_push("widgetStateChanged", Duration::from_millis(50))
        .await;
    assert_eq!(
        tab2.call("MinimizeChat", json!({})).await.unwrap(),
        json!({"expanded": false})
    );
    assert_eq!(
        tab1.push("widgetStateChanged").await,
        json!({"expanded": false})
    );
    // Minimizing a minimized widget changes nothing and pushes nothing.
    tab2.call("MinimizeChat", json!({})).await.unwrap();
    tab1.no_push("widgetStateChanged", Duration::from_millis(100))
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn role_rules() {
    let server = TestServer::start("").await;
    let mut c1 = server.customer().await;
    let mut c2 = server.customer().await;
    let sid1 = c1.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    // Customers only ever touch their own engagement.
    assert_eq!(
        c2.fails("SendMessage", json!({"channelSid": sid1, "body": "x"}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        c2.fails("SendTyping", json!({"channelSid": sid1})).await,
        "not_a_member"
    );
    assert_eq!(
        c2.fails("SetInputText", json!({"channelSid": sid1, "body": "x"}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        c2.fails("LeaveChannel", json!({"channelSid": sid1})).await,
        "not_a_member"
    );
    let unknown = format!("CH{}", "0".repeat(32));
    assert_eq!(
        c2.fails("SendMessage", json!({"channelSid": unknown, "body": "x"}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        c2.fails("JoinChannel", json!({"channelSid": sid1})).await,
        "forbidden"
    );
    assert_eq!(
        c2.fails("Subscribe", json!({"channel": "queue:default"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        c2.fails("Subscribe", json!({"channel": sid1})).await,
        "forbidden"
    );

    let mut agent = server.staff("bob", "agent").await;
    assert_eq!(agent.fails("StartEngagement", json!({})).await, "forbidden");
    assert_eq!(
        agent.fails("ToggleChatVisibility", json!({})).await,
        "forbidden"
    );
    assert_eq!(
        agent
            .fails("JoinChannel", json!({"channelSid": unknown}))
            .await,
        "not_found"
    );
    assert_eq!(
        agent
            .fails("SendMessage", json!({"channelSid": unknown, "body": "x"}))
            .await,
        "not_found"
    );
    assert_eq!(
        agent
            .fails("SendMessage", json!({"channelSid": sid1, "body": "x"}))
            .await,
        "not_a_member"
    );
    // Observing is not membership.
    agent
        .call("Subscribe", json!({"channel": sid1}))
        .await
        .unwrap();
    assert_eq!(
        agent
            .fails("SendMessage", json!({"channelSid": sid1, "body": "x"}))
            .await,
        "not_a_member"
    );
    agent
        .call("Unsubscribe", json!({"channel": sid1}))
        .await
        .unwrap();
    c1.call(
        "SendMessage",
        json!({"channelSid": sid1, "body": "after unsubscribe"}),
    )
    .await
    .unwrap();
    agent
        .no_push("messageAdded", Duration::from_millis(100))
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn payload_validation_and_sizes() {
    let server = TestServer::start("[limits]\nmax_body_bytes = 100\n").await;
    let mut c = server.customer().await;
    let sid = c.call("StartEngagement", json!({})).await.unwrap()["channelSid"].clone();
    let send = |body: Value| json!({"channelSid": sid, "body": body});
    assert_eq!(c.fails("SendMessage", send(json!(""))).await, "bad_request");
    assert_eq!(c.fails("SendMessage", send(json!(5))).await, "bad_request");
    assert_eq!(
        c.fails("SendMessage", json!({"channelSid": sid})).await,
        "bad_request"
    );
    assert_eq!(
        c.fails("SendMessage", send(json!("x".repeat(101)))).await,
        "too_large"
    );
    let err = c
        .call("SendMessage", send(json!("x".repeat(101))))
        .await
        .unwrap_err();
    assert!(err["message"].as_str().unwrap().contains("101"), "{err}");
    c.call("SendMessage", send(json!("x".repeat(100))))
        .await
        .unwrap();
    assert_eq!(
        c.fails(
            "SendMessage",
            json!({"channelSid": sid, "body": "x", "messageAttributes": [1]})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        c.fails(
            "SetInputText",
            json!({"channelSid": sid, "body": "x".repeat(101)})
        )
        .await,
        "too_large"
    );
    assert_eq!(
        c.fails("StartEngagement", json!({"formData": "nope"}))
            .await,
        "bad_request"
    );
    // A wrong-typed payload is refused with the id kept.
    c.send_raw(Message::Text(
        r#"{"id": 9, "action": "SendMessage", "payload": "x"}"#.into(),
    ))
    .await;
    let reply = c.read_frame().await.unwrap();
    assert_eq!(
        (reply["id"].clone(), reply["error"]["code"].clone()),
        (json!(9), json!("bad_request"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn plain_http_routes() {
    // The test broker has a JWT secret, so demo tokens are off unless asked for.
    let server = TestServer::start("demo_tokens = true").await;
    let get = |path: &str| {
        let addr = server.addr;
        let path = path.to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/metrics").await.contains("switchboard_sessions_open"));
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    assert!(get("/ws").await.starts_with("HTTP/1.1 426"));
    let token = get("/demo/token?sub=ada&role=agent").await;
    assert!(token.starts_with("HTTP/1.1 200"), "{token}");
    let body: Value = serde_json::from_str(token.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let mut agent = Client::open(&server, Enc::Json).await;
    let r = agent
        .connect(json!({"token": body["token"]}))
        .await
        .unwrap();
    assert_eq!(
        (r["identity"].clone(), r["role"].clone()),
        (json!("ada"), json!("agent"))
    );
    server.shutdown().await;

    let server = TestServer::start("demo_tokens = false").await;
    let addr = server.addr;
    let out = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /demo/token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    server.shutdown().await;
}

/// The widget's extensions: a new tab learns who is in the chat and how far
/// it has gone from `Connect`; queue consoles hear when an engagement is
/// picked up; an agent ends a chat for everyone.
#[tokio::test]
async fn connect_members_queue_updates_and_end_engagement() {
    let server = TestServer::start("").await;
    let mut console = server.staff("watcher", "agent").await;
    console
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    let mut customer = server.customer().await;
    let resume = customer.connect_result["resumeToken"].clone();
    let sid = customer.start_engagement().await;
    let started = console.push("engagementStarted").await;
    assert_eq!(started["channelSid"], sid);

    let mut agent = server.staff("alice", "agent").await;
    agent
        .call("JoinChannel", json!({"channelSid": sid}))
        .await
        .unwrap();
    let updated = console.push("engagementUpdated").await;
    assert_eq!(updated["channelSid"], sid);
    assert_eq!(
        updated["members"],
        json!([
            {"identity": "alice", "role": "agent"},
            {"identity": customer.identity(), "role": "customer"},
        ])
    );
    let queued = console
        .call("Subscribe", json!({"channel": "queue:default"}))
        .await
        .unwrap();
    assert_eq!(queued["engagements"][0]["members"], updated["members"]);
    agent
        .call("SendMessage", json!({"channelSid": sid, "body": "hello"}))
        .await
        .unwrap();
    customer.push("messageAdded").await;

    // A second tab of the customer: members and lastIndex in `engagement`.
    let mut tab = Client::open(&server, Enc::Json).await;
    let r = tab.connect(json!({ "resumeToken": resume })).await.unwrap();
    assert_eq!(r["engagement"]["channelSid"], sid);
    assert_eq!(r["engagement"]["lastIndex"], 0);
    assert_eq!(r["engagement"]["members"], updated["members"]);

    // Customers cannot end; an agent not in the chat cannot; a member can.
    assert_eq!(
        customer
            .fails("EndEngagement", json!({"channelSid": sid}))
            .await,
        "forbidden"
    );
    let mut other = server.staff("bob", "agent").await;
    assert_eq!(
        other
            .fails("EndEngagement", json!({"channelSid": sid}))
            .await,
        "not_a_member"
    );
    agent
        .call(
            "EndEngagement",
            json!({"channelSid": sid, "reason": "resolved"}),
        )
        .await
        .unwrap();
    for c in [&mut customer, &mut tab] {
        let left = c.push("engagementEnded").await;
        assert_eq!(left, json!({"channelSid": sid, "reason": "resolved"}));
    }
    assert_eq!(
        agent.push("engagementEnded").await,
        json!({"channelSid": sid, "reason": "resolved"})
    );
    let ended = console.push("engagementEnded").await;
    assert_eq!(ended["reason"], "resolved");
    // The customer is back in pre-engagement; the channel takes nothing.
    assert_eq!(
        customer
            .fails("SendMessage", json!({"channelSid": sid, "body": "x"}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        agent
            .fails("SendMessage", json!({"channelSid": sid, "body": "x"}))
            .await,
        "not_found"
    );
    assert_eq!(
        agent
            .fails("EndEngagement", json!({"channelSid": sid}))
            .await,
        "not_a_member"
    );
    let mut service = server.staff("crm", "service").await;
    assert_eq!(
        service
            .fails("EndEngagement", json!({"channelSid": sid}))
            .await,
        "not_found"
    );
    let again = customer.start_engagement().await;
    assert_ne!(again, sid);
    let page = agent
        .call("GetMessages", json!({"channelSid": sid}))
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["body"], "hello", "transcript kept");
    assert_eq!(
        page["messages"][0]["attributes"],
        json!({}),
        "no attributes given: an empty map"
    );
    server.shutdown().await;
}
