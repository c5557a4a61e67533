//! Self-service sign-up: double opt-in by email, as Fossil's alerts do it.
//!
//! # The model
//!
//! A visitor asks for mail at an address ([`request`]). The address gets a
//! subscriber row that is **not verified** (or keeps the one it has), and a
//! confirmation message is queued in the outbox like any other message, so
//! it is delivered, retried and journalled by the same worker. Only
//! following the link in that message verifies the address ([`confirm`]);
//! until then the address gets no alert and no digest (the existing
//! `verified` flag, [`Subscriber::active`]).
//!
//! **The link** is `EMAIL-URL/confirm/CODE/TOKEN`: `CODE` is the
//! subscriber's secret code (the one of its unsubscribe links) and `TOKEN`
//! is `EXPIRES-MAC`, an HMAC-SHA-256 under the repository's own random
//! signing key (`bo_signup_key`, made on first use, never shown) over the
//! code and the expiry time. So a link cannot be forged or extended, and it
//! stops working after `email-signup-link-lifetime` hours; no pending state
//! is kept per request.
//!
//! **Asking again reveals nothing.** Whether the address was new, waiting
//! for confirmation, active or unsubscribed, [`request`] does the same
//! thing visible to the asker: it queues a fresh link to that address. The
//! kinds and mode asked for replace the stored ones only while the address
//! is not active — an active subscriber's choices are changed only by
//! someone holding its code (the `/alerts/CODE` page), never by a stranger
//! who knows the address.
//!
//! **Rate limits** ([`take_rate`]): sign-ups per client address and per
//! repository per hour, counted in a small table (`bo_signup_rate`) for
//! front ends that live for one request (CGI); a long-running server
//! counts in memory with the same limits. The table holds only the
//! current hour's rows, at most one per repository plus one per client that
//! was let through, so it stays small whatever a flood sends.
//!
//! **Unconfirmed addresses do not pile up**: each sign-up first removes
//! the addresses that were sent a confirmation, never confirmed it, and
//! were not asked for again within the link's lifetime
//! ([`purge_unconfirmed`]).
//!
//! The same confirmation is sent by `backoffice subscriber add --confirm`.
//! SQLite repositories only: the web pages and `--confirm` refuse a
//! PostgreSQL schema with a message saying so.

use hmac::{Hmac, KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::Sha256;

use super::config::{self, EmailConfig, Method};
use super::subscribers::{self, Changes, New, Subscriber, SubscriberError};
use super::{address, install, outbox};

/// `email-signup`: the web pages on or off.
pub const SIGNUP: &str = "email-signup";
/// `email-signup-link-lifetime`: hours a confirmation link works.
pub const LINK_LIFETIME: &str = "email-signup-link-lifetime";
/// `email-signup-per-client`: sign-ups per client address per hour.
pub const PER_CLIENT: &str = "email-signup-per-client";
/// `email-signup-per-repository`: sign-ups per repository per hour.
pub const PER_REPOSITORY: &str = "email-signup-per-repository";

/// The outbox `kind` of a confirmation message.
pub const CONFIRM_KIND: &str = "confirm";

/// The rate-limit window, seconds.
pub const RATE_WINDOW: i64 = 3600;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS bo_signup_key(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  secret TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bo_signup_rate(
  bucket TEXT PRIMARY KEY,
  window INTEGER NOT NULL,
  n INTEGER NOT NULL
);
";

/// Why a sign-up or a confirmation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// The address, kinds or name are not acceptable.
    #[error(transparent)]
    Subscriber(#[from] SubscriberError),
    /// The repository cannot send the confirmation.
    #[error("sign-up needs email to be set up: {0}")]
    NoEmail(String),
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The sign-up settings of one repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `email-signup`.
    pub enabled: bool,
    /// `email-signup-link-lifetime`, in seconds.
    pub link_lifetime: i64,
    /// `email-signup-per-client`.
    pub per_client: i64,
    /// `email-signup-per-repository`.
    pub per_repository: i64,
}

impl Settings {
    /// Reads them (a bad stored value reads as its default).
    pub fn load(conn: &Connection) -> Settings {
        let enabled = backoffice::repo::config_get(conn, SIGNUP)
            .ok()
            .flatten()
            .and_then(|v| backoffice::settings::parse_bool(&v))
            .unwrap_or(false);
        let int = |name| backoffice::settings::int(conn, config::SETTINGS, name);
        Settings {
            enabled,
            link_lifetime: int(LINK_LIFETIME).saturating_mul(3600),
            per_client: int(PER_CLIENT),
            per_repository: int(PER_REPOSITORY),
        }
    }
}

/// The repository's signing key (made on first use: takes the write lock
/// then, so call it inside a write).
pub fn key(conn: &Connection) -> Result<String, rusqlite::Error> {
    conn.execute_batch(TABLES)?;
    let k: Option<String> = conn
        .query_row("SELECT secret FROM bo_signup_key WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(k) = k {
        return Ok(k);
    }
    let k = format!("{}{}", outbox::new_token(conn)?, outbox::new_token(conn)?);
    conn.execute(
        "INSERT OR IGNORE INTO bo_signup_key(id, secret) VALUES (1, ?1)",
        [&k],
    )?;
    conn.query_row("SELECT secret FROM bo_signup_key WHERE id = 1", [], |r| {
        r.get(0)
    })
}

/// HMAC-SHA-256 of `parts` (NUL-separated) under `key`, in hex.
pub fn mac(key: &str, parts: &[&str]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            m.update(b"\0");
        }
        m.update(p.as_bytes());
    }
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two strings in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The confirmation token for `code`, valid until `expires` (Unix seconds).
pub fn link_token(key: &str, code: &str, expires: i64) -> String {
    let e = expires.to_string();
    format!("{e}-{}", mac(key, &["confirm", code, &e]))
}

/// What a confirmation token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Genuine and in time.
    Valid,
    /// Genuine, but past its expiry.
    Expired,
    /// Not made by this repository for this code.
    Bad,
}

