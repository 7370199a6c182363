//! Ferry's public-key infrastructure: the vault's private CA, agent TLS files,
//! rustls configurations and registration keys.
//!
//! # Trust model
//!
//! * Every vault server owns **one private CA** ([`Ca`]), persisted as
//!   `ca-cert.pem` / `ca-key.pem` (key mode 0600) in the vault's data directory.
//! * The CA signs the vault's own HTTPS server certificate, each site
//!   manager's certificate and each host agent's certificate. Agents generate
//!   their key locally ([`generate_key_and_csr`]) and send only a CSR; the CA
//!   decides the subject and SANs ([`Ca::sign_csr`]), never the CSR.
//! * Every TLS endpoint trusts **only** that CA ([`tls::client_config`],
//!   [`tls::server_config`]) — never the system roots — so a certificate from
//!   another vault's CA is refused in both directions (SEC-1). Host-to-host
//!   replication uses mutual TLS with [`ClientAuth::Required`]; the peer's
//!   identity is its certificate common name ([`peer_common_name`]), which the
//!   host then checks against the pairs the vault authorised.
//! * A site manager first meets the vault through a **registration key**
//!   ([`RegistrationKey`], FAB-2). The key carries the vault's URLs and the
//!   SHA-256 fingerprint of the CA certificate, so the site pins the vault
//!   ([`verify_ca_pin`]) before sending anything; the key's HMAC signature and
//!   one-time secret let the vault recognise a key it issued within the last
//!   five days.
//! * Agents keep their identity in a fixed directory layout ([`TlsFiles`]):
//!   `ca-cert.pem`, `cert.pem`, `key.pem` (mode 0600).
//!
//! All rustls configurations are built on the `ring` provider explicitly; this
//! crate never installs or relies on a process-wide default provider.

mod ca;
mod error;
mod files;
mod hmac;
mod live;
mod pem;
pub mod regkey;
pub mod tls;

pub use ca::{csr_key_fingerprint, generate_key_and_csr, Ca, IssuedCert, CA_CERT_FILE, CA_KEY_FILE};
pub use error::{Error, ErrorKind, Result};
pub use files::{TlsFiles, CERT_FILE, KEY_FILE};
pub use hmac::constant_time_eq;
pub use live::{LiveIdentity, Revocations};
pub use pem::{
    ensure_private_dir, fingerprint_of_der, fingerprint_of_pem, read_private_text, verify_ca_pin, write_private_file,
};
pub use regkey::RegistrationKey;
pub use tls::{
    cert_alternative_names, cert_common_name, cert_not_after, client_config, named_peer_client_config,
    named_server_client_config, named_server_client_config_live, named_server_client_config_revoking, peer_common_name,
    server_config, server_config_live, ClientAuth, PeerName,
};
