//! Connection hygiene shared by Ferry's HTTPS endpoints (the vault's API and portal, the site
//! manager's host endpoint, the host agent's API), SEC-3.
//!
//! Each endpoint bounds what one client can hold before and while it is served:
//! - [`PerClientLimit`]: connections one client address may hold open at once, refused before
//!   the TLS handshake beyond the cap (a closed connection gives its place back);
//! - [`HEADER_READ_TIMEOUT`]: a request's headers, and the wait for the next request on a
//!   kept-alive connection, must arrive within this time (slow and idle clients are closed);
//!   the TLS handshake has axum-server's own limit (10 s).
//!
//! Request body sizes and concurrency are bounded per endpoint, next to its routes.

pub mod conn_limit;

use std::sync::Arc;
use std::time::Duration;

pub use conn_limit::PerClientLimit;

/// An HTTPS endpoint on `listener` as Ferry serves them all: TLS with `tls`, at most
/// `max_per_client` connections per client address (refused before the handshake), headers —
/// and the wait for the next request on a kept-alive connection — within `header_read_timeout`,
/// the TLS handshake within axum-server's 10 s.
pub fn tls_server(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    max_per_client: usize,
    header_read_timeout: Duration,
) -> axum_server::Server<axum_server::tls_rustls::RustlsAcceptor<PerClientLimit>> {
    let mut server = axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls))
        .map(|tls| tls.acceptor(PerClientLimit::new(max_per_client)));
    server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    server
}

/// Headers within this time, also while a connection idles between requests.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connections one client address may hold open by default: enough for a site manager's or
/// a host's concurrent calls, far below what exhausts a process's descriptors.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
