//! The fuzz targets (SEC-3): each feeds mutated seeds to one parser of outside input for
//! `FERRY_FUZZ_SECS` seconds and fails on a panic or a hang; it prints how many inputs it ran.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_fuzz::mutate::{apply, budget, corpus, Mutation};
use ferry_fuzz::seeds;

/// Run `f` on mutations of `seeds` (and of the checked-in corpus of `name`) for the budget. `f`
/// says whether the parser accepted the input: the seeds must be accepted (else the target
/// tests nothing), and the count of accepted mutations shows how deep the inputs reach.
fn fuzz(name: &str, mut seeds: Vec<Vec<u8>>, f: impl Fn(&[u8]) -> bool + std::panic::RefUnwindSafe) {
    let generated = seeds.len();
    seeds.extend(corpus(name));
    assert!(generated > 0, "target {name} has seeds");
    for (i, s) in seeds.iter().enumerate() {
        let ok = f(s);
        assert!(ok || i >= generated, "target {name}: seed {i} is refused, so mutations of it test little");
    }
    let (runs, accepted) = (AtomicU64::new(seeds.len() as u64), AtomicU64::new(0));
    bolero::check!().with_type::<Mutation>().with_test_time(budget()).for_each(|m| {
        runs.fetch_add(1, Ordering::Relaxed);
        if f(&apply(&seeds, m)) {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
    });
    eprintln!(
        "fuzz target {name}: {} executions ({} accepted by the parser), 0 crashes",
        runs.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed)
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn sec_3_fuzz_replication_frame_decoder() {
    fuzz("frames", seeds::frames(), |b| {
        // Without the length prefix, as the stream reader hands frames to the decoder.
        let body = b.get(4..).unwrap_or_default();
        match ferry_repl::protocol::Message::decode(body) {
            // What decodes encodes again.
            Ok(m) => m.encode().is_ok(),
            Err(_) => false,
        }
    });
}

#[test]
fn sec_3_fuzz_replication_stream_reader() {
    let rt = runtime();
    fuzz("frame_streams", seeds::frame_streams(), |b| {
        rt.block_on(async {
            let mut r: &[u8] = b;
            let mut frames = 0;
            for _ in 0..64 {
                match ferry_repl::protocol::read_frame(&mut r).await {
                    Ok(Some(_)) => frames += 1,
                    _ => break,
                }
            }
            frames > 0
        })
    });
}

#[test]
fn sec_3_fuzz_qcow2_layer_reader() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layer.qcow2");
    fuzz("qcow2", seeds::qcow2_layers(), |b| {
        std::fs::write(&path, b).expect("write layer");
        let Ok(map) = ferry_repl::qcow2::map_layer(&path) else { return false };
        let size = map.iter().map(|e| e.start.saturating_add(e.length)).max().unwrap_or(0);
        if size > (64 << 20) {
            return true;
        }
        rt.block_on(async {
            if let Ok(r) = ferry_repl::image::ChainReader::open_layer(&path, size).await {
                let mut buf = vec![0u8; 4096];
                for e in map.iter().filter(|e| e.data).take(8) {
                    let _ = r.read(e.start, &mut buf[..(e.length.min(4096)) as usize]);
                }
            }
        });
        true
    });
}

#[test]
fn sec_3_fuzz_registration_key_files() {
    fuzz("registration_keys", seeds::registration_keys(), |b| {
        let Ok(text) = std::str::from_utf8(b) else { return false };
        match ferry_pki::regkey::RegistrationKey::parse(text) {
            Ok(k) => !k.to_file_text().is_empty(),
            Err(_) => false,
        }
    });
}

#[test]
fn sec_3_fuzz_pem_certificates_keys_and_csrs() {
    fuzz("pems", seeds::pems(), |b| {
        let text = String::from_utf8_lossy(b);
        let cert = ferry_pki::fingerprint_of_pem(&text).is_ok();
        let _ = ferry_pki::cert_common_name(&text);
        let _ = ferry_pki::cert_alternative_names(&text);
        let _ = ferry_pki::cert_not_after(&text);
        let csr = ferry_pki::csr_key_fingerprint(&text).is_ok();
        let _ = ferry_pki::peer_common_name(b);
        let key = ferry_pki::LiveIdentity::new(&text, &text).is_ok();
        cert || csr || key || text.contains("PRIVATE KEY")
    });
}

#[test]
fn sec_3_fuzz_site_and_host_messages() {
    use ferry_types::site_protocol::*;
    fuzz("site_messages", seeds::site_messages(), |b| {
        [
            serde_json::from_slice::<HostReport>(b).is_ok(),
            serde_json::from_slice::<HostReportAck>(b).is_ok(),
            serde_json::from_slice::<HostJoinRequest>(b).is_ok(),
            serde_json::from_slice::<HostRenewRequest>(b).is_ok(),
            serde_json::from_slice::<SiteReport>(b).is_ok(),
            serde_json::from_slice::<SiteReportAck>(b).is_ok(),
            serde_json::from_slice::<SiteCommandEnvelope>(b).is_ok(),
            serde_json::from_slice::<CommandResult>(b).is_ok(),
            serde_json::from_slice::<SignHostRequest>(b).is_ok(),
        ]
        .iter()
        .any(|ok| *ok)
    });
}

#[test]
fn sec_3_fuzz_rest_api_bodies_and_query_strings() {
    use ferry_types::{alert, auth, capacity, job, mapping, plan, policy, protection, vault};
    fuzz("api_requests", seeds::api_requests(), |b| {
        let json = [
            serde_json::from_slice::<auth::CreateToken>(b).is_ok(),
            serde_json::from_slice::<vault::CreateVault>(b).is_ok(),
            serde_json::from_slice::<protection::EnableProtection>(b).is_ok(),
            serde_json::from_slice::<protection::OperationRequest>(b).is_ok(),
            serde_json::from_slice::<policy::CreatePolicy>(b).is_ok(),
            serde_json::from_slice::<plan::CreatePlan>(b).is_ok(),
            serde_json::from_slice::<plan::UpdatePlan>(b).is_ok(),
            serde_json::from_slice::<plan::PlanOperationRequest>(b).is_ok(),
            serde_json::from_slice::<mapping::CreateContainerMapping>(b).is_ok(),
            serde_json::from_slice::<mapping::CreateNetworkMapping>(b).is_ok(),
            serde_json::from_slice::<mapping::CreateStorageMapping>(b).is_ok(),
            serde_json::from_slice::<alert::AlertSettingsSpec>(b).is_ok(),
            serde_json::from_slice::<capacity::CreateCapacityPlan>(b).is_ok(),
            serde_json::from_slice::<ferry_types::fabric::VmDefinition>(b).is_ok(),
        ];
        let query = serde_urlencoded::from_bytes::<job::JobFilter>(b).is_ok();
        json.iter().any(|ok| *ok) || query
    });
}

#[test]
fn sec_3_fuzz_offline_export_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    fuzz("manifests", seeds::manifests(), |b| {
        std::fs::write(dir.path().join(ferry_repl::offline::MANIFEST), b).expect("write manifest");
        match ferry_repl::offline::ExportManifest::read(dir.path()) {
            Ok(m) => {
                // A manifest that is accepted names its segments inside the export only.
                for s in &m.segments {
                    assert!(!s.file.contains('/') && !s.file.starts_with('.'), "segment {:?} accepted", s.file);
                }
                true
            }
            Err(_) => false,
        }
    });
}

