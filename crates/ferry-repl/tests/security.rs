//! SEC-1 / SEC-3: who may replicate, and what the receiver does with bad frames.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use ferry_pki::Ca;
use ferry_repl::protocol::{self, data_extent, BeginCycle, Direction, DiskInfo, ErrorCode, Message};
use ferry_repl::send::{Peer, Session};
use ferry_repl::{transport, Allowlist, ErrorKind, Receiver, ReceiverConfig, TlsIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn peer(addr: std::net::SocketAddr, id: &TlsIdentity, pair: &str, vm: &str) -> Peer {
    Peer {
        addr,
        server_name: "localhost".into(),
        tls: id.client_config().expect("client tls"),
        vm_id: vm.into(),
        pair_id: pair.into(),
        direction: Direction::Forward,
    }
}

async fn rx_with(root: &std::path::Path, pki: &Pki, allow: Allowlist) -> Receiver {
    let cfg = ReceiverConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        pki.replica.server_config().expect("tls"),
        allow,
        root.to_path_buf(),
    );
    Receiver::start(cfg).await.expect("receiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_1_replication_refuses_unauthorised_or_foreign_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let allow = Allowlist::new();
    allow.allow_pair(PRIMARY_CN, "pair-1");
    let rx = rx_with(dir.path(), &pki, allow.clone()).await;
    let t = Duration::from_secs(5);

    // The authorised host, for its pair: accepted.
    Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm1"), t).await.expect("authorised host");

    // Same host, another pair: refused after Hello.
    let e = Session::open(&peer(rx.local_addr(), &pki.primary, "pair-2", "vm1"), t).await.err().expect("wrong pair");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    // Same vault CA, but a host not in the allowlist.
    let stranger = identity(&pki.ca, "host-fab1-rogue");
    let e = Session::open(&peer(rx.local_addr(), &stranger, "pair-1", "vm1"), t).await.err().expect("stranger");
    eprintln!("unlisted CN: {}", e.chain());
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("host-fab1-rogue"), "{e}");

    // A certificate from another vault's CA (the client trusts our CA, so the handshake gets as far
    // as the server's client-certificate check).
    let other = Ca::create("another-vault").expect("ca");
    let foreign_cert = other.issue_server_cert(PRIMARY_CN, &[], &[]).expect("cert");
    let foreign = TlsIdentity {
        ca_pem: pki.ca.cert_pem().to_string(),
        cert_pem: foreign_cert.cert_pem,
        key_pem: foreign_cert.key_pem,
        live: None,
    };
    let e = Session::open(&peer(rx.local_addr(), &foreign, "pair-1", "vm1"), t).await.err().expect("foreign CA");
    eprintln!("foreign CA: {}", e.chain());

    // No client certificate at all.
    let anon = ferry_pki::client_config(pki.ca.cert_pem(), None).expect("anon tls");
    let p = Peer { tls: anon, ..peer(rx.local_addr(), &pki.primary, "pair-1", "vm1") };
    assert!(Session::open(&p, t).await.is_err());

    // Revocation takes effect for new connections.
    allow.revoke(PRIMARY_CN);
    assert!(Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm1"), t).await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = rx.stats().unauthorized.load(Ordering::Relaxed);
    assert!(refused >= 5, "refusals counted: {refused}");
    // Nothing was created for refused peers.
    assert!(rx.store().vms().expect("vms").is_empty());
}

/// SEC-1: a revoked certificate is refused although its name is still granted; the host's new
/// certificate (same name) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_1_a_revoked_certificate_is_refused_under_a_granted_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let allow = Allowlist::new();
    allow.allow_pair(PRIMARY_CN, "pair-1");
    let rx = rx_with(dir.path(), &pki, allow.clone()).await;
    let t = Duration::from_secs(5);
    Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm1"), t).await.expect("before revocation");
    let old = ferry_pki::fingerprint_of_pem(&pki.primary.cert_pem).expect("fingerprint");
    allow.set_revoked_certificates(&[old.to_ascii_uppercase()]);
    let e = Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm1"), t).await.err().expect("revoked");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    // The host joined again: a new certificate under the same name works.
    let renewed = identity(&pki.ca, PRIMARY_CN);
    Session::open(&peer(rx.local_addr(), &renewed, "pair-1", "vm1"), t).await.expect("new certificate");
    allow.set_revoked_certificates(&[]);
    Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm1"), t).await.expect("list replaced");

    // The other way round: a source refuses a replica host whose certificate was revoked.
    let revoked = ferry_pki::Revocations::default();
    let checked = |r: &ferry_pki::Revocations| Peer {
        tls: pki.primary.peer_client_config_checked(REPLICA_CN, Some(r)).expect("tls"),
        ..peer(rx.local_addr(), &pki.primary, "pair-1", "vm1")
    };
    Session::open(&checked(&revoked), t).await.expect("replica host not revoked");
    revoked.set(&[ferry_pki::fingerprint_of_pem(&pki.replica.cert_pem).expect("fingerprint")]);
    let e = Session::open(&checked(&revoked), t).await.err().expect("revoked replica host");
    assert!(e.chain().contains("revoked"), "{}", e.chain());
}