/// Checks a confirmation token for `code` at time `now`.
pub fn check_link(key: &str, code: &str, token: &str, now: i64) -> Link {
    let Some((e, m)) = token.split_once('-') else {
        return Link::Bad;
    };
    let Ok(expires) = e.parse::<i64>() else {
        return Link::Bad;
    };
    if !same(&mac(key, &["confirm", code, e]), m) {
        return Link::Bad;
    }
    if now > expires {
        Link::Expired
    } else {
        Link::Valid
    }
}

/// The confirmation link for a subscriber, from `email-url`.
pub fn link(cfg: &EmailConfig, code: &str, token: &str) -> String {
    format!("{}/confirm/{code}/{token}", cfg.url.trim_end_matches('/'))
}

/// The email settings, if they can send a confirmation (a method other
/// than `off`, and `email-url` for the link).
pub fn sending_config(conn: &Connection) -> Result<EmailConfig, SignupError> {
    let cfg = EmailConfig::load(conn).map_err(|p| SignupError::NoEmail(p.join("; ")))?;
    if cfg.method == Method::Off {
        return Err(SignupError::NoEmail("email-send-method is off".into()));
    }
    if cfg.url.is_empty() {
        return Err(SignupError::NoEmail("email-url is not set".into()));
    }
    Ok(cfg)
}

/// Checks what a visitor typed (the address, the kinds, the name) without
/// touching the repository.
pub fn validate(new: &New) -> Result<(), SubscriberError> {
    let addr = new.address.trim();
    address::check(addr).map_err(|e| SubscriberError::Address(addr.to_owned(), e))?;
    subscribers::parse_kinds(&new.kinds)?;
    subscribers::check_name(&new.name)
}

/// Asks for mail at `new.address`: the subscriber row (new and unverified,
/// or the existing one), and a confirmation message queued to the address.
/// The same whether or not the address was known (see the module header).
/// Runs in one write transaction of its own.
pub fn request(conn: &Connection, new: &New, now: i64) -> Result<Subscriber, SignupError> {
    validate(new)?;
    let addr = new.address.trim().to_owned();
    let kinds = subscribers::parse_kinds(&new.kinds)?;
    let cfg = sending_config(conn)?;
    let lifetime = Settings::load(conn).link_lifetime;
    backoffice::repo::immediate(conn, || {
        install(conn)?;
        purge_unconfirmed(conn, now.saturating_sub(lifetime))?;
        let s = match subscribers::find(conn, &addr)? {
            None => subscribers::add(
                conn,
                &New {
                    address: addr.clone(),
                    name: new.name.clone(),
                    kinds: kinds.clone(),
                    digest: new.digest,
                    verified: false,
                },
            )?,
            // Not receiving mail: what was asked for now is what the link
            // will confirm.
            Some(s) if !s.active() => subscribers::set(
                conn,
                &s.id.to_string(),
                &Changes {
                    kinds: Some(kinds.clone()),
                    digest: Some(new.digest),
                    ..Changes::default()
                },
            )?,
            Some(s) => s,
        };
        queue_confirmation(conn, &cfg, &s, lifetime, now)?;
        Ok(s)
    })
}

/// An administrator's `subscriber add --confirm`: adds the address
/// unverified (refused if it is already a subscriber) and queues the same
/// confirmation message a sign-up gets, in one write. Returns the
/// subscriber and the link's lifetime in seconds.
pub fn add_and_confirm(
    conn: &Connection,
    new: &New,
    now: i64,
) -> Result<(Subscriber, i64), SignupError> {
    validate(new)?;
    let cfg = sending_config(conn)?;
    let lifetime = Settings::load(conn).link_lifetime;
    backoffice::repo::immediate(conn, || {
        let s = subscribers::add(
            conn,
            &New {
                verified: false,
                ..new.clone()
            },
        )?;
        queue_confirmation(conn, &cfg, &s, lifetime, now)?;
        Ok((s, lifetime))
    })
}

