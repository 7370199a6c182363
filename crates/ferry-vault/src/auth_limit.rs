//! Failed sign-ins and registrations are limited per client address (SEC-3): after
//! `max_failures` different wrong secrets within a minute, that address's attempts are refused
//! with 429 until its oldest failure is a minute old. Refused attempts are not checked at all,
//! so a guessing client learns nothing more; a legitimate client at the same address waits as
//! long. The same wrong secret again counts once: a client that keeps retrying a revoked
//! credential (a removed site manager) is not a guesser and locks nobody out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::error::ApiFailure;

/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond, the quietest are forgotten first.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug)]
pub struct FailedAttempts {
    max_failures: usize,
    /// Per address: when each different wrong secret (by its hash) last failed, oldest first.
    by_address: Mutex<HashMap<IpAddr, VecDeque<(Instant, u64)>>>,
}

impl FailedAttempts {
    pub fn new(max_failures: usize) -> Self {
        Self { max_failures: max_failures.max(1), by_address: Mutex::default() }
    }

    /// Refuse an attempt from `from` while it is over the limit.
    pub fn check(&self, from: Option<IpAddr>) -> Result<(), ApiFailure> {
        let Some(ip) = from else { return Ok(()) };
        let now = Instant::now();
        let Ok(mut map) = self.by_address.lock() else { return Ok(()) };
        let Some(q) = map.get_mut(&ip) else { return Ok(()) };
        prune(q, now);
        if q.len() < self.max_failures {
            return Ok(());
        }
        let wait = q.front().map(|(t, _)| WINDOW.saturating_sub(now.duration_since(*t))).unwrap_or_default();
        Err(ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyFailedAttempts",
            format!("{} failed attempts from {ip} within a minute; try again in {} s", q.len(), wait.as_secs().max(1)),
        ))
    }

    /// Count a failed attempt from `from` with `secret`.
    pub fn failed(&self, from: Option<IpAddr>, secret: &str) {
        let Some(ip) = from else { return };
        let tag = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            secret.hash(&mut h);
            h.finish()
        };
        let now = Instant::now();
        let Ok(mut map) = self.by_address.lock() else { return };
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, q| {
                prune(q, now);
                !q.is_empty()
            });
            if map.len() >= MAX_ADDRESSES {
                if let Some(quietest) = map.iter().min_by_key(|(_, q)| q.len()).map(|(ip, _)| *ip) {
                    map.remove(&quietest);
                }
            }
        }
        let q = map.entry(ip).or_default();
        prune(q, now);
        q.retain(|(_, t)| *t != tag);
        q.push_back((now, tag));
    }
}

fn prune(q: &mut VecDeque<(Instant, u64)>, now: Instant) {
    while q.front().is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_3_an_address_over_the_limit_is_refused_others_are_not() {
        let limit = FailedAttempts::new(3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        // One wrong secret retried is one failure.
        for _ in 0..10 {
            limit.failed(Some(a), "revoked");
        }
        assert!(limit.check(Some(a)).is_ok());
        for guess in ["g1", "g2"] {
            assert!(limit.check(Some(a)).is_ok());
            limit.failed(Some(a), guess);
        }
        let e = limit.check(Some(a)).expect_err("over the limit");
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.body.message.contains("3 failed attempts from 10.0.0.1"), "{}", e.body.message);
        assert!(limit.check(Some(b)).is_ok(), "another address is not limited");
        assert!(limit.check(None).is_ok(), "an unknown address is not limited");
    }
}