async fn raw_session(rx: &Receiver, pki: &Pki) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    transport::connect(rx.local_addr(), "localhost", pki.primary.client_config().expect("tls"), Duration::from_secs(5))
        .await
        .expect("connect")
}

async fn expect_error(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> (ErrorCode, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), protocol::read_frame(s)).await.expect("answer") {
            Ok(Some(Message::Error { code, message })) => return (code, message),
            Ok(Some(_)) => continue,
            r => panic!("expected an Error frame, got {r:?}"),
        }
    }
}

fn hello(vm: &str) -> Message {
    Message::Hello {
        version: protocol::PROTOCOL_VERSION,
        vm_id: vm.into(),
        pair_id: "pair-1".into(),
        direction: Direction::Forward,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_malformed_and_oversized_frames_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let rx = receiver(dir.path(), &pki, 64).await;

    // Oversized: a 4 GiB length prefix is refused before anything is allocated.
    let mut s = raw_session(&rx, &pki).await;
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).await.expect("write");
    let (code, msg) = expect_error(&mut s).await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("Frame length"), "{msg}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;

    // Unknown frame type.
    let mut s = raw_session(&rx, &pki).await;
    s.write_all(&[0, 0, 0, 1, 0x7f]).await.expect("write");
    assert_eq!(expect_error(&mut s).await.0, ErrorCode::Protocol);

    // Path traversal in the VM id.
    let mut s = raw_session(&rx, &pki).await;
    protocol::write_msg(&mut s, &hello("../../etc")).await.expect("write");
    assert_eq!(expect_error(&mut s).await.0, ErrorCode::Protocol);

    // Truncated Hello body (length says more than the fields hold).
    let mut s = raw_session(&rx, &pki).await;
    s.write_all(&[0, 0, 0, 4, 1, 0, 1, 0]).await.expect("write");
    assert_eq!(expect_error(&mut s).await.0, ErrorCode::Protocol);

    // Extent before BeginCycle.
    let mut s = raw_session(&rx, &pki).await;
    protocol::write_msg(&mut s, &hello("vm-sec")).await.expect("hello");
    let e = data_extent(0, 0, 0, &[1u8; 65536], false).expect("extent");
    protocol::write_msg(&mut s, &Message::Extent(e)).await.expect("extent");
    assert_eq!(expect_error(&mut s).await.0, ErrorCode::Protocol);

    // A base cycle whose extent fails its checksum: refused, and no point appears.
    let mut s = raw_session(&rx, &pki).await;
    protocol::write_msg(&mut s, &hello("vm-sec")).await.expect("hello");
    let begin = BeginCycle {
        cycle: 1,
        disks: vec![DiskInfo { target: "vda".into(), size: 16 * MIB }],
        app_consistent: false,
        base: true,
        created_at_ms: 0,
    };
    protocol::write_msg(&mut s, &Message::BeginCycle(begin)).await.expect("begin");
    let mut e = data_extent(0, 0, 0, &[2u8; 65536], true).expect("extent");
    e.checksum[0] ^= 0xff;
    protocol::write_msg(&mut s, &Message::Extent(e)).await.expect("extent");
    assert_eq!(expect_error(&mut s).await.0, ErrorCode::Checksum);
    // Unaligned extent (not on a cluster boundary).
    let e = data_extent(0, 0, 512, &[3u8; 4096], false).expect("extent");
    let mut s2 = raw_session(&rx, &pki).await;
    protocol::write_msg(&mut s2, &hello("vm-sec")).await.expect("hello");
    let begin = BeginCycle {
        cycle: 1,
        disks: vec![DiskInfo { target: "vda".into(), size: 16 * MIB }],
        app_consistent: false,
        base: true,
        created_at_ms: 0,
    };
    protocol::write_msg(&mut s2, &Message::BeginCycle(begin)).await.expect("begin");
    protocol::write_msg(&mut s2, &Message::Extent(e)).await.expect("extent");
    assert_eq!(expect_error(&mut s2).await.0, ErrorCode::Protocol);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let rejected = rx.stats().rejected_frames.load(Ordering::Relaxed);
    assert!(rejected >= 7, "rejections counted: {rejected}");
    let rep = rx.store().vm("vm-sec").await.expect("vm");
    assert!(rep.recovery_points().expect("points").is_empty(), "bad input changed nothing");
}

