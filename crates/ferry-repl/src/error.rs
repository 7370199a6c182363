//! The crate's single error type: a stable [`ErrorKind`], a short context message and an optional
//! boxed source. Messages start with a capital and never repeat the source inline.

use std::fmt;

/// What went wrong, stable enough to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Local file or socket I/O.
    Io,
    /// The peer sent a malformed, oversized or unexpected frame (SEC-3).
    Protocol,
    /// An extent's payload does not match its checksum.
    Checksum,
    /// TLS setup or handshake failed.
    Tls,
    /// The peer is not authorised (certificate CN or pair not in the allowlist, SEC-1).
    Unauthorized,
    /// The peer answered with an `Error` frame.
    Remote,
    /// The connection closed or timed out.
    Disconnected,
    /// A QEMU, QMP, guest-agent or qemu-img operation failed.
    Qemu,
    /// Change tracking is lost or unusable (missing or inconsistent bitmap): a resync is needed.
    ResyncRequired,
    /// The replica store is inconsistent or a request does not fit its state.
    Store,
    /// A recovery point or VM does not exist.
    NotFound,
    /// The operation conflicts with another one (a point in use, a cycle in progress).
    Busy,
    /// A guest write raced the start of a cycle on a disk taken as unchanged; the cycle was
    /// folded into the next one, which can start at once.
    Raced,
    /// Invalid configuration or argument.
    Invalid,
    /// The replica's storage is full (ENOSPC on the replica host).
    NoSpace,
}

/// The crate error: kind + context + optional source.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl Error {
    /// A new error without a source.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self { kind, context: context.into(), source: None }
    }

    /// A new error caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self { kind, context: context.into(), source: Some(source.into()) }
    }

    /// Local I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, context, source)
    }

    /// A QEMU-side failure with context.
    pub fn qemu(context: impl Into<String>, source: ferry_qemu::Error) -> Self {
        Self::with_source(ErrorKind::Qemu, context, source)
    }

    /// A malformed frame or protocol violation.
    pub fn protocol(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, context)
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context message.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Whether a file system was full somewhere in the chain (ENOSPC).
    pub fn is_no_space(&self) -> bool {
        if self.kind == ErrorKind::NoSpace {
            return true;
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(28) || io.kind() == std::io::ErrorKind::StorageFull {
                    return true;
                }
            }
            if let Some(inner) = e.downcast_ref::<Error>() {
                if inner.is_no_space() {
                    return true;
                }
            }
            cur = e.source();
        }
        // qemu-img and QEMU report a full file system in their own words.
        self.chain().contains("No space left on device")
    }

    /// The whole chain `context: source: source…`, for logs.
    pub fn chain(&self) -> String {
        let mut s = self.context.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

/// Attach context to foreign results.
pub(crate) trait Context<T> {
    fn ctx(self, kind: ErrorKind, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn ctx(self, kind: ErrorKind, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::with_source(kind, f(), e))
    }
}

/// The crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
