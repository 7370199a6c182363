//! FAB-2: registration key issue and verification.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ferry_pki::regkey::default_validity;
use ferry_pki::{ErrorKind, RegistrationKey};
use uuid::Uuid;

const SIGNING: &[u8] = b"vault-signing-secret-0123456789abcdef";
const FP: &str = "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().expect("valid date")
}

fn issue(vault: Uuid) -> (RegistrationKey, String) {
    RegistrationKey::issue(vault, "Contoso DR vault", &["https://vault.example:8443".to_string()], FP, SIGNING, t0())
        .expect("issue")
}

fn verify_kind(text: &str, vault: Uuid, now: DateTime<Utc>) -> Option<ErrorKind> {
    RegistrationKey::verify(text, vault, SIGNING, now, default_validity()).err().map(|e| e.kind())
}

/// Replaces one character of the string field `field` with another character
/// of the same class, keeping the JSON valid.
fn flip_field(text: &str, field: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).expect("json");
    let s = v[field].as_str().expect("string field").to_string();
    let mut chars: Vec<char> = s.chars().collect();
    let i = chars.len() / 2;
    chars[i] = match chars[i] {
        c @ '0'..='8' => ((c as u8) + 1) as char,
        '9' => '0',
        'a' => 'b',
        'A' => 'B',
        _ => 'a',
    };
    v[field] = serde_json::Value::String(chars.into_iter().collect());
    serde_json::to_string_pretty(&v).expect("json")
}

#[test]
fn fab_2_issued_key_verifies_and_round_trips() {
    let vault = Uuid::new_v4();
    let (key, text) = issue(vault);
    let got = RegistrationKey::verify(&text, vault, SIGNING, t0(), default_validity()).expect("valid key");
    assert_eq!(got.key_id(), key.key_id());
    assert_eq!(got.vault_id(), vault);
    assert_eq!(got.vault_name(), "Contoso DR vault");
    assert_eq!(got.vault_urls(), ["https://vault.example:8443".to_string()]);
    assert_eq!(got.ca_fingerprint(), FP);
    assert_eq!(got.issued_at(), t0());
    assert_eq!(got.secret_hash(), key.secret_hash());
    assert_eq!(got.secret_hash().len(), 64);
    assert_eq!(got.version(), 1);
    let parsed = RegistrationKey::parse(&text).expect("site side parse");
    assert_eq!(parsed.ca_fingerprint(), FP);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["version"], 1);
}

#[test]
fn fab_2_two_keys_have_distinct_ids_and_secrets() {
    let vault = Uuid::new_v4();
    let (a, _) = issue(vault);
    let (b, _) = issue(vault);
    assert_ne!(a.key_id(), b.key_id());
    assert_ne!(a.secret_hash(), b.secret_hash());
}

#[test]
fn fab_2_key_valid_at_exactly_five_days() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    assert_eq!(verify_kind(&text, vault, t0() + Duration::days(5)), None);
}

#[test]
fn fab_2_expired_key_refused() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    let now = t0() + Duration::days(5) + Duration::seconds(1);
    let err = RegistrationKey::verify(&text, vault, SIGNING, now, default_validity()).expect_err("expired");
    assert_eq!(err.kind(), ErrorKind::Expired);
    assert!(err.to_string().starts_with("Registration key"), "{err}");
}

#[test]
fn fab_2_key_from_the_future_refused_as_malformed() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    // Within tolerated skew.
    assert_eq!(verify_kind(&text, vault, t0() - Duration::minutes(5)), None);
    assert_eq!(
        verify_kind(&text, vault, t0() - Duration::minutes(5) - Duration::seconds(1)),
        Some(ErrorKind::Malformed)
    );
}

#[test]
fn fab_2_forged_vault_name_refused() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    let forged = flip_field(&text, "vault_name");
    assert_ne!(forged, text);
    assert_eq!(verify_kind(&forged, vault, t0()), Some(ErrorKind::Forged));
}

#[test]
fn fab_2_forged_issued_at_refused() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    let forged = flip_field(&text, "issued_at");
    assert_eq!(verify_kind(&forged, vault, t0()), Some(ErrorKind::Forged));
    // A plausible, later issue time to extend validity is forged too.
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["issued_at"] = serde_json::Value::String("2025-03-20T12:00:00Z".into());
    let extended = v.to_string();
    assert_eq!(verify_kind(&extended, vault, t0() + Duration::days(19)), Some(ErrorKind::Forged));
}

#[test]
fn fab_2_forged_secret_refused() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    let forged = flip_field(&text, "secret");
    assert_eq!(verify_kind(&forged, vault, t0()), Some(ErrorKind::Forged));
}

#[test]
fn fab_2_forged_other_fields_refused() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    for field in ["ca_fingerprint", "key_id", "signature"] {
        let forged = flip_field(&text, field);
        assert_eq!(verify_kind(&forged, vault, t0()), Some(ErrorKind::Forged), "{field}");
    }
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["vault_urls"][0] = serde_json::Value::String("https://evil.example".into());
    assert_eq!(verify_kind(&v.to_string(), vault, t0()), Some(ErrorKind::Forged));
}

#[test]
fn fab_2_key_signed_with_other_secret_refused_as_forged() {
    let vault = Uuid::new_v4();
    let (_, text) = RegistrationKey::issue(
        vault,
        "Contoso DR vault",
        &["https://vault.example:8443".to_string()],
        FP,
        b"some-other-signing-secret-xxxxxxxx",
        t0(),
    )
    .expect("issue");
    assert_eq!(verify_kind(&text, vault, t0()), Some(ErrorKind::Forged));
}

#[test]
fn fab_2_other_vault_key_refused() {
    let (_, text) = issue(Uuid::new_v4());
    let err =
        RegistrationKey::verify(&text, Uuid::new_v4(), SIGNING, t0(), default_validity()).expect_err("other vault");
    assert_eq!(err.kind(), ErrorKind::OtherVault);
    assert!(err.to_string().contains("Contoso DR vault"), "{err}");
    // Another vault's key is reported as such even if it is also expired.
    let (_, text) = issue(Uuid::new_v4());
    assert_eq!(verify_kind(&text, Uuid::new_v4(), t0() + Duration::days(30)), Some(ErrorKind::OtherVault));
}

#[test]
fn fab_2_malformed_key_refused() {
    let vault = Uuid::new_v4();
    let (_, text) = issue(vault);
    let cases = [
        String::new(),
        "not json".to_string(),
        "{}".to_string(),
        "[1,2,3]".to_string(),
        text[..text.len() / 2].to_string(),
        text.replace("\"version\": 1", "\"version\": 2"),
        text.replace("\"version\": 1", "\"version\": \"1\""),
        text.replace("\"vault_name\"", "\"vault_nom\""),
        "x".repeat(100_000),
    ];
    for case in &cases {
        assert_eq!(verify_kind(case, vault, t0()), Some(ErrorKind::Malformed), "{case:.60}");
        assert_eq!(RegistrationKey::parse(case).map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Malformed));
    }
}

#[test]
fn fab_2_issue_rejects_bad_input() {
    let vault = Uuid::new_v4();
    let urls = ["https://v".to_string()];
    let bad = [
        RegistrationKey::issue(vault, "v", &urls, "abc", SIGNING, t0()),
        RegistrationKey::issue(vault, "v", &urls, FP, b"short", t0()),
        RegistrationKey::issue(vault, "", &urls, FP, SIGNING, t0()),
        RegistrationKey::issue(vault, "v", &[], FP, SIGNING, t0()),
    ];
    for r in bad {
        assert_eq!(r.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    }
}
