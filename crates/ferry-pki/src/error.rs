//! The crate's single error type.

use std::fmt;

/// What went wrong, coarsely; callers branch on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Reading or writing a file failed.
    Io,
    /// A PEM, certificate, key or CSR given to us could not be parsed or used.
    InvalidInput,
    /// Key generation or signing failed.
    Crypto,
    /// A rustls configuration could not be built.
    Tls,
    /// A registration key is not parseable, has an unknown version or a bad clock.
    Malformed,
    /// A registration key's signature does not match its content.
    Forged,
    /// A registration key belongs to another vault.
    OtherVault,
    /// A registration key is older than its validity period.
    Expired,
    /// A CA certificate does not match the pinned fingerprint.
    PinMismatch,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::InvalidInput => "Invalid input",
            ErrorKind::Crypto => "Cryptographic failure",
            ErrorKind::Tls => "TLS configuration error",
            ErrorKind::Malformed => "Malformed registration key",
            ErrorKind::Forged => "Forged registration key",
            ErrorKind::OtherVault => "Registration key of another vault",
            ErrorKind::Expired => "Expired registration key",
            ErrorKind::PinMismatch => "CA fingerprint mismatch",
        };
        f.write_str(s)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Error of every fallible function in this crate: a kind, a human message
/// (starting with a capital) and optionally the underlying cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Source>,
}

impl Error {
    /// An error without an underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// An error wrapping an underlying cause.
    pub fn with_source(kind: ErrorKind, message: impl Into<String>, source: impl Into<Source>) -> Self {
        Self { kind, message: message.into(), source: Some(source.into()) }
    }

    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the source chain).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Crate result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an error into [`Error`] with a kind and a context message.
pub(crate) trait Context<T> {
    fn ctx(self, kind: ErrorKind, message: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn ctx(self, kind: ErrorKind, message: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::with_source(kind, message(), e))
    }
}
