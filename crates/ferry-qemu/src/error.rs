//! The crate's single error type: a stable [`ErrorKind`], a short context message and an optional
//! boxed source. Messages start with a capital and never repeat the source inline.

use std::fmt;

/// What went wrong, stable enough to match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Local I/O (files, sockets, spawning processes).
    Io,
    /// An operation did not finish in time.
    Timeout,
    /// The peer sent something that is not valid QMP/QGA or not what the protocol promises.
    Protocol,
    /// The QMP or QGA connection is closed (QEMU or the guest agent went away).
    Disconnected,
    /// QEMU answered a QMP command with an error.
    Qmp { class: String, desc: String },
    /// The guest agent answered with an error.
    Qga { class: String, desc: String },
    /// An HMP command (including `qemu-io`) printed an error.
    Hmp,
    /// A block job ended with an error or was cancelled.
    BlockJob,
    /// The VM definition is invalid; nothing was started.
    InvalidSpec,
    /// The QEMU process could not be started, attached to, or is not running.
    Process,
    /// An external tool (`qemu-img`, the guest build script) failed.
    Tool,
    /// Output of a tool or a file could not be parsed.
    Parse,
    /// A command run in the guest failed.
    Guest,
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
        match &self.kind {
            ErrorKind::Qmp { class, desc } | ErrorKind::Qga { class, desc } => {
                write!(f, "{}: {desc} ({class})", self.context)
            }
            _ => f.write_str(&self.context),
        }
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

    /// I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, context, source)
    }

    /// The kind, for matching.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The context message (without the QMP/QGA class and description).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// True for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
}

/// The crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_1_qmp_error_display_carries_class_and_desc() {
        let e = Error::new(
            ErrorKind::Qmp { class: "GenericError".into(), desc: "Bitmap 'bm0' not found".into() },
            "QMP command block-dirty-bitmap-remove failed",
        );
        assert_eq!(
            e.to_string(),
            "QMP command block-dirty-bitmap-remove failed: Bitmap 'bm0' not found (GenericError)"
        );
    }
}
