//! SEC-1: a client that expects a named agent refuses it when its certificate was revoked,
//! although the certificate chains to the CA and carries the expected name (an agent that
//! joined again; its old key may be in other hands). A real TLS server on loopback.

use ferry_client::Client;
use ferry_pki::{Ca, ClientAuth, PeerName, Revocations};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server presenting `cert` that answers every request with `{}`; returns its address.
async fn serve(cert_pem: String, key_pem: String) -> std::net::SocketAddr {
    let cfg = ferry_pki::server_config(&cert_pem, &key_pem, ClientAuth::None, false).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn sec_1_a_revoked_agent_certificate_is_refused_under_its_expected_name() {
    let ca = Ca::create("ferry-test-vault").expect("ca");
    let host = ca.issue_server_cert("host-site-h1", &[], &[]).expect("cert");
    let fingerprint = ferry_pki::fingerprint_of_pem(&host.cert_pem).expect("fingerprint");
    let addr = serve(host.cert_pem.clone(), host.key_pem.clone()).await;
    let client = |revoked: &[String]| {
        let r = Revocations::default();
        r.set(revoked);
        Client::builder(format!("https://{addr}"))
            .ca(ca.cert_pem().to_string())
            .peer_name(PeerName::Exact("host-site-h1".into()))
            .revoked(r)
            .build()
            .expect("client")
    };
    let ok: serde_json::Value = client(&["00ff".into()]).get("/v1/status").await.expect("not revoked: accepted");
    assert_eq!(ok, serde_json::json!({}));
    let err = client(&[fingerprint.to_uppercase()]).get::<serde_json::Value>("/v1/status").await.expect_err("refused");
    let text = format!("{err:?}");
    assert!(text.contains("revoked"), "{text}");
}
