//! Test support: a broker on an ephemeral loopback port, and a protocol v1
//! client over a real WebSocket.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::{ActionRegistry, Broker, Config, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    /// The store's directory (removed when the test passes).
    pub data_dir: std::path::PathBuf,
    pub broker: Arc<Broker>,
    /// Live connection counts (admission control).
    pub admission: Arc<switchboard::admission::Admission>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A broker with the given TOML config (plus the test JWT secret).
    pub async fn start(toml: &str) -> TestServer {
        Self::start_with(toml, ActionRegistry::new()).await
    }

    pub async fn start_with(toml: &str, actions: ActionRegistry) -> TestServer {
        Self::start_in(&fresh_data_dir(), toml, actions).await
    }

    /// A broker on an existing data directory (a restart).
    pub async fn start_in(
        data_dir: &std::path::Path,
        toml: &str,
        actions: ActionRegistry,
    ) -> TestServer {
        let mut config = Config::from_toml(toml).expect("test config");
        // Opt-in: the same suites on the Redis engine (every broker a
        // node of its own, kept apart by its key prefix). The prefix comes
        // from the data directory, so that a broker started again on it
        // (a restart) finds its state, as it would on disk; the salt keeps
        // one run's brokers apart from an earlier run's in the same Redis.
        if let Ok(url) = std::env::var("SWITCHBOARD_TEST_REDIS_URL") {
            if config.cluster.redis_url.is_none() {
                use std::hash::{Hash, Hasher};
                static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                SALT.get_or_init(rand::random::<u64>).hash(&mut hasher);
                data_dir.hash(&mut hasher);
                config.cluster.redis_url = Some(url);
                config.cluster.key_prefix = format!("t{:016x}", hasher.finish());
            }
        }
        config.jwt_secret = Some(SECRET.into());
        config.listen = "127.0.0.1:0".into();
        config.data_dir = data_dir.to_owned();
        let broker = Arc::new(Broker::new(config, actions).expect("broker"));
        let server = Server::bind(broker.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = server.local_addr().unwrap();
        let admission = server.admission().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir: data_dir.to_owned(),
            broker,
            admission,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Graceful shutdown; returns once the server has drained and the
    /// store has committed everything. Removes the data directory.
    pub async fn shutdown(self) {
        let dir = self.stop_keeping_data().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Graceful shutdown that keeps the data directory, for a restart.
    pub async fn stop_keeping_data(mut self) -> std::path::PathBuf {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server drains")
                .unwrap();
        }
        self.broker.close();
        self.data_dir.clone()
    }

    pub async fn customer(&self) -> Client {
        let mut c = Client::open(self, Enc::Json).await;
        c.connect(json!({})).await.expect("anonymous connect");
        c
    }

    pub async fn customer_enc(&self, enc: Enc) -> Client {
        let mut c = Client::open(self, enc).await;
        c.connect(json!({})).await.expect("anonymous connect");
        c
    }

    /// A session connected with the given client token.
    pub async fn staff_token(&self, token: &str) -> Client {
        let mut c = Client::open(self, Enc::Json).await;
        c.connect(json!({ "token": token }))
            .await
            .expect("token connect");
        c
    }

    pub async fn staff(&self, sub: &str, role: &str) -> Client {
        self.staff_enc(sub, role, Enc::Json).await
    }

    pub async fn staff_enc(&self, sub: &str, role: &str, enc: Enc) -> Client {
        Client::staff_at(&self.url(), sub, role, enc).await
    }
}

/// A new, empty directory for a test broker's store.
pub fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchboard-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An HS256 token signed with the test secret; `ttl` may be negative.
pub fn token(sub: &str, role: &str, ttl: i64) -> String {
    token_with(SECRET, sub, role, ttl)
}

pub fn token_with(secret: &str, sub: &str, role: &str, ttl: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + ttl;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub, "role": role, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Enc {
    Json,
    MsgPack,
    /// No subprotocol offered (must mean JSON).
    None,
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol v1 client that keeps pushes aside while it waits for replies.
pub struct Client {
    pub ws: Ws,
    pub enc: Enc,
    next_id: u64,
    pub pushes: VecDeque<Value>,
    /// Replies that arrived while waiting for something else.
    replies: VecDeque<Value>,
    pub connect_result: Value,
    pub closed: Option<(u16, String)>,
}

impl Client {
    pub async fn open(server: &TestServer, enc: Enc) -> Client {
        Self::open_url(&server.url(), enc)
            .await
            .expect("websocket upgrade")
    }

    pub async fn open_url(
        url: &str,
        enc: Enc,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().unwrap();
        let protocol = match enc {
            Enc::Json => Some("switchboard.v1.json"),
            Enc::MsgPack => Some("switchboard.v1.msgpack"),
            Enc::None => None,
        };
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        if let Some(p) = protocol {
            assert_eq!(
                response.headers().get("Sec-WebSocket-Protocol").unwrap(),
                p,
                "server echoes the subprotocol"
            );
        }
        Ok(Client::from_ws(ws, enc))
    }

    /// A staff session at `url` (a broker process, or a test server):
    /// opened and connected with a token for `sub` as `role`.
    pub async fn staff_at(url: &str, sub: &str, role: &str, enc: Enc) -> Client {
        let mut c = Client::open_url(url, enc).await.expect("websocket upgrade");
        c.connect(json!({ "token": token(sub, role, 3600) }))
            .await
            .expect("token connect");
        c
    }

    /// A client over an already upgraded socket.
    pub fn from_ws(ws: Ws, enc: Enc) -> Client {
        Client {
            ws,
            enc,
            next_id: 1,
            pushes: VecDeque::new(),
            replies: VecDeque::new(),
            connect_result: Value::Null,
            closed: None,
        }
    }

    pub async fn connect(&mut self, payload: Value) -> Result<Value, Value> {
        let result = self.call("Connect", payload).await?;
        self.connect_result = result.clone();
        Ok(result)
    }

    pub fn identity(&self) -> String {
        self.connect_result["identity"].as_str().unwrap().to_owned()
    }

    pub fn encode(&self, frame: &Value) -> Message {
        match self.enc {
            Enc::MsgPack => Message::Binary(rmp_serde::to_vec_named(frame).unwrap().into()),
            _ => Message::Text(frame.to_string().into()),
        }
    }

    /// A fresh command id.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Sends a command, returns its id.
    pub async fn send(&mut self, action: &str, payload: Value) -> u64 {
        let id = self.next_id();
        let frame = self.encode(&json!({ "id": id, "action": action, "payload": payload }));
        self.ws.send(frame).await.expect("send");
        id
    }

    pub async fn send_raw(&mut self, frame: Message) {
        self.ws.send(frame).await.expect("send raw");
    }

    /// Next decoded frame, or `None` when the socket closed (then `closed`
    /// holds the close code and reason) or nothing came within `WAIT`.
    pub async fn read_frame(&mut self) -> Option<Value> {
        self.read_frame_within(WAIT).await
    }

    pub async fn read_frame_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    assert_ne!(self.enc, Enc::MsgPack, "msgpack session got a text frame");
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"));
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(self.enc, Enc::MsgPack, "json session got a binary frame");
                    return Some(rmp_serde::from_slice(&b).expect("server sends MessagePack"));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    if self.closed.is_none() {
                        self.closed = Some((1006, String::new()));
                    }
                    return None;
                }
            }
        }
    }

    /// The reply to `id`; pushes that arrive first are kept.
    pub async fn reply(&mut self, id: u64) -> Value {
        if let Some(pos) = self.replies.iter().position(|r| r["id"] == id) {
            return self.replies.remove(pos).unwrap();
        }
        loop {
            let frame = self
                .read_frame()
                .await
                .unwrap_or_else(|| panic!("no reply to {id}; closed: {:?}", self.closed));
            if frame.get("event").is_some() {
                self.pushes.push_back(frame);
            } else if frame["id"] == id {
                return frame;
            } else {
                self.replies.push_back(frame);
            }
        }
    }

    /// Sends a command and waits for its reply: `Ok(result)` or `Err(error)`.
    pub async fn call(&mut self, action: &str, payload: Value) -> Result<Value, Value> {
        let id = self.send(action, payload).await;
        let reply = self.reply(id).await;
        match reply.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(reply["error"].clone()),
        }
    }

    /// `JoinChannel` `sid`, which must succeed; returns its result.
    pub async fn join(&mut self, sid: &str) -> Value {
        self.call("JoinChannel", json!({ "channelSid": sid }))
            .await
            .expect("JoinChannel")
    }

    /// Starts an engagement (no form data) and returns its channel sid.
    pub async fn start_engagement(&mut self) -> String {
        let started = self
            .call("StartEngagement", json!({}))
            .await
            .expect("StartEngagement");
        started["channelSid"]
            .as_str()
            .expect("channelSid")
            .to_owned()
    }

    /// The error code of a call that must fail.
    pub async fn fails(&mut self, action: &str, payload: Value) -> String {
        match self.call(action, payload).await {
            Ok(result) => panic!("{action} should fail, got {result}"),
            Err(error) => error["code"].as_str().unwrap().to_owned(),
        }
    }

    /// The next push named `event` (earlier pushes of other names are kept).
    pub async fn push(&mut self, event: &str) -> Value {
        self.push_within(event, WAIT).await.unwrap_or_else(|| {
            panic!(
                "no {event} push; closed: {:?}; kept: {:?}",
                self.closed, self.pushes
            )
        })
    }

    pub async fn push_within(&mut self, event: &str, wait: Duration) -> Option<Value> {
        if let Some(pos) = self.pushes.iter().position(|p| p["event"] == event) {
            return Some(self.pushes.remove(pos).unwrap()["data"].clone());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.read_frame_within(left).await?;
            if frame["event"] == event {
                return Some(frame["data"].clone());
            }
            if frame.get("event").is_some() {
                self.pushes.push_back(frame);
            } else {
                self.replies.push_back(frame);
            }
        }
    }

    /// Asserts no push named `event` arrives within `wait`.
    pub async fn no_push(&mut self, event: &str, wait: Duration) {
        if let Some(data) = self.push_within(event, wait).await {
            panic!("unexpected {event} push: {data}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> u16 {
        while self.closed.is_none() {
            if self.read_frame().await.is_none() && self.closed.is_none() {
                panic!("socket still open after {WAIT:?}");
            }
        }
        self.closed.as_ref().unwrap().0
    }
}

/// The real `switchboard` binary as a child process.
pub struct BrokerProcess {
    pub child: std::process::Child,
    pub url: String,
    pub data_dir: std::path::PathBuf,
}

impl BrokerProcess {
    /// Starts the binary on an ephemeral port with `--data-dir data_dir`.
    pub fn start(
        args: &[&str],
        envs: &[(&str, &str)],
        data_dir: &std::path::Path,
    ) -> BrokerProcess {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .env_remove("SWITCHBOARD_LISTEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("switchboard listening on ") else {
            // It did not start: say why (its stderr), not just that.
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            panic!("switchboard did not start (first line {line:?}); stderr:\n{stderr}");
        };
        let addr = addr.to_owned();
        // Drained in the background so the broker never blocks on a full
        // pipe.
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        BrokerProcess {
            child,
            url: format!("ws://{addr}/ws"),
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (up to 15 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("switchboard did not exit");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file for a child broker.
pub fn config_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Sends raw bytes on a fresh TCP connection and returns everything the
/// server answers until it closes (or `wait` passes).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP status of a refused WebSocket upgrade (`None` when it upgraded).
pub async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> Option<u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Some(response.status().as_u16())
        }
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// Waits until `condition` holds (checked every 20 ms), or panics after
/// `WAIT` saying what it waited for.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `messages` carry indexes `from`, `from + 1`, … in order.
pub fn assert_gapless(messages: &[Value], from: u64, what: &str) {
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(
            m["index"],
            from + i as u64,
            "{what}: gap or disorder at position {i}"
        );
    }
}

/// Asserts that every acknowledged index is among `messages`' indexes.
pub fn assert_holds_acked(messages: &[Value], acked: &[u64], what: &str) {
    let got: std::collections::HashSet<u64> = messages
        .iter()
        .map(|m| m["index"].as_u64().unwrap())
        .collect();
    for index in acked {
        assert!(got.contains(index), "acknowledged {index} {what}");
    }
}

/// Sends `m0`, `m1`, … one at a time, each acknowledged before the next.
pub async fn send_messages(client: &mut Client, sid: &str, n: usize) {
    for i in 0..n {
        client
            .call(
                "SendMessage",
                json!({"channelSid": sid, "body": format!("m{i}")}),
            )
            .await
            .unwrap();
    }
}

/// Sends `n` messages (`{prefix}{i}`) without reading a reply: their ids.
pub async fn pipeline_messages(client: &mut Client, sid: &str, prefix: &str, n: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            client
                .send(
                    "SendMessage",
                    json!({"channelSid": sid, "body": format!("{prefix}{i}")}),
                )
                .await,
        );
    }
    ids
}

/// Reads the replies to `ids`, which must hold indexes 0, 1, 2, …
pub async fn expect_indexes_in_order(client: &mut Client, ids: Vec<u64>) {
    for (i, id) in ids.into_iter().enumerate() {
        let reply = client.reply(id).await;
        assert_eq!(reply["result"]["index"], i as u64, "{reply}");
    }
}

/// Reads `messageAdded` pushes until index `last` (inclusive).
pub async fn read_until(client: &mut Client, last: u64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let m = client.push("messageAdded").await;
        let index = m["index"].as_u64().unwrap();
        out.push(m);
        if index >= last {
            return out;
        }
    }
}

/// Runs the binary on `data_dir` expecting it to refuse to start: returns
/// its exit code and what it wrote on stderr.
pub fn refused_start(data_dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("SWITCHBOARD_LISTEN")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run switchboard");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small tmpfs mounted for one test (a real file system the test can
/// fill or make read-only); unmounted on drop. Needs root: `None`, with the
/// reason printed, otherwise.
pub struct Tmpfs {
    pub path: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let path = fresh_data_dir().with_extension("mnt");
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        if matches!(status, Ok(s) if s.success()) {
            Some(Tmpfs { path })
        } else {
            eprintln!(
                "skipped: mounting a tmpfs needs root (this test runs a real small file system)"
            );
            let _ = std::fs::remove_dir(&path);
            None
        }
    }

    /// Remounts it read-only (`true`) or read-write.
    pub fn set_read_only(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let status = std::process::Command::new("mount")
            .args(["-o", mode])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
