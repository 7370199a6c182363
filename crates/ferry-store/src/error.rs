//! The store's error: a kind, what was being done, and the database error underneath.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database could not be opened or migrated.
    Open,
    /// A query failed.
    Query,
    /// A stored document could not be decoded.
    Corrupt,
    /// A unique name is already taken.
    Conflict,
    /// The caller's version is stale.
    VersionMismatch,
    /// The row does not exist.
    NotFound,
    /// A setting or argument is out of range.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct Error {
    pub kind: ErrorKind,
    pub context: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self { kind, context: context.into(), source: None }
    }

    pub(crate) fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, context)
    }

    pub(crate) fn query(context: impl Into<String>, e: sqlx::Error) -> Self {
        let kind = match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => ErrorKind::Conflict,
            _ => ErrorKind::Query,
        };
        Self { kind, context: context.into(), source: Some(Box::new(e)) }
    }

    pub(crate) fn corrupt(context: impl Into<String>, e: serde_json::Error) -> Self {
        Self { kind: ErrorKind::Corrupt, context: context.into(), source: Some(Box::new(e)) }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
