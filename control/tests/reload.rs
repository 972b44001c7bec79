//! SIGHUP over real processes and sockets: the certificate and key files
//! are swapped and the server presents the new certificate to new
//! connections while a connection made before goes on; a setting that can
//! change at run time is applied, one that cannot is reported; a reload
//! with a broken key changes nothing.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use scripts::GatewayClient;
use support::ServerProcess;

/// A fresh self-signed certificate for loopback: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names).unwrap();
    (cert.pem(), key_pair.serialize_pem())
}

/// Whether a TLS handshake with `addr` succeeds when only `trusted` is
/// trusted: which certificate the server presents.
async fn presents(addr: &str, trusted: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.is_ok()
}

fn hup(server: &ServerProcess) {
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_for_new_connections() {
    let dir = std::env::temp_dir().join(format!(
        "voice-reload-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, config) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("voice.toml"),
    );
    let (a_cert, a_key) = certificate();
    let (b_cert, b_key) = certificate();
    std::fs::write(&cert, &a_cert).unwrap();
    std::fs::write(&key, &a_key).unwrap();
    std::fs::write(
        &config,
        "gateway_heartbeat_ms = 13750\nmax_connections = 10000\n",
    )
    .unwrap();
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let args = [
        "--tls-cert".to_owned(),
        path(&cert),
        "--tls-key".to_owned(),
        path(&key),
        "--config".to_owned(),
        path(&config),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(1, &args);
    let gateway = server.gateway_url.trim_start_matches("wss://").to_owned();
    assert!(presents(&gateway, &a_cert).await);
    assert!(!presents(&gateway, &b_cert).await);
    // A voice gateway connection made under certificate A.
    scripts::trust_certificate_file(&cert).unwrap();
    let mut before = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    before.wait_hello().await.unwrap();

    // Certificate B written over A's files, a run-time setting and a
    // restart-only one changed.
    std::fs::write(&cert, &b_cert).unwrap();
    std::fs::write(&key, &b_key).unwrap();
    std::fs::write(
        &config,
        "gateway_heartbeat_ms = 5000\nmax_connections = 9000\n",
    )
    .unwrap();
    hup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !presents(&gateway, &b_cert).await {
        assert!(Instant::now() < deadline, "certificate B never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !presents(&gateway, &a_cert).await,
        "A is no longer presented"
    );
    // The connection made before goes on.
    let nonce = before.heartbeat().await.unwrap();
    let ack = loop {
        match before.next_event_timeout(Duration::from_secs(5)).await {
            Ok(scripts::GatewayEvent::Message(scripts::gateway::ServerMessage::HeartbeatAck(
                a,
            ))) => break a,
            Ok(_) => {}
            Err(e) => panic!("the old connection died: {e}"),
        }
    };
    assert_eq!(ack.nonce().0, i128::from(nonce));
    server.wait_metrics(Duration::from_secs(5), "the reload counted", |s| {
        s.metric("voice_reloads_total{result=\"applied\"}") == 1.0
    });
    assert_eq!(
        server.metric("voice_restart_pending{setting=\"max_connections\"}"),
        1.0
    );
    // A new connection gets the new heartbeat interval (and certificate B).
    scripts::trust_certificate_file(&cert).unwrap();
    let mut after = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    assert_eq!(
        after.wait_hello().await.unwrap(),
        Duration::from_millis(5000)
    );
    assert_eq!(
        before.heartbeat_interval(),
        Some(Duration::from_millis(13750))
    );

    // A broken key: refused, B stays.
    std::fs::write(&key, "not a key").unwrap();
    hup(&server);
    server.wait_metrics(Duration::from_secs(5), "the refusal counted", |s| {
        s.metric("voice_reloads_total{result=\"refused\"}") == 1.0
    });
    assert!(presents(&gateway, &b_cert).await);
    drop(before);
    assert!(server.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