/// Removes the addresses that were sent a confirmation, never confirmed,
/// and have not been asked for since `before` (so every link they were
/// sent has expired): strangers' sign-ups do not pile up. Subscribers an
/// administrator added unverified without `--confirm` are kept. Returns
/// how many were removed.
pub fn purge_unconfirmed(conn: &Connection, before: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM bo_subscriber
         WHERE NOT verified AND NOT donotcall AND mtime < ?1
           AND subscriberid IN (SELECT subscriberid FROM bo_outbox WHERE kind = ?2)",
        params![before, CONFIRM_KIND],
    )
}

/// Queues the confirmation message for `s` (inside the caller's write).
pub fn queue_confirmation(
    conn: &Connection,
    cfg: &EmailConfig,
    s: &Subscriber,
    lifetime: i64,
    now: i64,
) -> Result<i64, SignupError> {
    let key = key(conn)?;
    let expires = now.saturating_add(lifetime);
    let url = link(cfg, &s.code, &link_token(&key, &s.code, expires));
    let project = project_of(cfg);
    let hours = lifetime / 3600;
    let what = if s.digest {
        "one daily digest"
    } else {
        "an email for each alert"
    };
    let kinds = if s.kinds == "*" {
        "all kinds of event".to_owned()
    } else {
        format!("events of kind {}", s.kinds.replace(',', ", "))
    };
    let body = format!(
        "Someone, probably you, asked for email from {project} at this address:\n\
         {what}, for {kinds}.\n\n\
         To confirm, open this link within {hours} hour{}:\n\n   {url}\n\n\
         If it was not you, ignore this message: nothing more is sent unless\n\
         the link is followed.\n",
        if hours == 1 { "" } else { "s" }
    );
    let id = outbox::queue(
        conn,
        &outbox::New {
            subscriberid: Some(s.id),
            address: &s.address,
            kind: CONFIRM_KIND,
            subject: "Please confirm your subscription",
            body: &body,
            code: None,
        },
        now,
    )?;
    Ok(id)
}

/// The name shown in the confirmation: `email-subname` without its
/// brackets, else the host of `email-url`.
fn project_of(cfg: &EmailConfig) -> String {
    let sub = cfg
        .subname
        .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace());
    if !sub.is_empty() {
        return sub.to_owned();
    }
    cfg.url.clone()
}

/// Follows a confirmation link: the subscriber holding `code` is verified
/// and subscribed again (if it had left). `Ok(None)` for an unknown code;
/// the token must have been checked ([`check_link`]) first.
pub fn confirm(conn: &Connection, code: &str) -> Result<Option<Subscriber>, SignupError> {
    backoffice::repo::immediate(conn, || {
        let Some(s) = subscribers::find_by_code(conn, code)? else {
            return Ok(None);
        };
        let s = subscribers::set(
            conn,
            &s.id.to_string(),
            &Changes {
                verified: Some(true),
                donotcall: Some(false),
                ..Changes::default()
            },
        )?;
        Ok(Some(s))
    })
}

