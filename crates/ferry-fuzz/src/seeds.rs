//! Valid inputs of each parser, made with Ferry's own writers (so they follow the code), that
//! the targets mutate.

use bytes::Bytes;
use ferry_repl::protocol::{Direction, ErrorCode, Message};

/// Replication frames (length prefix included) of every simple message kind.
pub fn frames() -> Vec<Vec<u8>> {
    let msgs = [
        Message::Hello { version: 1, vm_id: "vm-1".into(), pair_id: "pair-1".into(), direction: Direction::Forward },
        Message::EndCycle { cycle: 7, extent_count: 3, total_bytes: 196_608 },
        Message::Ack { cycle: 7, durable: true },
        Message::ResumeFrom { cycle: 7, next_extent: 2 },
        Message::Error { code: ErrorCode::Unauthorized, message: "no".into() },
        Message::HashRequest { disk: 0, block_size: 65_536, first: 0, count: 4 },
        Message::HashReply { disk: 0, first: 0, hashes: vec![[7u8; 32]; 3] },
    ];
    msgs.iter().filter_map(|m| m.encode().ok()).collect()
}

/// A stream of several frames back to back.
pub fn frame_streams() -> Vec<Vec<u8>> {
    vec![frames().concat()]
}

/// qcow2 layers written by Ferry's replica writer: data, zeroes, with and without a backing.
pub fn qcow2_layers() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(dir) = tempfile::tempdir() else { return out };
    for (i, backing) in [None, Some("base.qcow2")].into_iter().enumerate() {
        let p = dir.path().join(format!("l{i}.qcow2"));
        let Ok(mut w) = ferry_repl::qcow2::Qcow2Writer::create(&p, 4 << 20, backing.is_some()) else { continue };
        let _ = w.write_data(0, &Bytes::from(vec![0xabu8; 65_536]));
        let _ = w.write_data(1 << 20, &Bytes::from(vec![0x11u8; 131_072]));
        let _ = w.write_zero(2 << 20, 65_536);
        if w.finish(backing).is_ok() {
            if let Ok(b) = std::fs::read(&p) {
                out.push(b);
            }
        }
    }
    out
}

/// A registration key file as the vault issues it.
pub fn registration_keys() -> Vec<Vec<u8>> {
    let issued = ferry_pki::regkey::RegistrationKey::issue(
        uuid::Uuid::nil(),
        "ferry",
        &["https://vault.example:8443".to_string()],
        &"ab".repeat(32),
        b"a signing secret of the vault",
        chrono::Utc::now(),
    );
    issued.map(|(_, text)| vec![text.into_bytes()]).unwrap_or_default()
}

/// A CA certificate, a leaf certificate, a private key and a CSR.
pub fn pems() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(ca) = ferry_pki::Ca::create("Ferry fuzz CA") {
        out.push(ca.cert_pem().as_bytes().to_vec());
        if let Ok(c) = ca.issue_server_cert("host-a", &["a.example".into()], &[]) {
            out.push(c.cert_pem.into_bytes());
            out.push(c.key_pem.into_bytes());
        }
    }
    if let Ok((_, csr)) = ferry_pki::generate_key_and_csr("host-a") {
        out.push(csr.into_bytes());
    }
    out
}

/// Site↔vault and site↔host messages as JSON.
pub fn site_messages() -> Vec<Vec<u8>> {
    use ferry_types::site_protocol::*;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut push = |v: Result<Vec<u8>, serde_json::Error>| {
        if let Ok(b) = v {
            out.push(b);
        }
    };
    push(serde_json::to_vec(&HostReportAck::default()));
    push(serde_json::to_vec(&SiteReportAck::default()));
    push(serde_json::to_vec(&HostJoinRequest {
        host_name: "ny1".into(),
        join_token: "fj_x".into(),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        address: "127.0.0.1:7444".into(),
    }));
    push(serde_json::to_vec(&HostRenewRequest { csr_pem: "x".into() }));
    out.push(
        br#"{"host_name":"ny1","address":"127.0.0.1:1","replication_address":"127.0.0.1:2","agent_version":"0.1.0","qemu_version":"7.2","storage_locations":[],"vms":[],"replication":[]}"#
            .to_vec(),
    );
    out
}

/// REST API request bodies (JSON) and query strings.
pub fn api_requests() -> Vec<Vec<u8>> {
    [
        r#"{"name": "ci", "role": "Reader", "expires_in_days": 30}"#,
        r#"{"name": "Contoso-DR"}"#,
        r#"{"source_site": "VMM-NewYork", "vms": ["db1", "web1"]}"#,
        r#"{"recovery_point": "latestProcessed", "shutdown_source": true}"#,
        r#"{"name": "gold", "host_version": "1", "copy_frequency_secs": 30, "recovery_point_retention_hours": 24}"#,
        "status=Failed&object_type=ProtectedItem",
        "object_id=rp-1&status=Succeeded",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// An offline export manifest.
pub fn manifests() -> Vec<Vec<u8>> {
    let m = serde_json::json!({
        "format": ferry_repl::offline::FORMAT, "vm_id": "vm-1", "cycle": 1, "created_at": "2026-01-01T00:00:00Z",
        "disks": [{"target": "vda", "size": 1048576}], "compressed": true, "extent_count": 2,
        "covered_bytes": 1048576, "data_bytes": 65536,
        "segments": [{"file": "segment-000000.bin", "first_extent": 0, "extents": 2, "bytes": 70000, "blake3": "00"}],
        "complete": true
    });
    serde_json::to_vec(&m).map(|b| vec![b]).unwrap_or_default()
}

/// What a QMP server sends, a line for each command: greeting, the capabilities answer, a
/// command's answer with an event before it.
pub fn qmp_transcripts() -> Vec<Vec<u8>> {
    vec![concat!(
        r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#,
        "\r\n",
        r#"{"return": {}, "id": 1}"#,
        "\r\n",
        r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#,
        r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}"#,
        "\r\n"
    )
    .as_bytes()
    .to_vec()]
}

/// The start of an NBD server's newstyle handshake.
pub fn nbd_transcripts() -> Vec<Vec<u8>> {
    let mut b = b"NBDMAGIC".to_vec();
    b.extend_from_slice(b"IHAVEOPT");
    b.extend_from_slice(&3u16.to_be_bytes());
    // An option reply header (magic, option, type ACK, length 0).
    b.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
    b.extend_from_slice(&7u32.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    vec![b]
}