/// A host granted one protected item cannot open another item's replica on the same target
/// host by naming it under its own grant: not to write cycles into it, not to read its block
/// hashes (SEC-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_1_a_peer_granted_one_item_cannot_open_another_items_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let allow = Allowlist::new();
    allow.allow_replica(PRIMARY_CN, "item-a", "item-a");
    let other_source = "host-fab1-ny2";
    allow.allow_replica(other_source, "item-b", "item-b");
    let rx = rx_with(dir.path(), &pki, allow).await;
    let t = Duration::from_secs(5);
    // Its own replica: accepted.
    Session::open(&peer(rx.local_addr(), &pki.primary, "item-a", "item-a"), t).await.expect("own replica");
    // item-b's replica through item-a's grant: refused at Hello, before the replica is opened.
    let e =
        Session::open(&peer(rx.local_addr(), &pki.primary, "item-a", "item-b"), t).await.err().expect("other replica");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("replica item-b"), "{e}");
    // And directly under item-b's pair, which it was never granted.
    let e = Session::open(&peer(rx.local_addr(), &pki.primary, "item-b", "item-b"), t).await.err().expect("other pair");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let vms = rx.store().vms().expect("vms");
    assert!(!vms.iter().any(|v| v == "item-b"), "nothing was created for item-b: {vms:?}");
}

/// One cycle of `vm-clock` over a raw session, its capture dated `created_at_ms` by the source
/// host; waits for the receiver's Ack.
async fn cycle_dated(rx: &Receiver, pki: &Pki, cycle: u64, base: bool, created_at_ms: i64) {
    let mut s = raw_session(rx, pki).await;
    protocol::write_msg(&mut s, &hello("vm-clock")).await.expect("hello");
    let begin = BeginCycle {
        cycle,
        disks: vec![DiskInfo { target: "vda".into(), size: 16 * MIB }],
        app_consistent: false,
        base,
        created_at_ms,
    };
    protocol::write_msg(&mut s, &Message::BeginCycle(begin)).await.expect("begin");
    let data = vec![cycle as u8; 65536];
    let e = data_extent(0, 0, 0, &data, false).expect("extent");
    protocol::write_msg(&mut s, &Message::Extent(e)).await.expect("extent");
    let end = Message::EndCycle { cycle, extent_count: 1, total_bytes: data.len() as u64 };
    protocol::write_msg(&mut s, &end).await.expect("end");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), protocol::read_frame(&mut s)).await.expect("answer") {
            Ok(Some(Message::Ack { cycle: c, .. })) if c == cycle => return,
            Ok(Some(Message::Error { code, message })) => panic!("cycle {cycle} refused: {code:?} {message}"),
            Ok(Some(_)) => continue,
            r => panic!("expected the Ack of cycle {cycle}, got {r:?}"),
        }
    }
}

