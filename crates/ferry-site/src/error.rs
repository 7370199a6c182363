//! The site manager's error.

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("Registration failed: {0}")]
    Registration(String),
    #[error("This site is not registered; run `ferry site register` with a registration key first")]
    NotRegistered,
    #[error("Host {0} is not in this site's definition")]
    UnknownHost(String),
    #[error(transparent)]
    Client(#[from] ferry_client::Error),
    #[error(transparent)]
    Pki(#[from] ferry_pki::Error),
    #[error("Site state I/O failed")]
    Io(#[from] std::io::Error),
}
