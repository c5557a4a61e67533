//! Who may see a repository's details and act on it: the operator's web
//! session, the bearer token, and the redacted public summary.
//!
//! The repository's API token (`backoffice token`) is entered once in a
//! form (`POST /r/NAME/login`); the reply sets a session cookie
//! (`HttpOnly; SameSite=Strict; Path=/r/NAME`, expiring after
//! `web-session-hours`). Sessions are kept server-side, in the
//! repository: the `config` row [`SESSIONS_ROW`] holds, per session, the
//! SHA-256 of its id (never the id), its expiry, and a fingerprint of the
//! token row it was opened with. So a copy of the repository file cannot
//! be turned into a session (as it cannot into a token), a new or revoked
//! token ends every session at once, and `serve` and `cgi` (one process per
//! request) share them. At most [`MAX_SESSIONS`] are kept; the oldest go
//! first.
//!
//! Forms that change something carry a CSRF token derived from the session
//! id ([`csrf_for`]), checked on every POST besides the `SameSite=Strict`
//! cookie. Nothing changes state on GET.
//!
//! [`access`] decides what a request may see: [`Access::Full`] with a valid
//! session or bearer token, [`Access::Summary`] when `web-public-summary`
//! is on, else [`Access::None`]. This file knows the store and the app but
//! no route or reply, so the route modules all use it.

use axum::http::{HeaderMap, HeaderValue, header};
use backoffice::db::DbError;
use backoffice::settings::{WEB_PUBLIC_SUMMARY, WEB_SESSION_HOURS, parse_bool};
use backoffice::token::{self, Verdict};
use serde::{Deserialize, Serialize};

use super::clients::bearer;
use super::store::Store;

/// The `config` row holding the sessions (see the module header).
pub const SESSIONS_ROW: &str = "backoffice-web-sessions";

/// Sessions kept per repository.
pub const MAX_SESSIONS: usize = 32;

/// The cookie's name (its path scopes it to one repository).
pub const COOKIE: &str = "bo_session";

/// What a request may see of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Everything, and the actions. `csrf` is the session's CSRF token
    /// (`None` for a bearer token, which needs none: no browser sends it
    /// by itself).
    Full {
        /// The token POST forms must carry.
        csrf: Option<String>,
    },
    /// The redacted summary (`web-public-summary` is on).
    Summary,
    /// Nothing but the sign-in form.
    None,
}

impl Access {
    /// True for [`Access::Full`].
    pub fn full(&self) -> bool {
        matches!(self, Access::Full { .. })
    }
}

/// One kept session.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Kept {
    /// SHA-256 of the session id.
    h: String,
    /// Unix time it ends.
    x: i64,
    /// SHA-256 of the token row it was opened under.
    k: String,
}

fn load(store: &Store) -> Result<Vec<Kept>, DbError> {
    Ok(store
        .db()
        .config_get(SESSIONS_ROW)?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default())
}

fn save(store: &Store, list: &[Kept]) -> Result<(), DbError> {
    store.db().config_set(
        SESSIONS_ROW,
        &serde_json::to_string(list).unwrap_or_default(),
    )
}

/// The fingerprint of the repository's token row, if it has one.
fn token_print(store: &Store) -> Result<Option<String>, DbError> {
    Ok(store
        .db()
        .config_get(token::TOKEN_ROW)?
        .map(|v| token::sha256_hex(&v)))
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The CSRF token of the session with id `sid`: only the holder of the
/// cookie (which no script can read: `HttpOnly`) can compute it.
pub fn csrf_for(sid: &str) -> String {
    token::sha256_hex(&format!("backoffice-csrf\0{sid}"))
}

/// Hours a session lasts (`web-session-hours`, 1–720).
fn session_hours(store: &Store) -> i64 {
    store
        .db()
        .config_get(WEB_SESSION_HOURS)
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|h| (1..=720).contains(h))
        .unwrap_or(12)
}

