//! The server HTTP API (`/api/v1/`) over real HTTP, its effects checked on
//! real WebSocket sessions.

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard::ActionRegistry;

pub const KEY: &str = "test-api-key-0123456789";
const API: &str = "[api]\nkeys = [\"test-api-key-0123456789\"]\n";

/// A client of the server API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("http://{}", server.addr),
            key: Some(KEY.into()),
        }
    }

    fn with_key(mut self, key: Option<&str>) -> Api {
        self.key = key.map(str::to_owned);
        self
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{path}"
        );
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).expect("a JSON body"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Runs an action as a service identity; its `result` or panics.
    async fn act(&self, identity: &str, action: &str, payload: Value) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/v1/actions/{action}"),
                json!({ "identity": identity, "payload": payload }),
            )
            .await;
        assert_eq!(status, 200, "{action}: {body}");
        body["result"].clone()
    }
}

/// The error code of a failed answer, checked against its status.
fn code(answer: &(u16, Value), status: u16) -> String {
    assert_eq!(answer.0, status, "{}", answer.1);
    let error = &answer.1["error"];
    assert!(error["message"].is_string(), "{error}");
    error["code"].as_str().expect("an error code").to_owned()
}

#[tokio::test]
async fn without_keys_the_api_is_off() {
    let server = TestServer::start("").await;
    let api = Api::new(&server);
    for path in [
        "/api/v1/identities/x",
        "/api/v1/queues/default",
        "/api/nothing",
    ] {
        assert_eq!(code(&api.get(path).await, 404), "not_found");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    let server = TestServer::start(API).await;
    let anonymous = Api::new(&server).with_key(None);
    assert_eq!(
        code(&anonymous.get("/api/v1/queues/default").await, 401),
        "unauthorized"
    );
    let wrong = Api::new(&server).with_key(Some("test-api-key-0123456780"));
    assert_eq!(
        code(&wrong.get("/api/v1/queues/default").await, 401),
        "unauthorized"
    );
    assert_eq!(
        code(
            &wrong.post("/api/v1/actions/SendMessage", json!({})).await,
            401
        ),
        "unauthorized"
    );
    // `X-API-Key` is accepted too.
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/v1/queues/default", server.addr))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let right = Api::new(&server);
    assert_eq!(right.get("/api/v1/queues/default").await.0, 200);
    // Unknown paths under the API, with a key.
    assert_eq!(code(&right.get("/api/v1/nothing").await, 404), "not_found");
    assert_eq!(
        code(&right.delete("/api/v1/queues/default").await, 404),
        "not_found"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_action_through_the_api_runs_the_whole_framework_and_reaches_sessions() {
    // A `before` listener proves the API's action went through the
    // framework, not around it.
    let mut actions = ActionRegistry::new();
    actions
        .before("SendMessage", |_ctx, mut payload| async move {
            let body = payload["body"].as_str().unwrap_or_default().to_owned();
            payload["body"] = json!(format!("{body} (checked)"));
            Ok(payload)
        })
        .unwrap();
    let server = TestServer::start_with(API, actions).await;
    let api = Api::new(&server);
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut second_tab = Client::open(&server, Enc::Json).await;
    second_tab
        .connect(json!({ "resumeToken": customer.connect_result["resumeToken"] }))
        .await
        .expect("a second tab of the customer");

    let joined = api
        .act("crm-bot", "JoinChannel", json!({ "channelSid": sid }))
        .await;
    assert!(joined["members"].is_array(), "{joined}");
    let joined = customer.push("memberJoined").await;
    assert_eq!(
        joined,
        json!({ "channelSid": sid, "identity": "crm-bot", "role": "service" })
    );

    let posted = api
        .act(
            "crm-bot",
            "SendMessage",
            json!({ "channelSid": sid, "body": "your order shipped" }),
        )
        .await;
    assert_eq!(posted["index"], 0, "{posted}");
    let message = customer.push("messageAdded").await;
    assert_eq!(message["author"], "crm-bot");
    assert_eq!(message["authorRole"], "service");
    assert_eq!(message["body"], "your order shipped (checked)");

    // As the customer itself (role customer): the push reaches every
    // session of the identity.
    let me = customer.identity();
    let (status, body) = api
        .post(
            "/api/v1/actions/ToggleChatVisibility",
            json!({ "identity": me, "role": "customer" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for tab in [&mut customer, &mut second_tab] {
        let changed = tab.push("widgetStateChanged").await;
        assert_eq!(changed["expanded"], true);
    }
    // Counted like a session's commands.
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_commands_total{action=\"SendMessage\",code=\"ok\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn action_errors_carry_the_contract_codes_and_statuses() {
    let server = TestServer::start(API).await;
    let api = Api::new(&server);
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let me = customer.identity();

    let unknown = api
        .post("/api/v1/actions/Nope", json!({ "identity": "bot" }))
        .await;
    assert_eq!(code(&unknown, 404), "unknown_action");
    let no_identity = api
        .post("/api/v1/actions/SendMessage", json!({ "payload": {} }))
        .await;
    assert_eq!(code(&no_identity, 400), "bad_request");
    let bad_role = api
        .post(
            "/api/v1/actions/SendMessage",
            json!({ "identity": "bot", "role": "admin" }),
        )
        .await;
    assert_eq!(code(&bad_role, 400), "bad_request");
    let bad_payload = api
        .post(
            "/api/v1/actions/SendMessage",
            json!({ "identity": "bot", "payload": [1] }),
        )
        .await;
    assert_eq!(code(&bad_payload, 400), "bad_request");
    let bad_body = api
        .send(
            reqwest::Method::POST,
            "/api/v1/actions/SendMessage",
            Some(json!("not an object")),
        )
        .await;
    assert_eq!(code(&bad_body, 400), "bad_request");
    // Invalid payload for the action: the action's own checks.
    let missing_sid = api
        .post(
            "/api/v1/actions/SendMessage",
            json!({ "identity": "bot", "payload": { "body": "x" } }),
        )
        .await;
    assert_eq!(code(&missing_sid, 400), "bad_request");
    let not_member = api
        .post(
            "/api/v1/actions/SendMessage",
            json!({ "identity": "bot", "payload": { "channelSid": sid, "body": "x" } }),
        )
        .await;
    assert_eq!(code(&not_member, 409), "not_a_member");
    let engaged = api
        .post(
            "/api/v1/actions/StartEngagement",
            json!({ "identity": me, "role": "customer" }),
        )
        .await;
    assert_eq!(code(&engaged, 409), "already_engaged");
    assert_eq!(engaged.1["error"]["channelSid"], sid);
    // A customer identity cannot be used as a service.
    let wrong_role = api
        .post("/api/v1/actions/GetActions", json!({ "identity": me }))
        .await;
    assert_eq!(code(&wrong_role, 403), "forbidden");
    // A service may not run a customer-only action.
    let forbidden = api
        .post(
            "/api/v1/actions/StartEngagement",
            json!({ "identity": "bot" }),
        )
        .await;
    assert_eq!(code(&forbidden, 403), "forbidden");
    // Over 1 MiB: 413 too_large.
    let huge = "x".repeat(1024 * 1024 + 1);
    let too_large = api
        .post(
            "/api/v1/actions/SendMessage",
            json!({ "identity": "bot", "payload": { "body": huge } }),
        )
        .await;
    assert_eq!(code(&too_large, 413), "too_large");
    server.shutdown().await;
}

#[tokio::test]
async fn channels_queues_and_identities_are_readable() {
    let server = TestServer::start(API).await;
    let api = Api::new(&server);
    let mut customer = server.customer().await;
    let started = customer
        .call("StartEngagement", json!({ "formData": { "name": "Ada" } }))
        .await
        .unwrap();
    let sid = started["channelSid"].as_str().unwrap().to_owned();
    let me = customer.identity();

    let (status, channel) = api.get(&format!("/api/v1/channels/{sid}")).await;
    assert_eq!(status, 200, "{channel}");
    assert_eq!(channel["channelSid"], sid);
    assert_eq!(channel["status"], "open");
    assert_eq!(channel["queue"], "queue:default");
    assert_eq!(channel["endedAt"], Value::Null);
    assert_eq!(channel["lastIndex"], -1);
    assert_eq!(channel["formData"], json!({ "name": "Ada" }));
    assert_eq!(
        channel["members"],
        json!([{ "identity": me, "role": "customer" }])
    );
    assert!(channel["startedAt"].as_str().unwrap().ends_with('Z'));

    send_messages(&mut customer, &sid, 3).await;
    let (_, channel) = api.get(&format!("/api/v1/channels/{sid}")).await;
    assert_eq!(channel["lastIndex"], 2);
    let (status, page) = api
        .get(&format!("/api/v1/channels/{sid}/messages?limit=2"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["hasMore"], true);
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m1", "m2"]);
    let (_, page) = api
        .get(&format!("/api/v1/channels/{sid}/messages?before=1"))
        .await;
    assert_eq!(page["messages"][0]["body"], "m0");
    assert_eq!(page["hasMore"], false);
    let bad_limit = api
        .get(&format!("/api/v1/channels/{sid}/messages?limit=0"))
        .await;
    assert_eq!(code(&bad_limit, 400), "bad_request");
    let bad_before = api
        .get(&format!("/api/v1/channels/{sid}/messages?before=-1"))
        .await;
    assert_eq!(code(&bad_before, 400), "bad_request");

    let unknown = format!("CH{}", "0".repeat(32));
    assert_eq!(
        code(&api.get(&format!("/api/v1/channels/{unknown}")).await, 404),
        "not_found"
    );
    assert_eq!(
        code(&api.get("/api/v1/channels/not-a-sid").await, 404),
        "not_found"
    );
    assert_eq!(
        code(
            &api.get(&format!("/api/v1/channels/{unknown}/messages"))
                .await,
            404
        ),
        "not_found"
    );

    let (status, queue) = api.get("/api/v1/queues/default").await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["queue"], "queue:default");
    let listed = &queue["engagements"][0];
    assert_eq!(listed["channelSid"], sid);
    assert_eq!(listed["identity"], me);
    assert_eq!(listed["formData"], json!({ "name": "Ada" }));
    assert!(listed["members"].is_array());
    let (_, empty) = api.get("/api/v1/queues/sales").await;
    assert_eq!(empty["engagements"], json!([]));
    assert_eq!(
        code(&api.get("/api/v1/queues/no%20spaces").await, 404),
        "not_found"
    );

    let (status, identity) = api.get(&format!("/api/v1/identities/{me}")).await;
    assert_eq!(status, 200, "{identity}");
    assert_eq!(identity["identity"], me);
    assert_eq!(identity["role"], "customer");
    assert_eq!(identity["sessions"], 1);
    assert_eq!(identity["engagement"]["channelSid"], sid);
    assert_eq!(identity["engagement"]["startedAt"], channel["startedAt"]);
    assert_eq!(identity["widget"], json!({ "expanded": false }));
    assert_eq!(
        code(&api.get("/api/v1/identities/nobody").await, 404),
        "not_found"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn ending_an_engagement_tells_everyone_and_keeps_the_history() {
    let server = TestServer::start(API).await;
    let api = Api::new(&server);
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    customer
        .call(
            "SetInputText",
            json!({ "channelSid": sid, "body": "half-typed" }),
        )
        .await
        .unwrap();
    customer
        .call("SendMessage", json!({ "channelSid": sid, "body": "hello" }))
        .await
        .unwrap();
    let mut agent = server.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    let mut console = server.staff("watcher", "agent").await;
    console
        .call("Subscribe", json!({ "channel": "queue:default" }))
        .await
        .unwrap();
    console
        .call("Subscribe", json!({ "channel": sid }))
        .await
        .unwrap();

    let (status, body) = api
        .post(
            &format!("/api/v1/channels/{sid}/end"),
            json!({ "reason": "resolved" }),
        )
        .await;
    assert_eq!((status, body), (200, json!({})));
    for client in [&mut customer, &mut agent] {
        let ended = client.push("engagementEnded").await;
        assert_eq!(ended, json!({ "channelSid": sid, "reason": "resolved" }));
    }
    // A subscriber sees every member leave.
    let mut left = Vec::new();
    for _ in 0..2 {
        let data = console.push("memberLeft").await;
        assert_eq!(data["reason"], "ended");
        left.push(data["identity"].as_str().unwrap().to_owned());
    }
    left.sort();
    let mut members = vec!["ann".to_owned(), customer.identity()];
    members.sort();
    assert_eq!(left, members);
    let ended = console.push("engagementEnded").await;
    assert_eq!(ended, json!({ "channelSid": sid, "reason": "resolved" }));

    let (_, channel) = api.get(&format!("/api/v1/channels/{sid}")).await;
    assert_eq!(channel["status"], "ended");
    assert!(
        channel["endedAt"].as_str().unwrap().ends_with('Z'),
        "{channel}"
    );
    assert_eq!(channel["members"], json!([]));
    assert_eq!(channel["lastIndex"], 0);
    let (_, page) = api.get(&format!("/api/v1/channels/{sid}/messages")).await;
    assert_eq!(page["messages"][0]["body"], "hello");
    // Already ended.
    let again = api
        .post(&format!("/api/v1/channels/{sid}/end"), json!({}))
        .await;
    assert_eq!(code(&again, 404), "not_found");
    let bad_reason = api
        .post(
            &format!("/api/v1/channels/{sid}/end"),
            json!({ "reason": 5 }),
        )
        .await;
    assert_eq!(code(&bad_reason, 400), "bad_request");

    // Back in pre-engagement, drafts gone.
    let (_, identity) = api
        .get(&format!("/api/v1/identities/{}", customer.identity()))
        .await;
    assert_eq!(identity["engagement"], Value::Null);
    let mut tab = Client::open(&server, Enc::Json).await;
    let connected = tab
        .connect(json!({ "resumeToken": customer.connect_result["resumeToken"] }))
        .await
        .unwrap();
    assert_eq!(connected["engagement"], Value::Null, "{connected}");
    assert_eq!(connected["inputText"], json!({}), "{connected}");
    let again = customer.start_engagement().await;
    assert_ne!(again, sid);
    server.shutdown().await;
}

#[tokio::test]
async fn removing_a_member_tells_the_channel() {
    let server = TestServer::start(API).await;
    let api = Api::new(&server);
    let mut customer = server.customer().await;
    let sid = customer.start_engagement().await;
    let mut agent = server.staff("ann", "agent").await;
    agent
        .call("JoinChannel", json!({ "channelSid": sid }))
        .await
        .unwrap();
    customer.push("memberJoined").await;

    let (status, body) = api
        .delete(&format!("/api/v1/channels/{sid}/members/ann"))
        .await;
    assert_eq!((status, body), (200, json!({})));
    let expected = json!({ "channelSid": sid, "identity": "ann", "reason": "removed" });
    assert_eq!(customer.push("memberLeft").await, expected);
    // The removed identity's sessions are told too (an extension: they did
    // not ask to leave).
    assert_eq!(agent.push("memberLeft").await, expected);
    // Gone: its messages are refused, and removing it again is 409.
    assert_eq!(
        agent
            .fails("SendMessage", json!({ "channelSid": sid, "body": "x" }))
            .await,
        "not_a_member"
    );
    let again = api
        .delete(&format!("/api/v1/channels/{sid}/members/ann"))
        .await;
    assert_eq!(code(&again, 409), "not_a_member");
    let nobody = api
        .delete(&format!("/api/v1/channels/{sid}/members/nobody"))
        .await;
    assert_eq!(code(&nobody, 409), "not_a_member");
    let (_, channel) = api.get(&format!("/api/v1/channels/{sid}")).await;
    assert_eq!(channel["members"].as_array().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn kicking_an_identity_closes_every_session_with_4003() {
    let server = TestServer::start(API).await;
    let api = Api::new(&server);
    let mut first = server.staff("ann", "agent").await;
    let mut second = server.staff("ann", "agent").await;
    let mut other = server.staff("bob", "agent").await;
    let (_, identity) = api.get("/api/v1/identities/ann").await;
    assert_eq!(identity["sessions"], 2);

    let (status, body) = api.delete("/api/v1/identities/ann/sessions").await;
    assert_eq!((status, body), (200, json!({ "closed": 2 })));
    assert_eq!(first.close_code().await, 4003);
    assert_eq!(second.close_code().await, 4003);
    // Others stay.
    assert!(other.call("GetActions", json!({})).await.is_ok());
    eventually("ann's sessions are gone", || {
        server.broker.session_count() == 1
    })
    .await;
    let (_, identity) = api.get("/api/v1/identities/ann").await;
    assert_eq!(identity["sessions"], 0);
    let (_, body) = api.delete("/api/v1/identities/nobody/sessions").await;
    assert_eq!(body, json!({ "closed": 0 }));
    server.shutdown().await;
}

/// `docs/openapi.yaml`, as JSON.
fn openapi() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    serde_yaml::from_str(&text).expect("docs/openapi.yaml is YAML")
}

/// The OpenAPI path template a request path matches, if any.
fn template_of<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
        })
}

/// Follows a `$ref` inside the document.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved {pointer}")),
        None => value,
    }
}

/// Checks one real answer against the description: the path and method
/// are described, the status is listed, and the body fits its schema.
fn check_against_openapi(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    body: &Value,
) -> String {
    let path_only = path.split('?').next().unwrap();
    let template = template_of(doc, path_only)
        .unwrap_or_else(|| panic!("{path_only} is not in docs/openapi.yaml"));
    let operation = &doc["paths"][template][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not described"
    );
    let response = operation["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {template}: status {status} is not described"));
    let response = resolve(doc, response);
    let schema = response["content"]["application/json"]["schema"].clone();
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::draft202012::new(&root).expect("a valid schema");
    if let Err(e) = validator.validate(body) {
        panic!("{method} {path} answered {status} with {body}, which does not fit docs/openapi.yaml: {e}");
    }
    format!("{} {template}", method.to_lowercase())
}

#[tokio::test]
async fn real_answers_fit_the_openapi_description() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    let server = TestServer::start(API).await;
    let api = Api::new(&server);
    let anonymous = Api::new(&server).with_key(None);
    let mut customer = server.customer().await;
    let started = customer
        .call(
            "StartEngagement",
            json!({ "formData": { "topic": "billing" } }),
        )
        .await
        .unwrap();
    let sid = started["channelSid"].as_str().unwrap().to_owned();
    let me = customer.identity();
    let _agent = server.staff("ann", "agent").await;
    let unknown = format!("CH{}", "f".repeat(32));

    let requests: Vec<(&str, String, Option<Value>, bool)> = vec![
        (
            "POST",
            "/api/v1/actions/JoinChannel".into(),
            Some(json!({ "identity": "bot", "payload": { "channelSid": sid } })),
            true,
        ),
        (
            "POST",
            "/api/v1/actions/SendMessage".into(),
            Some(
                json!({ "identity": "bot", "payload": { "channelSid": sid, "body": "hi", "attributes": { "k": 1 } } }),
            ),
            true,
        ),
        (
            "POST",
            "/api/v1/actions/Nope".into(),
            Some(json!({ "identity": "bot" })),
            true,
        ),
        (
            "POST",
            "/api/v1/actions/SendMessage".into(),
            Some(json!({})),
            true,
        ),
        (
            "POST",
            "/api/v1/actions/StartEngagement".into(),
            Some(json!({ "identity": me, "role": "customer" })),
            true,
        ),
        (
            "POST",
            "/api/v1/actions/StartEngagement".into(),
            Some(json!({ "identity": "bot" })),
            true,
        ),
        (
            "POST",
            "/api/v1/actions/SendMessage".into(),
            Some(json!({ "identity": "bot" })),
            false,
        ),
        ("GET", format!("/api/v1/channels/{sid}"), None, true),
        ("GET", format!("/api/v1/channels/{unknown}"), None, true),
        (
            "GET",
            format!("/api/v1/channels/{sid}/messages?limit=10"),
            None,
            true,
        ),
        (
            "GET",
            format!("/api/v1/channels/{sid}/messages?limit=x"),
            None,
            true,
        ),
        ("GET", "/api/v1/queues/default".into(), None, true),
        ("GET", "/api/v1/queues/bad%20name".into(), None, true),
        ("GET", format!("/api/v1/identities/{me}"), None, true),
        ("GET", "/api/v1/identities/ann".into(), None, true),
        ("GET", "/api/v1/identities/nobody".into(), None, true),
        (
            "DELETE",
            format!("/api/v1/channels/{sid}/members/bot"),
            None,
            true,
        ),
        (
            "DELETE",
            format!("/api/v1/channels/{sid}/members/bot"),
            None,
            true,
        ),
        (
            "DELETE",
            "/api/v1/identities/ann/sessions".into(),
            None,
            true,
        ),
        (
            "POST",
            format!("/api/v1/channels/{sid}/end"),
            Some(json!({ "reason": 1 })),
            true,
        ),
        (
            "POST",
            format!("/api/v1/channels/{sid}/end"),
            Some(json!({ "reason": "done" })),
            true,
        ),
        (
            "POST",
            format!("/api/v1/channels/{sid}/end"),
            Some(json!({})),
            true,
        ),
        ("GET", format!("/api/v1/channels/{sid}"), None, true),
        (
            "GET",
            format!("/api/v1/channels/{sid}/messages"),
            None,
            true,
        ),
        ("GET", format!("/api/v1/identities/{me}"), None, true),
    ];
    let mut exercised = std::collections::BTreeSet::new();
    let mut statuses = std::collections::BTreeSet::new();
    for (method, path, body, with_key) in requests {
        let client = if with_key { &api } else { &anonymous };
        let method_value = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, answer) = client.send(method_value, &path, body).await;
        statuses.insert(status);
        exercised.insert(check_against_openapi(&doc, method, &path, status, &answer));
    }
    // Every operation described was exercised.
    let mut described = std::collections::BTreeSet::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.insert(format!("{method} {template}"));
        }
    }
    assert_eq!(exercised, described);
    for status in [200, 400, 401, 403, 404, 409] {
        assert!(statuses.contains(&status), "no {status} answer checked");
    }
    server.shutdown().await;
}
