//! Who sent a request, and what is counted per client: the client's
//! address ([`ClientIp`], put on each request by the front end), the
//! bearer token it presents ([`bearer`]), and a
//! bounded in-memory table of counters per hour ([`RateTable`]) for the
//! sign-up limits of a long-running server. It uses no other file of the
//! web front.
//!
//! The table is bounded in entries ([`RATE_ENTRIES`]): when it is full,
//! the counters of past hours go first, and if it is still full the
//! request is refused — a flood from many addresses meets the limit, it
//! never grows the server's memory. (A front end that lives for one
//! request, CGI, counts in the repository instead.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::http::{HeaderMap, header};

/// The bearer token of a request (`Authorization: Bearer TOKEN`), if it
/// sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
}

/// The address of the client that sent a request, as its front end saw it
/// (`serve`: the TCP peer; `cgi`: `REMOTE_ADDR`). Behind a reverse proxy
/// every client has the proxy's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// The address as text, or `unknown`.
    pub fn label(&self) -> String {
        self.0
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "unknown".into())
    }
}

/// Most counters a [`RateTable`] holds.
pub const RATE_ENTRIES: usize = 10_000;

/// Counters per key per hour, in memory, bounded.
#[derive(Debug)]
pub struct RateTable {
    rows: Mutex<HashMap<String, (i64, i64)>>,
    cap: usize,
}

impl Default for RateTable {
    fn default() -> RateTable {
        RateTable::with_cap(RATE_ENTRIES)
    }
}

impl RateTable {
    /// A table of at most `cap` counters.
    pub fn with_cap(cap: usize) -> RateTable {
        RateTable {
            rows: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Counts one against every bucket (a key and its limit per window of
    /// `window` seconds), all or nothing: `false`, counting nothing, if
    /// any is at its limit or the table is full.
    pub fn take(&self, buckets: &[(String, i64)], now: i64, window: i64) -> bool {
        let w = now.div_euclid(window.max(1));
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let missing = buckets
            .iter()
            .filter(|(k, _)| rows.get(k).is_none_or(|(rw, _)| *rw != w))
            .count();
        if rows.len().saturating_add(missing) > self.cap {
            rows.retain(|_, (rw, _)| *rw == w);
            if rows.len().saturating_add(missing) > self.cap {
                return false;
            }
        }
        let full = buckets
            .iter()
            .any(|(k, limit)| rows.get(k).is_some_and(|(rw, n)| *rw == w && *n >= *limit));
        if full {
            return false;
        }
        for (k, _) in buckets {
            let e = rows.entry(k.clone()).or_insert((w, 0));
            if e.0 != w {
                *e = (w, 0);
            }
            e.1 = e.1.saturating_add(1);
        }
        true
    }

    /// Counters held now.
    pub fn len(&self) -> usize {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True if it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
