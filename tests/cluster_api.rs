//! The server API on a cluster: each call lands on one node, its effects
//! reach sessions on every node.

mod cluster_support;
mod common;

use cluster_support::{node, Redis};
use common::{Client, Enc, TestServer};
use serde_json::{json, Value};

const CONFIG: &str =
    "[rate_limits]\nenabled = false\n[api]\nkeys = [\"test-api-key-0123456789\"]\n";

async fn call(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client
        .request(method, format!("http://{}{path}", server.addr))
        .bearer_auth("test-api-key-0123456789");
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_one_node_acts_on_sessions_of_every_node() {
    let redis = Redis::start();
    let a = node(&redis, CONFIG).await;
    let b = node(&redis, CONFIG).await;
    let mut customer = a.customer().await;
    let sid = customer.start_engagement().await;
    let me = customer.identity();
    let mut tab_on_b = Client::open(&b, Enc::Json).await;
    tab_on_b
        .connect(json!({ "resumeToken": customer.connect_result["resumeToken"] }))
        .await
        .unwrap();

    // An action through the API on B reaches the customer on A.
    let join = json!({ "identity": "crm", "payload": { "channelSid": sid } });
    let (status, body) = call(&b, "POST", "/api/v1/actions/JoinChannel", Some(join)).await;
    assert_eq!(status, 200, "{body}");
    let send = json!({ "identity": "crm", "payload": { "channelSid": sid, "body": "shipped" } });
    let (status, body) = call(&b, "POST", "/api/v1/actions/SendMessage", Some(send)).await;
    assert_eq!(status, 200, "{body}");
    let message = customer.push("messageAdded").await;
    assert_eq!(message["authorRole"], "service");
    assert_eq!(message["body"], "shipped");

    // Reads from either node see the same state.
    for server in [&a, &b] {
        let (status, channel) = call(server, "GET", &format!("/api/v1/channels/{sid}"), None).await;
        assert_eq!(status, 200, "{channel}");
        assert_eq!(channel["status"], "open");
        assert_eq!(channel["lastIndex"], 0);
        assert_eq!(channel["members"].as_array().unwrap().len(), 2, "{channel}");
        let (_, page) = call(
            server,
            "GET",
            &format!("/api/v1/channels/{sid}/messages"),
            None,
        )
        .await;
        assert_eq!(page["messages"][0]["body"], "shipped", "{page}");
        let (status, identity) =
            call(server, "GET", &format!("/api/v1/identities/{me}"), None).await;
        assert_eq!(status, 200, "{identity}");
        // Sessions on every node.
        assert_eq!(identity["sessions"], 2, "{identity}");
        assert_eq!(identity["engagement"]["channelSid"], sid);
        let (_, queue) = call(server, "GET", "/api/v1/queues/default", None).await;
        assert_eq!(queue["engagements"][0]["channelSid"], sid, "{queue}");
    }

    // Removal on A, pushed to the customer's tab on B.
    let (status, body) = call(
        &a,
        "DELETE",
        &format!("/api/v1/channels/{sid}/members/crm"),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let left = tab_on_b.push("memberLeft").await;
    assert_eq!(
        left,
        json!({ "channelSid": sid, "identity": "crm", "reason": "removed" })
    );

    // Ending on B tells the customer on A.
    let end = json!({ "reason": "resolved" });
    let (status, body) = call(
        &b,
        "POST",
        &format!("/api/v1/channels/{sid}/end"),
        Some(end),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let ended = customer.push("engagementEnded").await;
    assert_eq!(ended, json!({ "channelSid": sid, "reason": "resolved" }));
    let (_, channel) = call(&a, "GET", &format!("/api/v1/channels/{sid}"), None).await;
    assert_eq!(channel["status"], "ended", "{channel}");

    // Kicking from A closes the sessions on both nodes with 4003.
    let (status, body) = call(
        &a,
        "DELETE",
        &format!("/api/v1/identities/{me}/sessions"),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({ "closed": 2 })));
    assert_eq!(customer.close_code().await, 4003);
    assert_eq!(tab_on_b.close_code().await, 4003);
}