/// Serve `script` once on a Unix socket at `path` (then close), reading whatever the client
/// sends meanwhile.
fn serve_once(path: &Path, script: Vec<u8>) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = s.write_all(&script);
            let mut sink = [0u8; 4096];
            let _ = s.read(&mut sink);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    })
}

/// Serve `script` once on a Unix socket at `path` line by line, as a QMP server talks: its first
/// line at once, then one line for each line the client sends; then close.
fn serve_lines_once(path: &Path, script: Vec<u8>) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            let mut lines = script.split_inclusive(|b| *b == b'\n');
            if let Some(first) = lines.next() {
                let _ = s.write_all(first);
            }
            let mut buf = [0u8; 4096];
            for line in lines {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = s.write_all(line);
                    }
                    _ => break,
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    })
}

#[test]
fn sec_3_fuzz_qmp_replies() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qmp.sock");
    fuzz("qmp", seeds::qmp_transcripts(), |b| {
        let server = serve_lines_once(&path, b.to_vec());
        let ok = rt.block_on(async {
            match ferry_qemu::qmp::Qmp::connect(&path, Duration::from_secs(2)).await {
                Ok(mut q) => {
                    q.set_command_timeout(Duration::from_millis(300));
                    let _ = q.query_status().await;
                    true
                }
                Err(_) => false,
            }
        });
        server.join().expect("server");
        ok
    });
}

#[test]
fn sec_3_fuzz_nbd_replies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nbd.sock");
    fuzz("nbd", seeds::nbd_transcripts(), |b| {
        let server = serve_once(&path, b.to_vec());
        let t = Duration::from_millis(300);
        let ok = match ferry_qemu::nbd::NbdClient::connect(&path, "export", Some("base:allocation"), t) {
            Ok(mut c) => {
                let _ = c.block_status(0, 65_536);
                let mut buf = vec![0u8; 4096];
                let _ = c.read(0, &mut buf);
                true
            }
            Err(_) => false,
        };
        server.join().expect("server");
        // The handshake seed is incomplete; reaching the option replies is what counts here.
        ok || b.starts_with(b"NBDMAGICIHAVEOPT")
    });
}