/// True if `web-public-summary` is on.
pub fn public_summary(store: &Store) -> Result<bool, DbError> {
    Ok(store
        .db()
        .config_get(WEB_PUBLIC_SUMMARY)?
        .and_then(|v| parse_bool(&v))
        .unwrap_or(false))
}

/// The session the request's cookie names, if it is valid now: its CSRF
/// token.
pub fn session(store: &Store, headers: &HeaderMap, now: i64) -> Result<Option<String>, DbError> {
    let Some(sid) = cookie(headers, COOKIE).filter(|s| s.len() == 64) else {
        return Ok(None);
    };
    let Some(print) = token_print(store)? else {
        return Ok(None);
    };
    let h = token::sha256_hex(sid);
    let ok = load(store)?
        .iter()
        .any(|k| token::same(&k.h, &h) && k.x > now && k.k == print);
    Ok(ok.then(|| csrf_for(sid)))
}

/// What this request may see of `store` (see the module header).
pub fn access(store: &Store, headers: &HeaderMap, now: i64) -> Result<Access, DbError> {
    if let Some(presented) = bearer(headers) {
        if token::verify(store.db(), presented)? == Verdict::Valid {
            return Ok(Access::Full { csrf: None });
        }
    }
    if let Some(csrf) = session(store, headers, now)? {
        return Ok(Access::Full { csrf: Some(csrf) });
    }
    Ok(if public_summary(store)? {
        Access::Summary
    } else {
        Access::None
    })
}

/// The outcome of a sign-in.
#[derive(Debug)]
pub enum Login {
    /// A new session: its id and how long it lasts, seconds.
    Opened {
        /// The session id (the cookie's value).
        sid: String,
        /// Seconds until it ends.
        max_age: i64,
    },
    /// The token is not the repository's.
    Invalid,
    /// The repository has no token: nobody can sign in.
    NoToken,
}

/// Opens a session for whoever presents the repository's token. Writes
/// the repository (the caller holds the write gate).
pub fn login(store: &Store, presented: &str, now: i64) -> Result<Login, DbError> {
    match token::verify(store.db(), presented.trim())? {
        Verdict::Valid => {}
        Verdict::Invalid => return Ok(Login::Invalid),
        Verdict::NoToken => return Ok(Login::NoToken),
    }
    let Some(print) = token_print(store)? else {
        return Ok(Login::NoToken);
    };
    let sid = token::random()?;
    let max_age = session_hours(store).saturating_mul(3600);
    let mut list: Vec<Kept> = load(store)?
        .into_iter()
        .filter(|k| k.x > now && k.k == print)
        .collect();
    list.push(Kept {
        h: token::sha256_hex(&sid),
        x: now.saturating_add(max_age),
        k: print,
    });
    if list.len() > MAX_SESSIONS {
        list.sort_by_key(|k| k.x);
        let extra = list.len() - MAX_SESSIONS;
        list.drain(..extra);
    }
    save(store, &list)?;
    Ok(Login::Opened { sid, max_age })
}

/// Ends the request's session, if it has one.
pub fn logout(store: &Store, headers: &HeaderMap) -> Result<(), DbError> {
    let Some(sid) = cookie(headers, COOKIE) else {
        return Ok(());
    };
    let h = token::sha256_hex(sid);
    let list = load(store)?;
    let kept: Vec<Kept> = list.iter().filter(|k| k.h != h).cloned().collect();
    if kept.len() != list.len() {
        save(store, &kept)?;
    }
    Ok(())
}

/// True if the request arrived over HTTPS (a proxy's `X-Forwarded-Proto`,
/// or CGI's `HTTPS`, which `cgi` passes on as that header), so the cookie
/// also gets `Secure`.
fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value for session `sid` of repository `name`; an empty
/// `sid` with `max_age` 0 clears it.
pub fn set_cookie(name: &str, sid: &str, max_age: i64, headers: &HeaderMap) -> HeaderValue {
    let secure = if https(headers) { "; Secure" } else { "" };
    let v = format!(
        "{COOKIE}={sid}; Path=/r/{name}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    // The name passed the strict alphabet and sid is hex: always valid.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}
