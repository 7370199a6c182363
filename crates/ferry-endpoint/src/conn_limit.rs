//! A cap on the connections one client address holds open at once (SEC-3): an endpoint refuses a
//! client's connection beyond `max_connections_per_client` before the TLS handshake, so one
//! client cannot take every connection the server can hold (its requests are limited apart,
//! globally). A connection counts until it is closed.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

type Open = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The acceptor that counts connections per client address (wrapped by the TLS acceptor).
#[derive(Debug, Clone)]
pub struct PerClientLimit {
    max: usize,
    open: Open,
    /// Connections refused since start.
    pub refused: Arc<AtomicU64>,
}

impl PerClientLimit {
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1), open: Arc::default(), refused: Arc::default() }
    }

    /// A slot for a connection of `ip`, if it holds fewer than the maximum.
    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { ip, open: self.open.clone() })
    }
}

/// One counted connection; the count goes down when it is dropped.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    open: Open,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A TCP stream that holds its client's slot while it is open.
#[derive(Debug)]
pub struct Counted {
    inner: TcpStream,
    _slot: Slot,
}

impl<S> axum_server::accept::Accept<TcpStream, S> for PerClientLimit {
    type Stream = Counted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Counted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream.peer_addr().ok().and_then(|a| self.take(a.ip()));
        std::future::ready(match slot {
            Some(slot) => Ok((Counted { inner: stream, _slot: slot }, service)),
            None => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, "too many connections from this client"))
            }
        })
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_slots_per_client_address_are_bounded_and_given_back() {
        let l = PerClientLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = l.take(a).expect("first");
        let _s2 = l.take(a).expect("second");
        assert!(l.take(a).is_none(), "a third connection of the same client");
        let _other = l.take(b).expect("another client is not affected");
        drop(s1);
        assert!(l.take(a).is_some(), "a closed connection gives its slot back");
    }
}