/// A source host whose clock is set back (or ran ahead before it was corrected) dates a new
/// capture before the point it is built on. The replica keeps its points in the order they were
/// made and dated after one another, so "latest" (RP-3), retention and the RPO, which go by
/// time, still name the newest point, never an older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_3_a_source_clock_set_back_never_makes_a_newer_point_look_older() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let allow = Allowlist::new();
    allow.allow_pair(PRIMARY_CN, "pair-1");
    let rx = rx_with(dir.path(), &pki, allow).await;
    let now = chrono::Utc::now().timestamp_millis();
    cycle_dated(&rx, &pki, 1, true, now).await;
    // Five minutes back, then right again but still before the first point.
    cycle_dated(&rx, &pki, 2, false, now - 300_000).await;
    cycle_dated(&rx, &pki, 3, false, now - 1_000).await;
    cycle_dated(&rx, &pki, 4, false, now + 2_000).await;
    let vm = rx.store().vm("vm-clock").await.expect("vm");
    let pts = vm.recovery_points().expect("points");
    let ids: Vec<&str> = pts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["rp-1", "rp-2", "rp-3", "rp-4"], "points in the order they were made");
    for w in pts.windows(2) {
        assert!(w[1].time > w[0].time, "{} dated after {}: {:?}", w[1].id, w[0].id, pts);
    }
    assert_eq!(pts[3].time.timestamp_millis(), now + 2_000, "a correct date stays as it was");
    let infos = vm.point_infos().expect("infos");
    let latest =
        ferry_core::retention::select_recovery_point(&infos, &ferry_core::retention::RecoveryPointChoice::Latest)
            .expect("latest");
    assert_eq!(latest.id, "rp-4");
    let plan = ferry_core::retention::plan_retention(&infos, 1, 2);
    assert!(plan.keep.contains(&"rp-4".to_string()), "retention keeps the newest point: {plan:?}");
}

/// SEC-3: one peer host holds a bounded number of sessions; more are refused with `Conflict`
/// (it retries later), and a closed session frees its place. Other peers are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_sessions_per_peer_are_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let allow = Allowlist::new();
    allow.allow_pair(PRIMARY_CN, "pair-1");
    let mut cfg = ReceiverConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        pki.replica.server_config().expect("tls"),
        allow,
        dir.path().to_path_buf(),
    );
    assert_eq!((cfg.max_sessions_per_peer, cfg.max_connections), (256, 1024), "the product's limits");
    cfg.max_sessions_per_peer = 2;
    let rx = Receiver::start(cfg).await.expect("receiver");
    let t = Duration::from_secs(5);
    let first = Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm1"), t).await.expect("first");
    let _second = Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm2"), t).await.expect("second");
    let mut third = raw_session(&rx, &pki).await;
    protocol::write_msg(&mut third, &hello("vm3")).await.expect("hello");
    let (code, message) = expect_error(&mut third).await;
    assert_eq!(code, ErrorCode::Conflict, "{message}");
    assert!(message.contains("holds 2 replication sessions already"), "{message}");
    assert!(rx.stats().over_limit.load(Ordering::Relaxed) >= 1);
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        match Session::open(&peer(rx.local_addr(), &pki.primary, "pair-1", "vm3"), t).await {
            Ok(s) => {
                again = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(again.is_some(), "a closed session frees its place");
}
