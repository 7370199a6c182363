//! The vault CA: persistence, issuing and CSR signing (FAB-2 / SEC-1 support).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;

use ferry_pki::{fingerprint_of_pem, generate_key_and_csr, peer_common_name, verify_ca_pin, Ca, ErrorKind, TlsFiles};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fn der_of(pem: &str) -> Vec<u8> {
    let mut reader = pem.as_bytes();
    let der = rustls_pemfile::certs(&mut reader).next().expect("one cert").expect("valid pem").to_vec();
    der
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn sec_1_ca_persists_and_reloads_with_same_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("pki");
    let ca = Ca::load_or_create(&ca_dir, "Ferry vault CA").expect("create");
    assert_eq!(mode(&ca_dir.join("ca-key.pem")), 0o600);
    assert!(ca_dir.join("ca-cert.pem").is_file());
    let again = Ca::load_or_create(&ca_dir, "ignored").expect("load");
    assert_eq!(ca.fingerprint(), again.fingerprint());
    assert_eq!(ca.cert_pem(), again.cert_pem());
    assert_eq!(fingerprint_of_pem(ca.cert_pem()).expect("fp"), ca.fingerprint());
    assert_eq!(ca.fingerprint().len(), 64);
    assert_eq!(peer_common_name(&der_of(ca.cert_pem())).as_deref(), Some("Ferry vault CA"));
}

#[test]
fn sec_1_ca_refuses_lone_or_mismatched_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Ca::load_or_create(dir.path(), "A").expect("create");
    std::fs::remove_file(dir.path().join("ca-key.pem")).expect("rm");
    let err = Ca::load_or_create(dir.path(), "A").expect_err("lone cert");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // The surviving certificate was not replaced.
    assert_eq!(std::fs::read_to_string(dir.path().join("ca-cert.pem")).expect("read"), a.cert_pem());
    let b = Ca::create("B").expect("create");
    let err = Ca::from_pem(a.cert_pem(), &b.key_pem()).expect_err("mismatch");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn sec_1_server_cert_has_requested_names_and_one_year_validity() {
    let ca = Ca::create("Ferry vault CA").expect("ca");
    let issued = ca
        .issue_server_cert(
            "vault.example",
            &["vault.example".to_string(), "localhost".to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )
        .expect("issue");
    let der = der_of(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    assert_eq!(peer_common_name(&der).as_deref(), Some("vault.example"));
    assert_eq!(cert.issuer(), &X509Certificate::from_der(&der_of(ca.cert_pem())).expect("ca").1.subject().clone());
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 365);
    let san = cert.subject_alternative_name().expect("san ext").expect("san present");
    let names = &san.value.general_names;
    assert!(names.contains(&GeneralName::DNSName("vault.example")));
    assert!(names.contains(&GeneralName::DNSName("localhost")));
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let eku = cert.extended_key_usage().expect("eku").expect("eku present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!issued.key_pem.is_empty());
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
}

#[test]
fn sec_1_csr_subject_is_decided_by_the_ca() {
    let ca = Ca::create("Ferry vault CA").expect("ca");
    let (key_pem, csr_pem) = generate_key_and_csr("i-am-the-vault").expect("csr");
    assert!(key_pem.contains("PRIVATE KEY"));
    let cert_pem = ca.sign_csr(&csr_pem, "host-ny1", &["ny1.lab".to_string()], &[]).expect("sign");
    let der = der_of(&cert_pem);
    assert_eq!(peer_common_name(&der).as_deref(), Some("host-ny1"));
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    let san = cert.subject_alternative_name().expect("ext").expect("san");
    assert_eq!(san.value.general_names, vec![GeneralName::DNSName("ny1.lab")]);
}

#[test]
fn sec_1_a_csr_names_its_key_and_a_tampered_one_is_refused() {
    let (_, csr_a) = generate_key_and_csr("host-a").expect("csr");
    let (_, csr_b) = generate_key_and_csr("host-a").expect("csr");
    let fa = ferry_pki::csr_key_fingerprint(&csr_a).expect("fingerprint");
    assert_eq!(fa.len(), 64);
    assert_eq!(fa, ferry_pki::csr_key_fingerprint(&csr_a).expect("again"), "stable");
    assert_ne!(fa, ferry_pki::csr_key_fingerprint(&csr_b).expect("b"), "one per key");
    // A CSR whose signature does not match its content proves no key.
    let body: String = csr_a.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).expect("base64");
    let n = der.len();
    der[n - 5] ^= 0x40;
    let bad = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
    );
    let err = ferry_pki::csr_key_fingerprint(&bad).expect_err("tampered");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn sec_3_garbage_csr_and_pem_refused() {
    let ca = Ca::create("Ferry vault CA").expect("ca");
    let err = ca.sign_csr("garbage", "h", &[], &[]).expect_err("garbage");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(fingerprint_of_pem("nope").map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    assert_eq!(peer_common_name(b"not der"), None);
    let err = ca.issue_server_cert("", &[], &[]).expect_err("empty cn");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn fab_2_ca_pin_checked() {
    let ca = Ca::create("A").expect("ca");
    let other = Ca::create("B").expect("ca");
    verify_ca_pin(ca.cert_pem(), ca.fingerprint()).expect("pin ok");
    verify_ca_pin(ca.cert_pem(), &ca.fingerprint().to_uppercase()).expect("case-insensitive");
    let err = verify_ca_pin(other.cert_pem(), ca.fingerprint()).expect_err("pin mismatch");
    assert_eq!(err.kind(), ErrorKind::PinMismatch);
}

#[test]
fn sec_1_tls_files_save_and_load() {
    let ca = Ca::create("Ferry vault CA").expect("ca");
    let issued = ca.issue_server_cert("host-ny1", &[], &[]).expect("issue");
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("tls");
    assert!(!TlsFiles::exists(&tls_dir));
    TlsFiles::save(&tls_dir, ca.cert_pem(), &issued.cert_pem, &issued.key_pem).expect("save");
    assert!(TlsFiles::exists(&tls_dir));
    assert_eq!(mode(&tls_dir.join("key.pem")), 0o600);
    let loaded = TlsFiles::load(&tls_dir).expect("load");
    assert_eq!(loaded.ca_cert_pem, ca.cert_pem());
    assert_eq!(loaded.cert_pem, issued.cert_pem);
    assert_eq!(loaded.key_pem, issued.key_pem);
    std::fs::write(tls_dir.join("cert.pem"), "junk").expect("write");
    assert_eq!(TlsFiles::load(&tls_dir).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    assert_eq!(TlsFiles::load(&dir.path().join("missing")).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Io));
}
