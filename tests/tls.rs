//! Optional TLS: wss with a certificate and key from the config.

mod common;

use std::sync::Arc;

use common::{TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_tungstenite::tungstenite::Message;

struct Pem {
    dir: std::path::PathBuf,
    cert: rustls::pki_types::CertificateDer<'static>,
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn self_signed(tag: &str) -> Pem {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    Pem {
        dir,
        cert: certified.cert.der().clone(),
    }
}

fn tls_config(pem: &Pem) -> String {
    format!(
        "[limits]\nhandshake_timeout_ms = 500\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pem.dir.join("cert.pem").display(),
        pem.dir.join("key.pem").display()
    )
}

fn connector(pem: &Pem) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem.cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn wss_sessions_work_and_plain_or_stalled_clients_are_dropped() {
    let pem = self_signed("ok");
    let server = TestServer::start(&tls_config(&pem)).await;

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector(&pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the configured certificate");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", server.addr.port()), tls)
            .await
            .expect("upgrade over TLS");
    ws.send(Message::Text(r#"{"id":1,"action":"Connect"}"#.into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["role"], "customer");

    // A plain WebSocket client gets no HTTP answer from a TLS listener.
    assert!(tokio_tungstenite::connect_async(server.url())
        .await
        .is_err());
    // A TCP connection that never starts the TLS handshake is closed at the
    // handshake deadline.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut buf))
        .await
        .expect("stalled TLS handshake dropped")
        .ok();
    assert!(buf.is_empty());

    // The session is still fine.
    ws.send(Message::Text(r#"{"id":2,"action":"GetActions"}"#.into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["id"], json!(2));
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_certificate_stops_the_server_with_a_clear_error() {
    let pem = self_signed("bad");
    std::fs::write(pem.dir.join("key.pem"), "not a key").unwrap();
    let mut config = switchboard::Config::from_toml(&tls_config(&pem)).unwrap();
    config.listen = "127.0.0.1:0".into();
    // Never the repository's ./data: a store left there by anything else
    // must not decide this test.
    config.data_dir = common::fresh_data_dir();
    let broker =
        Arc::new(switchboard::Broker::new(config, switchboard::ActionRegistry::new()).unwrap());
    let err = switchboard::Server::bind(broker, "127.0.0.1:0".parse().unwrap())
        .await
        .err()
        .expect("bind refuses");
    assert!(err.to_string().contains("key_file"), "{err}");
}