/// Counts one sign-up against `buckets` (each a name and its hourly limit)
/// in `bo_signup_rate`, all or nothing: `false` (and nothing counted) if
/// any bucket is full. Rows of past hours are dropped on the way, so the
/// table holds the current hour only. Takes the write lock.
pub fn take_rate(conn: &Connection, buckets: &[(&str, i64)], now: i64) -> rusqlite::Result<bool> {
    let window = now.div_euclid(RATE_WINDOW);
    backoffice::repo::immediate(conn, || {
        conn.execute_batch(TABLES)?;
        conn.execute("DELETE FROM bo_signup_rate WHERE window <> ?1", [window])?;
        for (bucket, limit) in buckets {
            let n: i64 = conn
                .query_row(
                    "SELECT n FROM bo_signup_rate WHERE bucket = ?1",
                    [bucket],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if n >= *limit {
                return Ok(false);
            }
        }
        for (bucket, _) in buckets {
            conn.execute(
                "INSERT INTO bo_signup_rate(bucket, window, n) VALUES (?1, ?2, 1)
                 ON CONFLICT(bucket) DO UPDATE SET n = n + 1",
                params![bucket, window],
            )?;
        }
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        for (k, v) in [
            ("email-send-method", "stdout"),
            ("email-self", "bo@example.org"),
            ("email-url", "https://example.org/r/app"),
            ("email-subname", "[app]"),
        ] {
            backoffice::repo::config_set(&conn, k, v).unwrap();
        }
        conn
    }

    #[test]
    fn links_are_signed_and_expire() {
        let k = "key";
        let t = link_token(k, "c0de", 1000);
        assert_eq!(check_link(k, "c0de", &t, 999), Link::Valid);
        assert_eq!(check_link(k, "c0de", &t, 1001), Link::Expired);
        assert_eq!(check_link(k, "other", &t, 999), Link::Bad);
        assert_eq!(check_link("other key", "c0de", &t, 999), Link::Bad);
        // A later expiry with the old MAC is refused.
        let forged = t.replacen("1000", "9000", 1);
        assert_eq!(check_link(k, "c0de", &forged, 999), Link::Bad);
        assert_eq!(check_link(k, "c0de", "nonsense", 999), Link::Bad);
    }

    #[test]
    fn a_request_queues_a_link_and_confirming_verifies() {
        let conn = repo();
        let s = request(
            &conn,
            &New {
                address: "ann@example.org".into(),
                kinds: "wiki".into(),
                ..New::default()
            },
            100,
        )
        .unwrap();
        assert!(!s.verified);
        let body: String = conn
            .query_row(
                "SELECT body FROM bo_outbox WHERE kind = 'confirm' AND address = 'ann@example.org'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let at = body.find("https://example.org/r/app/confirm/").unwrap();
        let url = body[at..].split_whitespace().next().unwrap();
        let mut parts = url.rsplit('/');
        let token = parts.next().unwrap();
        let code = parts.next().unwrap();
        assert_eq!(code, s.code);
        let k = key(&conn).unwrap();
        assert_eq!(check_link(&k, code, token, 200), Link::Valid);
        assert_eq!(
            check_link(&k, code, token, 100 + 24 * 3600 + 1),
            Link::Expired
        );
        let s = confirm(&conn, code).unwrap().unwrap();
        assert!(s.active());
        // Asking again for an active address changes nothing but queues a link.
        let again = request(
            &conn,
            &New {
                address: "ANN@example.org".into(),
                kinds: "ticket".into(),
                digest: true,
                ..New::default()
            },
            300,
        )
        .unwrap();
        assert!(again.active() && again.kinds == "wiki" && !again.digest);
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM bo_outbox WHERE kind = 'confirm'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn unconfirmed_sign_ups_are_purged_once_their_links_expire() {
        let conn = repo();
        let ask = |a: &str, at: i64| {
            request(
                &conn,
                &New {
                    address: a.into(),
                    ..New::default()
                },
                at,
            )
            .unwrap()
        };
        // Rows carry the real clock's times; the requests are made later.
        let t0 = backoffice::clock::now();
        ask("old@example.org", t0);
        let confirmed = ask("kept@example.org", t0);
        confirm(&conn, &confirmed.code).unwrap();
        subscribers::add(
            &conn,
            &New {
                address: "admin-added@example.org".into(),
                ..New::default()
            },
        )
        .unwrap();
        let day = 24 * 3600;
        // Within the link's lifetime nothing goes.
        ask("new@example.org", t0 + day - 10);
        assert!(
            subscribers::find(&conn, "old@example.org")
                .unwrap()
                .is_some()
        );
        // Past it, the never-confirmed sign-up goes; the rest stay.
        ask("newer@example.org", t0 + day + 10);
        let left: Vec<String> = subscribers::list(&conn)
            .unwrap()
            .into_iter()
            .map(|s| s.address)
            .collect();
        // (new@ was written at the real clock's time too, so it has expired
        // along with old@.)
        assert_eq!(
            left,
            [
                "admin-added@example.org",
                "kept@example.org",
                "newer@example.org"
            ]
        );
    }

    #[test]
    fn no_email_no_signup() {
        let conn = repo();
        backoffice::repo::config_set(&conn, "email-send-method", "off").unwrap();
        let e = request(
            &conn,
            &New {
                address: "ann@example.org".into(),
                ..New::default()
            },
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("email-send-method is off"), "{e}");
    }

    #[test]
    fn rates_count_all_or_nothing_within_the_hour() {
        let conn = repo();
        let b = [("repo", 3), ("repo/1.2.3.4", 2)];
        assert!(take_rate(&conn, &b, 10).unwrap());
        assert!(take_rate(&conn, &b, 11).unwrap());
        assert!(!take_rate(&conn, &b, 12).unwrap());
        // The refused one counted nowhere: another client still fits once.
        assert!(take_rate(&conn, &[("repo", 3), ("repo/5.6.7.8", 2)], 13).unwrap());
        assert!(!take_rate(&conn, &[("repo", 3), ("repo/9.9.9.9", 2)], 14).unwrap());
        // The next hour starts afresh, and the old rows are gone.
        assert!(take_rate(&conn, &b, RATE_WINDOW + 1).unwrap());
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM bo_signup_rate", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }
}
