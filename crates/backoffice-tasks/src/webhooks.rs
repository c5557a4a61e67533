//! Webhooks: every new event POSTed, signed, in order, to each endpoint.
//!
//! # The model
//!
//! An endpoint (`backoffice webhook add URL --secret S`) is a row of
//! `bo_webhook` (what it is: URL, secret, kinds, live or dead, deliveries
//! made) and an entry in the engine's retry ledger ([`backoffice::ledger`],
//! task `webhooks`, target the endpoint's id) with where it stands: its
//! **cursor** (the last event id it has handled), failures in a row, next
//! attempt and last error.
//! In each worker run the [`Webhooks`] task takes every active endpoint whose
//! next attempt has come and sends it the events after its cursor that match
//! its kinds, in event order, one HTTP POST each (the cursor also moves past
//! events of other kinds). A 2xx answer advances the cursor. Each answered
//! delivery is appended at once to a progress log beside the repository
//! ([`Progress`]) and the cursor is committed every [`COMMIT_EVERY`]
//! deliveries; the next run folds the log into the cursors first, so a
//! killed worker re-sends at most the one delivery per endpoint that was in
//! flight, with the same `X-Backoffice-Delivery` id, which a receiver can
//! use to drop duplicates.
//!
//! Every write a run makes to record progress (a commit of cursors, a
//! failure or a dead mark, the folding of the progress log) checks, in its
//! own transaction, that the lease still carries the run's term
//! ([`backoffice::writes::fenced`]: one point read of the lease row per
//! commit). A worker whose lease was taken over (paused past its
//! heartbeat, in another container sharing the file) records nothing and
//! its run stops with the fencing error; the deliveries it made since its
//! last commit are in the progress log, which the next holder folds in (a
//! line is an answered delivery, in order), or are sent again with the
//! same delivery id: at least once.
//!
//! Anything else — another status, a time-out, a refused connection — stops
//! that endpoint for this run (so its order is kept), counts one failure and
//! sets its next attempt by the ledger's policy
//! ([`backoffice::ledger::Backoff`]: 1 minute, 2, 4, … capped at 6 hours,
//! with jitter). After `webhook-max-attempts` failures in a row the
//! endpoint is *dead*, with its reason in `status`, until `backoffice webhook
//! retry ID`.
//!
//! Endpoints are served in parallel, on at most [`THREADS`] scoped threads,
//! each with its own connection to the repository and its own HTTP agent
//! (keep-alive within an endpoint), so a slow or hanging endpoint delays no
//! other. While one is still in flight, a thread that is free looks again
//! for endpoints with events published since their turn and serves them
//! (for at most twice `webhook-timeout`, at least 5 s, after the run began),
//! so a hanging endpoint does not hold back what is published meanwhile
//! either. No write lock is ever held while a request is in flight: a
//! thread writes only to commit its cursor, in a short transaction.
//!
//! # The request
//!
//! `POST URL` with `Content-Type: application/json` and the body
//!
//! ```json
//! {"delivery":"3f9a0c1b2d4e-2-17-9c41d07be2a5f316","eventid":17,"kind":"wiki","title":"Front page edited",
//!  "body":"","url":"https://example.org/wiki/Front","author":"ann","time":1795261729}
//! ```
//!
//! and the headers `X-Backoffice-Delivery` (the same id, stable per endpoint
//! and event, never reused for another event: see [`delivery_id`]), `X-Backoffice-Event` (the kind), `X-Backoffice-Timestamp`
//! (Unix seconds at sending) and `X-Backoffice-Signature: sha256=HEX`, the
//! HMAC-SHA256 of `TIMESTAMP.BODY` keyed with the endpoint's secret
//! ([`signature`]). A receiver recomputes it, compares in constant time, and
//! refuses timestamps more than a few minutes old (replays).
//!
//! Every request also carries the [Standard Webhooks](standard) headers
//! `webhook-id` (the delivery id), `webhook-timestamp` and
//! `webhook-signature: v1,BASE64`, so a receiver can verify it with an
//! off-the-shelf library instead (see [`standard`] for why both, and the key
//! of a `whsec_` secret).
//!
//! # On PostgreSQL
//!
//! The same task, and the `webhook` command, run on a PostgreSQL repository
//! (`backoffice::pg`). The endpoints are the schema's `bo_webhook` (bigint
//! ids), created by the first `webhook add` (the statements in
//! `PG_SCHEMA`, under the schema's webhooks lock); where each stands is
//! the schema's `bo_ledger`, as on SQLite; `due`, `status`, `events_done`
//! and the command read them with portable SQL ([`Db`]). Secrets are
//! handled as on SQLite: stored, never printed back.
//!
//! Events are read in the positions (`eventid`) a worker stamps in commit
//! order before its tasks run (the statement of
//! [`backoffice::events::after`], with the event's uid), so an endpoint
//! never skips an event that committed late. The delivery id has the same
//! shape as on SQLite, `SALT-ENDPOINT-POSITION-UID`: the first `webhook add`
//! gives `bo_event.uid` (part of every schema) a default, a random 16-hex
//! uid minted for every event inserted from then on, whoever inserts it;
//! an older event has `r` and its row id instead. Positions are never
//! reused in a schema, and the uid keeps a copy of the schema from reusing
//! an id for another event. A new endpoint starts after the newest event
//! with a position: one published just before the `add` and not yet given
//! its position is delivered to it too (nothing is ever skipped).
//!
//! There is no progress log (a worker may be on any host): each answered
//! delivery is committed at once, in one statement fenced on the run's term
//! (`pg_commit`); a failure is recorded in a [`Db::write`] fenced the same
//! way. A worker whose lease was taken over (paused past its heartbeat)
//! records nothing more and stops at its next step: the delivery it was
//! making when it paused goes out again from the next holder, with the same
//! delivery id (at least once, at most one duplicate per endpoint). Each
//! delivery thread has its own session on the schema. The writers that read
//! before they write take turns on a per-schema advisory lock (`lock`),
//! as `BEGIN IMMEDIATE` makes them on SQLite. Only the upgrade of a 0.1.0
//! repository (below) is SQLite's: no PostgreSQL schema ever had one.
//!
//! # Upgrading
//!
//! Release 0.1.0 kept the cursor, failures, next attempt and last error as
//! columns of `bo_webhook`. [`install`], which every writing path calls
//! first, moves them into the ledger and drops the columns, in one
//! `BEGIN IMMEDIATE` transaction (so two processes upgrading at once do it
//! once); until then the reading paths read the old columns, so `list`,
//! `status` and `due` tell the truth about a repository not yet upgraded.

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backoffice::settings::{Def, Kind};
use hmac::{Hmac, KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::Sha256;

use backoffice::db::{DbError, Row};
use backoffice::ledger::{self, Backoff};
use backoffice::{Context, Db, Due, Gauge, Task, TaskError, TaskStatus};

pub mod standard;

/// The task's name, and its name in the retry ledger.
const TASK: &str = "webhooks";

/// The endpoints' definitions. Where each stands (cursor, failures, next
/// attempt, last error) is in the retry ledger, `bo_ledger`; the events are
/// the engine's `bo_event`. `state` stays here: `dead` is the operator's
/// business (`webhook retry`), not a retry time.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bo_webhook(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  url TEXT NOT NULL,
  secret TEXT NOT NULL,
  kinds TEXT NOT NULL DEFAULT '*',
  state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dead')),
  delivered INTEGER NOT NULL DEFAULT 0,
  salt TEXT NOT NULL,
  ctime INTEGER NOT NULL
);
";

/// `webhook-timeout`
pub const TIMEOUT: &str = "webhook-timeout";
/// `webhook-max-attempts`
pub const MAX_ATTEMPTS: &str = "webhook-max-attempts";
/// `webhook-follow-redirects`
pub const FOLLOW_REDIRECTS: &str = "webhook-follow-redirects";

/// The settings this task reads (see [`backoffice::settings`]).
pub const SETTINGS: &[Def] = &[
    Def {
        name: TIMEOUT,
        kind: Kind::Int { min: 1, max: 300 },
        default: "10",
        help: "Seconds a webhook endpoint has to connect and answer before the attempt counts as failed.",
        secret: false,
    },
    Def {
        name: MAX_ATTEMPTS,
        kind: Kind::Int { min: 1, max: 100 },
        default: "10",
        help: "Failed attempts in a row before a webhook endpoint is dead (retries back off from 1 minute to 6 hours).",
        secret: false,
    },
    Def {
        name: FOLLOW_REDIRECTS,
        kind: Kind::Bool,
        default: "off",
        help: "Follow 3xx answers from webhook endpoints (at most 5); off: a redirect is a failed attempt.",
        secret: false,
    },
];

/// Cursor commits happen after this many deliveries (and at the end).
pub const COMMIT_EVERY: usize = 50;
/// Events read per query.
const READ_BATCH: i64 = 200;
/// Most endpoints served at once.
pub const THREADS: usize = 8;
/// Shortest secret accepted.
pub(crate) const MIN_SECRET: usize = 16;
/// Most bytes of a response body read (and of it, kept in an error).
const MAX_RESPONSE: u64 = 64 * 1024;

/// Why a webhook change was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an absolute http or https URL.
    #[error("bad webhook URL {0:?}: {1}")]
    Url(String, String),
    /// The secret is too short or not one line.
    #[error(
        "the secret must be at least {MIN_SECRET} characters on one line (e.g. `openssl rand -hex 32`)"
    )]
    Secret,
    /// A `whsec_` secret that is not the specification's form (see
    /// [`standard::check`]).
    #[error("{0}")]
    StandardSecret(String),
    /// A kind in the list is malformed.
    #[error("{0}")]
    Kinds(String),
    /// No such endpoint.
    #[error("no webhook {0}")]
    NotFound(i64),
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store refused (on PostgreSQL: the server's message).
    #[error("{0}")]
    Db(#[from] DbError),
}

/// One endpoint. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Webhook {
    /// Row id.
    pub id: i64,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The HMAC key. Never serialised.
    #[serde(skip)]
    pub secret: String,
    /// Kinds wanted (`*` or a comma list).
    pub kinds: String,
    /// The last event id handled.
    pub cursor: i64,
    /// Failed attempts in a row.
    pub failures: i64,
    /// No attempt before this Unix time.
    pub next_attempt: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// `active` or `dead`.
    pub state: String,
    /// Deliveries made so far.
    pub delivered: i64,
    /// Makes delivery ids unique across repositories.
    pub salt: String,
    /// Created.
    pub ctime: i64,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &mask(&self.secret))
            .field("kinds", &self.kinds)
            .field("cursor", &self.cursor)
            .field("failures", &self.failures)
            .field("next_attempt", &self.next_attempt)
            .field("last_error", &self.last_error)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A secret as it may be shown: its first 4 characters, then `****`.
pub fn mask(secret: &str) -> String {
    let head: String = if secret.chars().count() >= MIN_SECRET {
        secret.chars().take(4).collect()
    } else {
        String::new()
    };
    format!("{head}****")
}

/// Checks a webhook URL: absolute, `http` or `https`, with a host, one line.
pub(crate) fn check_url(url: &str) -> Result<(), WebhookError> {
    let bad = |why: &str| Err(WebhookError::Url(url.to_owned(), why.to_owned()));
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("no spaces or control characters");
    }
    let uri: ureq::http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return bad(&e.to_string()),
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return bad("only http:// and https:// URLs"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return bad("no host");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return bad("no credentials in the URL; receivers check the signature instead");
    }
    Ok(())
}

/// `sha256=HEX`: HMAC-SHA256 of `TIMESTAMP.BODY` keyed with `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Creates the tables (ours, the ledger and the event table) if they are
/// missing, gives events their uid ([`backoffice::events::ensure_uid`]),
/// and moves the retry state of a repository of release 0.1.0 into the
/// ledger (see [Upgrading](self#upgrading)).
///
/// Run it inline when the caller already holds a transaction; otherwise
/// the changes of shape take one of their own.
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    backoffice::events::install(conn)?;
    ledger::install(conn)?;
    conn.execute_batch(SCHEMA)?;
    backoffice::due::watch(conn, "bo_webhook")?;
    migrate(conn)
}

/// The columns release 0.1.0 had in `bo_webhook` and the ledger now holds.
const OLD_COLUMNS: [&str; 4] = ["cursor", "failures", "next_attempt", "last_error"];

/// True if `bo_webhook` still has the retry columns of release 0.1.0.
/// A lookup in the connection's schema, no statement.
fn old_shape(conn: &Connection) -> rusqlite::Result<bool> {
    conn.column_exists(None, "bo_webhook", "next_attempt")
}

/// Gives `bo_event` its `uid` column, moves the retry state out of
/// `bo_webhook` into the ledger and drops its columns; nothing if already
/// done. Idempotent, and safe against other processes doing the same at
/// once: the shape is checked again under the write lock, and the copy and
/// the drops commit together or not at all.
///
/// Adding the `uid` column is done under the same lock because two
/// processes that both saw it missing would both add it, and the second
/// would fail (`duplicate column name: uid`, found by
/// `processes_upgrading_a_0_1_0_repository_at_once_lose_nothing`).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    if !old_shape(conn)? && conn.column_exists(None, "bo_event", "uid")? {
        // At most the uid trigger and missing uids: idempotent statements,
        // safe without the lock.
        return backoffice::events::ensure_uid(conn);
    }
    backoffice::repo::in_write(conn, || {
        // Another process may have changed the shape between the check
        // above and the lock: reading the schema table verifies the schema
        // cookie, so a stale copy of the schema is reloaded before it is
        // asked again.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })?;
        backoffice::events::ensure_uid(conn)?;
        if !old_shape(conn)? {
            return Ok(());
        }
        ledger::install(conn)?;
        let copied = conn.execute(
            "INSERT OR IGNORE INTO bo_ledger(task, target, cursor, failures, next_attempt, last_error)
             SELECT ?1, CAST(id AS TEXT), cursor, failures, next_attempt, last_error FROM bo_webhook",
            [TASK],
        )?;
        for c in OLD_COLUMNS {
            conn.execute_batch(&format!("ALTER TABLE bo_webhook DROP COLUMN {c}"))?;
        }
        tracing::info!(
            endpoints = copied,
            "webhook retry state moved to the retry ledger"
        );
        Ok(())
    })
}

/// A new endpoint.
#[derive(Clone, Default)]
pub struct New {
    /// Where to POST.
    pub url: String,
    /// The HMAC key.
    pub secret: String,
    /// Kinds wanted, comma-separated, or `*`.
    pub kinds: String,
    /// Deliver every event already published, not only new ones.
    pub from_start: bool,
}

/// Endpoints with where they stand (no ledger entry: at the start, never
/// failed). Conditions go after it as `WHERE ...` on `w.` and `l.`.
const SELECT: &str = "SELECT w.id, w.url, w.secret, w.kinds, coalesce(l.cursor, 0),
  coalesce(l.failures, 0), coalesce(l.next_attempt, 0), l.last_error, w.state, w.delivered,
  w.salt, w.ctime
FROM bo_webhook w LEFT JOIN bo_ledger l ON l.task = 'webhooks' AND l.target = CAST(w.id AS TEXT)";

/// The same from a repository not yet upgraded (see [`old_shape`]).
const SELECT_OLD: &str = "SELECT w.id, w.url, w.secret, w.kinds, w.cursor, w.failures,
  w.next_attempt, w.last_error, w.state, w.delivered, w.salt, w.ctime
FROM bo_webhook w";

/// Runs `read` with the endpoint query for this repository's shape
/// ([`SELECT`] or [`SELECT_OLD`]).
///
/// The shape is read from the connection's copy of the schema, which may
/// be stale: another process may have upgraded the repository since it was
/// loaded. Then the old query fails (SQLite reloads the schema on the way),
/// and `read` is run once more with the new one.
fn read_endpoints<T>(
    conn: &Connection,
    read: impl Fn(&'static str) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let old = old_shape(conn)?;
    match read(if old { SELECT_OLD } else { SELECT }) {
        Err(_) if old && !old_shape(conn)? => read(SELECT),
        r => r,
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: r.get(0)?,
        url: r.get(1)?,
        secret: r.get(2)?,
        kinds: r.get(3)?,
        cursor: r.get(4)?,
        failures: r.get(5)?,
        next_attempt: r.get(6)?,
        last_error: r.get(7)?,
        state: r.get(8)?,
        delivered: r.get(9)?,
        salt: r.get(10)?,
        ctime: r.get(11)?,
    })
}

/// The ledger's target name of endpoint `id`.
fn target(id: i64) -> String {
    id.to_string()
}

/// Endpoint `id`'s ledger entry, or a fresh one (cursor 0, never failed).
fn entry(conn: &Connection, id: i64) -> rusqlite::Result<ledger::Entry> {
    Ok(
        ledger::get(conn, TASK, &target(id))?.unwrap_or_else(|| ledger::Entry {
            task: TASK.to_owned(),
            target: target(id),
            ..Default::default()
        }),
    )
}

/// Adds an endpoint. It gets the events published from now on (all of
/// them with `from_start`).
pub fn add<'a>(db: impl Into<Db<'a>>, new: &New) -> Result<Webhook, WebhookError> {
    let db = db.into();
    check_url(&new.url)?;
    if new.secret.chars().count() < MIN_SECRET || new.secret.chars().any(char::is_control) {
        return Err(WebhookError::Secret);
    }
    standard::check(&new.secret).map_err(WebhookError::StandardSecret)?;
    let kinds = crate::notify::subscribers::parse_kinds(&new.kinds)
        .map_err(|e| WebhookError::Kinds(e.to_string()))?;
    let Some(conn) = db.sqlite() else {
        return pg_add(db, new, &kinds);
    };
    install(conn)?;
    // The endpoint and its ledger entry are created together, the cursor
    // read under the same lock (no event slips in between).
    let id = backoffice::repo::in_write(conn, || -> rusqlite::Result<i64> {
        let cursor: i64 = if new.from_start {
            0
        } else {
            conn.query_row("SELECT coalesce(max(eventid), 0) FROM bo_event", [], |r| {
                r.get(0)
            })?
        };
        conn.execute(
            "INSERT INTO bo_webhook(url, secret, kinds, salt, ctime)
             VALUES (?1, ?2, ?3, lower(hex(randomblob(6))), ?4)",
            params![new.url, new.secret, kinds, backoffice::clock::now()],
        )?;
        let id = conn.last_insert_rowid();
        // `put`, not `start`: an entry left under this id is not this
        // endpoint's.
        ledger::put(
            conn,
            &ledger::Entry {
                task: TASK.to_owned(),
                target: target(id),
                cursor,
                ..Default::default()
            },
        )?;
        Ok(id)
    })?;
    get(conn, id)
}

/// One endpoint.
pub fn get<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Webhook, WebhookError> {
    let db = db.into();
    let Some(conn) = db.sqlite() else {
        return pg_get(db, id);
    };
    if !conn.table_exists(None, "bo_webhook")? {
        return Err(WebhookError::NotFound(id));
    }
    read_endpoints(conn, |select| {
        conn.query_row(&format!("{select} WHERE w.id = ?1"), [id], row)
            .optional()
    })?
    .ok_or(WebhookError::NotFound(id))
}

/// Every endpoint, by id.
pub fn list<'a>(db: impl Into<Db<'a>>) -> Result<Vec<Webhook>, WebhookError> {
    let db = db.into();
    let Some(conn) = db.sqlite() else {
        return pg_list(db);
    };
    if !conn.table_exists(None, "bo_webhook")? {
        return Ok(Vec::new());
    }
    Ok(read_endpoints(conn, |select| {
        conn.prepare(&format!("{select} ORDER BY w.id"))?
            .query_map([], row)?
            .collect()
    })?)
}

/// Removes an endpoint, and its ledger entry.
pub fn remove<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Webhook, WebhookError> {
    let db = db.into();
    let Some(conn) = db.sqlite() else {
        return pg_remove(db, id);
    };
    let w = get(conn, id)?;
    install(conn)?;
    backoffice::repo::in_write(conn, || -> rusqlite::Result<()> {
        conn.execute("DELETE FROM bo_webhook WHERE id = ?1", [id])?;
        ledger::remove(conn, TASK, &target(id))
    })?;
    Ok(w)
}

/// Makes an endpoint (dead or backing off) active and due now, failures
/// reset; its cursor is kept, so nothing is skipped.
pub fn retry<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Webhook, WebhookError> {
    let db = db.into();
    let Some(conn) = db.sqlite() else {
        return pg_retry(db, id);
    };
    get(conn, id)?;
    install(conn)?;
    backoffice::repo::in_write(conn, || -> rusqlite::Result<()> {
        conn.execute("UPDATE bo_webhook SET state = 'active' WHERE id = ?1", [id])?;
        let e = entry(conn, id)?;
        ledger::put(
            conn,
            &ledger::Entry {
                failures: 0,
                next_attempt: 0,
                last_error: None,
                ..e
            },
        )
    })?;
    get(conn, id)
}

/// Pauses an endpoint: nothing is delivered to it until [`retry`] (`webhook
/// resume`); its cursor is kept, so it gets every event it missed.
pub fn pause<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Webhook, WebhookError> {
    let db = db.into();
    get(db, id)?;
    match db.sqlite() {
        Some(conn) => {
            install(conn)?;
            backoffice::repo::in_write(conn, || -> rusqlite::Result<()> {
                let mut e = entry(conn, id)?;
                e.next_attempt = ledger::PAUSED;
                ledger::put(conn, &e)
            })?;
        }
        None => {
            let mut e = entry_db(db, id)?;
            e.next_attempt = ledger::PAUSED;
            ledger::put(db, &e)?;
        }
    }
    get(db, id)
}

/// The delivery settings of one repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Per-request time limit (connect, send, answer).
    pub timeout: Duration,
    /// Failures in a row before an endpoint is dead.
    pub max_attempts: i64,
    /// Follow 3xx answers (at most 5).
    pub follow_redirects: bool,
}

impl Config {
    /// Reads the settings; a malformed stored value falls back to the default.
    pub fn load<'a>(db: impl Into<Db<'a>>) -> Result<Config, DbError> {
        let db = db.into();
        let get = |name: &str| -> Result<String, DbError> {
            let d = backoffice::settings::find(SETTINGS, name).expect("a webhook setting");
            let v = db.config_get(name)?;
            Ok(v.and_then(|v| d.validate(&v).ok())
                .unwrap_or_else(|| d.default.to_owned()))
        };
        Ok(Config {
            timeout: Duration::from_secs(get(TIMEOUT)?.parse().unwrap_or(10)),
            max_attempts: get(MAX_ATTEMPTS)?.parse().unwrap_or(10),
            follow_redirects: get(FOLLOW_REDIRECTS)? == "on",
        })
    }

    /// An HTTP agent with these settings (one per endpoint and run).
    pub fn agent(&self) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(if self.follow_redirects { 5 } else { 0 })
            .user_agent(concat!("backoffice-webhooks/", env!("CARGO_PKG_VERSION")))
            .build();
        ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            OnceResolver::default(),
        )
    }
}

/// Resolves a host once per agent (one endpoint's turn in one run).
///
/// ureq resolves the host before every request, even one that goes out on
/// a pooled keep-alive connection, and with a time-out it does so on a new
/// thread each time: that thread made a delivery to a local receiver cost
/// 1.6 ms instead of 0.1 ms (630/s against 9,700/s). A turn lasts one run,
/// so caching its answer is safe; the time-out still bounds the first lookup.
#[derive(Debug, Default)]
struct OnceResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    cache: Mutex<Option<(String, ureq::unversioned::resolver::ResolvedSocketAddrs)>>,
}

impl ureq::unversioned::resolver::Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        if let Some((k, addrs)) = &*self.cache.lock().unwrap() {
            if *k == key {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.cache.lock().unwrap() = Some((key, addrs.clone()));
        Ok(addrs)
    }
}

/// The JSON body of a delivery.
#[derive(Debug, Serialize)]
struct Body<'a> {
    delivery: &'a str,
    eventid: i64,
    kind: &'a str,
    title: &'a str,
    body: &'a str,
    url: Option<&'a str>,
    author: Option<&'a str>,
    time: i64,
}

use backoffice::events::StoredEvent as Ev;

/// The stable id of delivering an event to endpoint `w`: the endpoint's
/// salt and id, the event's id and its `uid` (see [`backoffice::events::ensure_uid`]),
/// so it is the same for every attempt and never used for another event,
/// across purges and copies of the repository.
pub fn delivery_id(w: &Webhook, eventid: i64, uid: &str) -> String {
    format!("{}-{}-{}-{}", w.salt, w.id, eventid, uid)
}

/// Sends one signed delivery; `Ok(status)` for any HTTP answer, `Err` for
/// a failure to get one (refused, time-out, TLS, …).
fn post(agent: &ureq::Agent, w: &Webhook, delivery: &str, ev: &Ev) -> Result<u16, String> {
    let body = serde_json::to_vec(&Body {
        delivery,
        eventid: ev.eventid,
        kind: &ev.kind,
        title: &ev.title,
        body: &ev.body,
        url: ev.url.as_deref(),
        author: ev.author.as_deref(),
        time: ev.time,
    })
    .map_err(|e| e.to_string())?;
    let ts = backoffice::clock::now();
    let mut resp = agent
        .post(&w.url)
        .header("Content-Type", "application/json")
        .header("X-Backoffice-Delivery", delivery)
        .header("X-Backoffice-Event", &ev.kind)
        .header("X-Backoffice-Timestamp", &ts.to_string())
        .header("X-Backoffice-Signature", &signature(&w.secret, ts, &body))
        .header("webhook-id", delivery)
        .header("webhook-timestamp", &ts.to_string())
        .header(
            "webhook-signature",
            &standard::signature(&w.secret, delivery, ts, &body),
        )
        .send(&body[..])
        .map_err(|e| describe(&e))?;
    // Read (a bounded part of) the answer, so the connection can be reused.
    let _ = std::io::copy(
        &mut resp.body_mut().as_reader().take(MAX_RESPONSE),
        &mut std::io::sink(),
    );
    Ok(resp.status().as_u16())
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("{} ({:?})", io, io.kind()),
        e => e.to_string(),
    }
}

/// Sends a test delivery (event id 0, kind `test`) to one endpoint; returns
/// the HTTP status, or why there was none.
pub fn test<'a>(db: impl Into<Db<'a>>, id: i64) -> Result<Result<u16, String>, WebhookError> {
    let db = db.into();
    let w = get(db, id)?;
    let cfg = Config::load(db)?;
    let now = backoffice::clock::now();
    let ev = Ev {
        eventid: 0,
        kind: "test".into(),
        title: "Test delivery from backoffice".into(),
        body: String::new(),
        url: None,
        author: None,
        time: now,
    };
    let delivery = format!("{}-{}-test-{now}", w.salt, w.id);
    Ok(post(&cfg.agent(), &w, &delivery, &ev))
}

/// The webhook deliveries, as one engine task.
///
/// Its `due` is one statement: the earliest next attempt among active
/// endpoints whose cursor is behind the newest event (`max(eventid)` is a
/// lookup at the end of the table's b-tree).
#[derive(Clone, Copy, Debug, Default)]
pub struct Webhooks;

/// What one endpoint's turn did.
#[derive(Debug, Default)]
struct Turn {
    delivered: u64,
    failed: Option<String>,
}

impl Task for Webhooks {
    fn name(&self) -> &str {
        TASK
    }

    /// What makes it due: new events, an endpoint added or retried (see `backoffice::due`).
    fn due_watches(&self) -> Option<&'static [&'static str]> {
        Some(&["bo_webhook", "bo_ledger"])
    }

    fn settings(&self) -> &'static [backoffice::settings::Def] {
        SETTINGS
    }

    fn due(&self, db: Db<'_>, now: i64) -> Result<Due, TaskError> {
        let Some(conn) = db.sqlite() else {
            return pg_due(db, now);
        };
        if !conn.table_exists(None, "bo_webhook")? {
            return Ok(Due::Never);
        }
        // Not yet upgraded: the old columns still say the truth (the first
        // run moves them into the ledger). Upgraded by another process since
        // this connection read the schema: the old query fails, which counts
        // as due (see `Tasks::due`), never as nothing to do.
        let sql = if old_shape(conn)? {
            "SELECT min(next_attempt) FROM bo_webhook
             WHERE state = 'active' AND cursor < (SELECT max(eventid) FROM bo_event)"
        } else {
            "SELECT min(coalesce(l.next_attempt, 0)) FROM bo_webhook w
               LEFT JOIN bo_ledger l ON l.task = 'webhooks' AND l.target = CAST(w.id AS TEXT)
             WHERE w.state = 'active'
               AND coalesce(l.cursor, 0) < (SELECT max(eventid) FROM bo_event)"
        };
        let next: Option<i64> = conn.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
        Ok(match next.and_then(ledger::Entry::next_due) {
            None => Due::Never,
            Some(t) if t <= now => Due::Now,
            Some(t) => Due::At(t),
        })
    }

    fn run(&self, ctx: &Context<'_>) -> Result<u64, TaskError> {
        let none = std::collections::HashSet::new();
        let (endpoints, cfg, progress) = match ctx.db.sqlite() {
            Some(conn) => {
                if !conn.table_exists(None, "bo_webhook")? {
                    return Ok(0);
                }
                // Upgrades a repository of release 0.1.0, gives events their uid.
                install(conn)?;
                let cfg = Config::load(conn)?;
                // What a killed run delivered after its last commit.
                let progress = Progress::path(ctx.repo);
                // Fenced like every progress write: a run whose lease was
                // taken over leaves the log to the holder of the new term.
                Progress::recover(conn, &progress, ctx.term)?;
                (due_endpoints(conn, ctx.now, &none)?, cfg, Some(progress))
            }
            // No progress log: on PostgreSQL every answered delivery is
            // committed at once (see "On PostgreSQL").
            None => {
                if !pg_ready(ctx.db)? {
                    return Ok(0);
                }
                let cfg = Config::load(ctx.db)?;
                (pg_due_endpoints(ctx.db, ctx.now, &none)?, cfg, None)
            }
        };
        if endpoints.is_empty() {
            return Ok(0);
        }
        let log = match &progress {
            None => None,
            Some(progress) => match Progress::open(progress) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Then every delivery is committed on its own: slower, and
                    // still at most one duplicate per endpoint.
                    tracing::warn!(file = %progress.display(), error = %e, "no webhook progress file; committing every delivery");
                    None
                }
            },
        };
        let sched = Mutex::new(Sched {
            queue: endpoints.into_iter().rev().collect(),
            in_flight: std::collections::HashSet::new(),
            done: std::collections::HashSet::new(),
        });
        let results = Mutex::new(Vec::new());
        let threads = THREADS.min(sched.lock().unwrap().queue.len().max(2));
        let (now, cfg, term) = (ctx.now, &cfg, ctx.term);
        let at = Where::of(ctx.db, ctx.repo);
        let at = &at;
        // Set when a progress write was fenced (the lease was taken over,
        // on either store): every thread stops before its next delivery,
        // and the run fails with that error.
        let stop = AtomicBool::new(false);
        let fenced: Mutex<Option<DbError>> = Mutex::new(None);
        let started = Instant::now();
        // New turns start only while this window is open: long enough for
        // a hanging endpoint's request to time out, while its healthy
        // neighbours go on getting what is published meanwhile.
        let window = (cfg.timeout * 2).max(Duration::from_secs(5));
        let log = log.as_ref();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    // Each thread has its own connection: rusqlite connections
                    // (and PostgreSQL sessions) are not shared between
                    // threads, and a thread waiting on an endpoint must not
                    // hold anything another one needs.
                    let own = match Own::open(at) {
                        Ok(own) => own,
                        Err(e) => {
                            results.lock().unwrap().push((
                                0,
                                Turn {
                                    delivered: 0,
                                    failed: Some(e.to_string()),
                                },
                            ));
                            return;
                        }
                    };
                    let db = own.db();
                    // Bounded: every pass either serves an endpoint, waits
                    // 20 ms inside the window, or ends.
                    loop {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let next = {
                            let mut sc = sched.lock().unwrap();
                            match sc.queue.pop() {
                                Some(w) => {
                                    sc.in_flight.insert(w.id);
                                    Some(w)
                                }
                                None if sc.in_flight.is_empty() => break,
                                None => None,
                            }
                        };
                        let Some(w) = next else {
                            if started.elapsed() >= window {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                            // Endpoints not in flight that have new events
                            // (published since their turn) and are not
                            // backing off go again, so a slow endpoint never
                            // delays a healthy one.
                            let mut sc = sched.lock().unwrap();
                            let busy: std::collections::HashSet<i64> =
                                sc.in_flight.union(&sc.done).copied().collect();
                            let more = match db.sqlite() {
                                Some(c) => due_endpoints(c, now, &busy).ok(),
                                None => pg_due_endpoints(db, now, &busy).ok(),
                            };
                            if let Some(more) = more {
                                let queued: Vec<i64> = sc.queue.iter().map(|w| w.id).collect();
                                sc.queue
                                    .extend(more.into_iter().filter(|w| !queued.contains(&w.id)));
                            }
                            continue;
                        };
                        let served = match db.sqlite() {
                            Some(c) => serve(c, cfg, &w, now, term, log, &stop),
                            None => pg_serve(db, cfg, &w, now, term, &stop),
                        };
                        let turn = served.unwrap_or_else(|e| {
                            let failed = Some(format!("database: {e}"));
                            if e.is_fenced() {
                                stop.store(true, Ordering::SeqCst);
                                fenced.lock().unwrap().get_or_insert(e);
                            }
                            Turn {
                                delivered: 0,
                                failed,
                            }
                        });
                        let mut sc = sched.lock().unwrap();
                        sc.in_flight.remove(&w.id);
                        if turn.failed.is_some() {
                            // Backing off now: not again in this run.
                            sc.done.insert(w.id);
                        }
                        drop(sc);
                        results.lock().unwrap().push((w.id, turn));
                    }
                });
            }
        });
        // A worker whose lease was taken over records nothing more; the
        // next holder sends again what it sent since its last commit.
        if let Some(e) = fenced.into_inner().unwrap() {
            return Err(e.into());
        }
        // Every turn has committed what it delivered (or failed to, and
        // then the log must stay for the next run to recover from).
        let results = results.into_inner().unwrap();
        if let Some(log) = log {
            if results.iter().all(|(_, t)| {
                !t.failed
                    .as_deref()
                    .is_some_and(|e| e.starts_with("database:"))
            }) {
                log.remove();
            }
        }
        let delivered: u64 = results.iter().map(|(_, t)| t.delivered).sum();
        let failed: Vec<String> = results
            .iter()
            .filter_map(|(id, t)| t.failed.as_ref().map(|e| format!("#{id}: {e}")))
            .collect();
        if delivered == 0 && !failed.is_empty() {
            return Err(format!(
                "{} endpoint(s) failing: {}",
                failed.len(),
                failed.join("; ")
            )
            .into());
        }
        if ctx.debug && !failed.is_empty() {
            tracing::warn!(failed = %failed.join("; "), "webhook endpoints failing");
        }
        Ok(delivered)
    }

    /// The lowest cursor over every endpoint, **dead ones included**: a
    /// dead endpoint is not tried again by itself, but an operator can
    /// bring it back (`webhook retry`), and it then resumes after its
    /// cursor, so its backlog is kept, however old, until it catches up or
    /// is removed (`webhook remove` is how an operator lets it go). An
    /// endpoint without a ledger entry reads as cursor 0 (keeps
    /// everything). Deliveries a killed run made after its last commit
    /// (the progress log) are not counted: the cursor may be behind, never
    /// ahead. No endpoints: done with every event.
    fn events_done(&self, db: Db<'_>) -> Result<Option<i64>, TaskError> {
        let newest = match db.sqlite() {
            Some(conn) => backoffice::events::newest(conn)?,
            None => pg_newest(db)?,
        };
        let lowest = list(db)?.iter().map(|w| w.cursor).min();
        Ok(Some(lowest.map_or(newest, |c| c.min(newest))))
    }

    fn status(&self, db: Db<'_>, now: i64) -> TaskStatus {
        let mut st = TaskStatus::default();
        let Ok(all) = list(db) else {
            return st;
        };
        if all.is_empty() {
            // Zeros rather than nothing, as for hooks: a metric that vanishes
            // with the last endpoint reads as "stale".
            st.gauges = webhook_gauges(0, 0, 0);
            return st;
        }
        let newest: i64 = match db.sqlite() {
            Some(conn) => conn
                .query_row("SELECT coalesce(max(eventid), 0) FROM bo_event", [], |r| {
                    r.get(0)
                })
                .unwrap_or(0),
            None => pg_newest(db).unwrap_or(0),
        };
        let dead = all.iter().filter(|w| w.state == "dead").count();
        // A dead endpoint's backlog is not counted: nothing will deliver it
        // until `webhook retry`, and the dead gauge already says so.
        let events_behind: i64 = all
            .iter()
            .filter(|w| w.state == "active")
            .map(|w| (newest - w.cursor).max(0))
            .sum();
        st.gauges = webhook_gauges((all.len() - dead) as i64, dead as i64, events_behind);
        let behind = all
            .iter()
            .filter(|w| w.state == "active" && w.cursor < newest)
            .count();
        st.info.push(format!(
            "webhooks: {} active ({behind} with events to deliver), {dead} dead",
            all.len() - dead
        ));
        for w in &all {
            let err = w.last_error.as_deref().unwrap_or("?");
            if w.state == "dead" {
                st.problems.push(format!(
                    "webhook #{} {} is dead after {} failures: {err} (`backoffice webhook retry {}`)",
                    w.id, w.url, w.failures, w.id
                ));
            } else if w.next_attempt == ledger::PAUSED {
                st.info.push(format!(
                    "webhook #{} {} is paused (`backoffice webhook resume {}`)",
                    w.id, w.url, w.id
                ));
            } else if w.failures > 0 {
                st.problems.push(format!(
                    "webhook #{} {} failing ({} in a row, next attempt {}): {err}",
                    w.id,
                    w.url,
                    w.failures,
                    backoffice::clock::relative(w.next_attempt, now)
                ));
            }
        }
        st
    }
}

/// The webhooks task's gauges: endpoints active and dead, and the events
/// the active ones have yet to handle, summed.
fn webhook_gauges(active: i64, dead: i64, behind: i64) -> Vec<Gauge> {
    vec![
        Gauge::new("webhooks", "active", active),
        Gauge::new("webhooks", "dead", dead),
        Gauge::new("webhook-events", "behind", behind),
    ]
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

/// Where a delivery thread opens its own connection: what it needs of
/// the run's repository, shareable between threads (a [`Db`] is not).
enum Where<'a> {
    /// The SQLite file.
    Sqlite(&'a Path),
    /// The PostgreSQL URL, password included (which the run's `repo`, the
    /// URL as shown, has hidden).
    #[cfg(feature = "postgres")]
    Postgres(Box<backoffice::pg::PgUrl>),
    /// A store this build cannot open another session on.
    Unsupported(&'static str),
}

impl<'a> Where<'a> {
    fn of(main: Db<'_>, repo: &'a Path) -> Where<'a> {
        if main.sqlite().is_some() {
            return Where::Sqlite(repo);
        }
        #[cfg(feature = "postgres")]
        if let Db::Postgres(p) = main {
            return Where::Postgres(Box::new(p.url().clone()));
        }
        Where::Unsupported(main.store())
    }
}

/// A connection of a delivery thread's own, to the run's repository.
enum Own {
    Sqlite(Connection),
    #[cfg(feature = "postgres")]
    Postgres(Box<backoffice::pg::PgConn>),
}

impl Own {
    fn open(at: &Where<'_>) -> Result<Own, String> {
        match at {
            Where::Sqlite(repo) => open(repo).map(Own::Sqlite).map_err(|e| e.to_string()),
            #[cfg(feature = "postgres")]
            Where::Postgres(url) => url
                .connect()
                .map(|c| Own::Postgres(Box::new(c)))
                .map_err(|e| e.to_string()),
            Where::Unsupported(store) => {
                Err(format!("this build cannot open another session on {store}"))
            }
        }
    }

    fn db(&self) -> Db<'_> {
        match self {
            Own::Sqlite(c) => Db::Sqlite(c),
            #[cfg(feature = "postgres")]
            Own::Postgres(p) => Db::Postgres(p.as_ref()),
        }
    }
}

/// Which endpoints a run has yet to serve, is serving, and is done with.
struct Sched {
    queue: Vec<Webhook>,
    in_flight: std::collections::HashSet<i64>,
    done: std::collections::HashSet<i64>,
}

/// Active endpoints due at `now` with events after their cursor, by id,
/// except those in `skip`. Only on an upgraded repository ([`install`]).
fn due_endpoints(
    conn: &Connection,
    now: i64,
    skip: &std::collections::HashSet<i64>,
) -> rusqlite::Result<Vec<Webhook>> {
    let mut s = conn.prepare_cached(&format!(
        "{SELECT}
         WHERE w.state = 'active' AND coalesce(l.next_attempt, 0) <= ?1
           AND coalesce(l.cursor, 0) < (SELECT max(eventid) FROM bo_event)
         ORDER BY w.id"
    ))?;
    s.query_map([now], row)?
        .filter(|w| w.as_ref().map_or(true, |w| !skip.contains(&w.id)))
        .collect()
}

/// The progress log: one line `ID SALT EVENTID` appended (one `write`, no
/// fsync) after every delivery an endpoint answered with 2xx, beside the
/// repository as `REPO-bo-webhooks`.
///
/// Committing the cursor after every delivery would cost a synced SQLite
/// transaction each (about 135/s on a rollback-journal database here,
/// against a target of 2,000 deliveries/s), and committing every
/// [`COMMIT_EVERY`] let a killed worker re-send up to that many. A write to
/// this file is in the kernel's hands the moment it returns, so it survives
/// the worker's death (SIGKILL included); the next run folds it into the
/// cursors before it sends anything. A killed worker therefore re-sends at
/// most the one delivery per endpoint that was in flight. Only a crash of
/// the machine itself can lose recent lines, and then deliveries are
/// repeated, never skipped (a cursor moves only past answered deliveries).
/// The file is removed at the end of a run whose cursors are all committed.
pub struct Progress {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Progress {
    /// The log's path for a repository.
    pub fn path(repo: &Path) -> std::path::PathBuf {
        let mut p = repo.as_os_str().to_owned();
        p.push("-bo-webhooks");
        std::path::PathBuf::from(p)
    }

    fn open(path: &Path) -> std::io::Result<Progress> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Progress {
            path: path.to_owned(),
            file,
        })
    }

    /// Records one delivery (one `write` of a whole line).
    fn record(&self, w: &Webhook, eventid: i64) -> std::io::Result<()> {
        use std::io::Write;
        let line = format!("{} {} {}\n", w.id, w.salt, eventid);
        (&self.file).write_all(line.as_bytes())
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Moves cursors past what a log left by an earlier run records, in one
    /// transaction fenced on the run's `term`, then removes it. Lines
    /// naming no endpoint of this repository (another id or salt: a file
    /// left beside a replaced database), and a line cut short, are ignored.
    ///
    /// A run whose term is gone commits nothing and leaves the file to the
    /// holder of the new term. Lines a fenced run appended are folded in
    /// too: each is a delivery its endpoint answered, made in order after
    /// the cursor the run started from, so the cursor moves only past
    /// events that were delivered (and never back).
    pub fn recover(conn: &Connection, path: &Path, term: u64) -> Result<(), DbError> {
        let Ok(text) = std::fs::read(path) else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&text);
        let mut seen: std::collections::BTreeMap<(i64, String), Vec<i64>> = Default::default();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let mut f = line.split_ascii_whitespace();
            let (Some(id), Some(salt), Some(ev), None) = (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if let (Ok(id), Ok(ev)) = (id.parse::<i64>(), ev.parse::<i64>()) {
                seen.entry((id, salt.to_owned())).or_default().push(ev);
            }
        }
        if seen.is_empty() {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        migrate(conn)?;
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        for ((id, salt), evs) in &seen {
            let ours: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM bo_webhook WHERE id = ?1 AND salt = ?2)",
                params![id, salt],
                |r| r.get(0),
            )?;
            if !ours {
                continue;
            }
            let e = entry(&tx, *id)?;
            let newer = evs.iter().filter(|&&ev| ev > e.cursor).count();
            let top = evs.iter().copied().max().unwrap_or(e.cursor);
            if newer > 0 {
                tx.execute(
                    "UPDATE bo_webhook SET delivered = delivered + ?2 WHERE id = ?1",
                    params![id, newer as i64],
                )?;
                // Answered deliveries: the failures in a row and the last
                // error are cleared; the next attempt stays as it was.
                ledger::put(
                    &tx,
                    &ledger::Entry {
                        cursor: e.cursor.max(top),
                        failures: 0,
                        last_error: None,
                        ..e
                    },
                )?;
            }
        }
        backoffice::writes::fenced(&tx, term).map_err(DbError::from)?;
        tx.commit()?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }
}

/// One endpoint's turn: deliver in order until caught up or a failure.
/// Every write is fenced on the run's `term`: a fenced commit ends the turn
/// with [`DbError::Fenced`] (and the caller stops the run); `stop`, set by
/// another thread's fenced write, ends it before the next delivery.
fn serve(
    db: &Connection,
    cfg: &Config,
    w: &Webhook,
    now: i64,
    term: u64,
    log: Option<&Progress>,
    stop: &AtomicBool,
) -> Result<Turn, DbError> {
    let agent = cfg.agent();
    let mut turn = Turn::default();
    let mut cursor = w.cursor;
    let mut committed = w.cursor;
    let mut pending = 0usize;
    let started = Instant::now();
    // Without a log, every delivery is committed at once.
    let commit_every = if log.is_some() { COMMIT_EVERY } else { 1 };
    let mut log = log;
    'outer: loop {
        let events = backoffice::events::events_after_with_uid(db, cursor, READ_BATCH as usize)?;
        if events.is_empty() {
            break;
        }
        for (ev, uid) in &events {
            if stop.load(Ordering::SeqCst) {
                break 'outer;
            }
            if !crate::notify::subscribers::wants(&w.kinds, &ev.kind) {
                cursor = ev.eventid;
                continue;
            }
            let outcome = answered(cfg, post(&agent, w, &delivery_id(w, ev.eventid, uid), ev));
            match outcome {
                Ok(()) => {
                    cursor = ev.eventid;
                    turn.delivered += 1;
                    pending += 1;
                    if let Some(l) = log {
                        if let Err(e) = l.record(w, cursor) {
                            tracing::warn!(error = %e, "cannot write the webhook progress file; committing every delivery");
                            log = None;
                        }
                    }
                    if pending >= commit_every || log.is_none() {
                        if !commit(db, w.id, cursor, pending, now, term)? {
                            return Ok(turn); // removed meanwhile
                        }
                        committed = cursor;
                        pending = 0;
                    }
                }
                Err(e) => {
                    let e = backoffice::short_line(&format!("event {}: {e}", ev.eventid));
                    fail(db, cfg, w, cursor, pending, &e, now, term)?;
                    turn.failed = Some(e);
                    break 'outer;
                }
            }
        }
    }
    if turn.failed.is_none() && (cursor != committed || pending > 0) {
        commit(db, w.id, cursor, pending, now, term)?;
    }
    tracing::debug!(
        webhook = w.id,
        delivered = turn.delivered,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "webhook turn"
    );
    Ok(turn)
}

/// What an attempt's answer means: delivered (2xx), or why not.
fn answered(cfg: &Config, answer: Result<u16, String>) -> Result<(), String> {
    match answer {
        Ok(s) if (200..300).contains(&s) => Ok(()),
        Ok(s) if (300..400).contains(&s) && !cfg.follow_redirects => Err(format!(
            "HTTP {s} (redirects are not followed unless webhook-follow-redirects is on)"
        )),
        Ok(s) => Err(format!("HTTP {s}")),
        Err(e) => Err(e),
    }
}

/// Records deliveries up to `cursor` made at `now`; false if the endpoint
/// is gone. Fenced on `term`, in the same transaction: one point read of
/// the lease row per commit (every [`COMMIT_EVERY`] deliveries), so a
/// worker whose lease was taken over (paused past its heartbeat, in a
/// container sharing the file) records nothing.
fn commit(
    db: &Connection,
    id: i64,
    cursor: i64,
    n: usize,
    now: i64,
    term: u64,
) -> Result<bool, DbError> {
    Db::Sqlite(db).write(Some(term), |_| -> Result<bool, DbError> {
        let changed = db
            .prepare_cached("UPDATE bo_webhook SET delivered = delivered + ?2 WHERE id = ?1")?
            .execute(params![id, n as i64])?;
        if changed == 0 {
            return Ok(false); // removed meanwhile
        }
        // Never back (the ledger's rule): the stored cursor may be ahead,
        // recovered from the progress log or set by hand.
        ledger::succeeded(db, TASK, &target(id), cursor, now, None)?;
        Ok(true)
    })
}

/// Records what was delivered and one failure: a later next attempt (by
/// the ledger's [`Backoff`]), or dead after `max_attempts` in a row.
///
/// The count is read from the ledger inside the write transaction, not
/// taken from the run's copy read when it started: an operator's `webhook
/// retry` made while this turn was in flight reset it to 0, and a stale
/// count would mark the endpoint dead again. Fenced on `term`, as
/// [`commit`].
#[allow(clippy::too_many_arguments)]
fn fail(
    db: &Connection,
    cfg: &Config,
    w: &Webhook,
    cursor: i64,
    n: usize,
    error: &str,
    now: i64,
    term: u64,
) -> Result<(), DbError> {
    let dead = Db::Sqlite(db).write(Some(term), |_| -> Result<bool, DbError> {
        let changed = db
            .prepare_cached("UPDATE bo_webhook SET delivered = delivered + ?2 WHERE id = ?1")?
            .execute(params![w.id, n as i64])?;
        if changed == 0 {
            return Ok(false); // removed meanwhile
        }
        let e = entry(db, w.id)?;
        // The cursor moves past what was delivered (and past events of
        // other kinds); a turn that delivered something starts counting
        // failures again.
        ledger::put(
            db,
            &ledger::Entry {
                cursor: e.cursor.max(cursor),
                failures: if n > 0 { 0 } else { e.failures.max(0) },
                ..e
            },
        )?;
        let e = ledger::failed(
            db,
            TASK,
            &target(w.id),
            now,
            error,
            None,
            &Backoff::default(),
        )?;
        let dead = e.failures >= cfg.max_attempts;
        if dead {
            db.prepare_cached("UPDATE bo_webhook SET state = 'dead' WHERE id = ?1")?
                .execute([w.id])?;
        }
        Ok(dead)
    })?;
    if dead {
        tracing::warn!(webhook = w.id, url = %w.url, error, "webhook endpoint is dead");
    }
    Ok(())
}

// ---------------------------------------------------------------------
// PostgreSQL (see "On PostgreSQL" in the module docs): the same model in
// portable SQL through `Db`; the SQLite path above keeps its own
// statements (its throughput is measured by `bench_webhook`).

/// The endpoints' table on PostgreSQL, and the default that gives every
/// event published from then on its random uid (the last part of a
/// delivery id; the column is part of every schema, empty until now).
/// Run once per schema, by the first `webhook add`, under [`lock`].
const PG_SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS bo_webhook(
       id bigserial PRIMARY KEY,
       url text NOT NULL,
       secret text NOT NULL,
       kinds text NOT NULL DEFAULT '*',
       state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dead')),
       delivered bigint NOT NULL DEFAULT 0,
       salt text NOT NULL,
       ctime bigint NOT NULL
     )",
    "ALTER TABLE bo_event ALTER COLUMN uid
       SET DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 16)",
];

/// On PostgreSQL, inside a write: waits for, and holds until the end of
/// the transaction, the schema's webhooks lock, so that the writers that
/// read before they write (creating the table, `add`, `remove`, `retry`,
/// recording a failure) take turns, as `BEGIN IMMEDIATE` makes them on
/// SQLite. Under read committed a `webhook retry` (which reads an entry
/// and writes it back whole) could otherwise have its reset undone by a
/// failure being recorded at the same time, and two processes creating
/// the table at once collide (`CREATE TABLE IF NOT EXISTS` is not safe
/// against itself). A delivery's commit, one atomic statement, does not
/// take it (see [`pg_commit`]).
fn lock(db: Db<'_>) -> Result<(), DbError> {
    db.execute(
        "SELECT pg_advisory_xact_lock(hashtext('backoffice-webhooks:' || current_schema()))",
        &[],
    )
    .map(drop)
}

/// True if the schema has endpoints' table (a `webhook add` made it).
fn pg_ready(db: Db<'_>) -> Result<bool, DbError> {
    Ok(db
        .query_opt("SELECT to_regclass('bo_webhook') IS NOT NULL", &[])?
        .map(|r| r.int(0))
        .transpose()?
        == Some(1))
}

/// Creates the table (see [`PG_SCHEMA`]) if it is missing.
fn pg_install(db: Db<'_>) -> Result<(), DbError> {
    if pg_ready(db)? {
        return Ok(());
    }
    db.write(None, |db| {
        lock(db)?;
        for sql in PG_SCHEMA {
            db.execute(sql, &[])?;
        }
        Ok(())
    })
}

/// The newest event's position (0: none); an event a worker has not yet
/// given its position does not count yet.
fn pg_newest(db: Db<'_>) -> Result<i64, DbError> {
    db.query_opt(
        "SELECT CAST(coalesce(max(eventid), 0) AS BIGINT) FROM bo_event",
        &[],
    )?
    .map_or(Ok(0), |r| r.int(0))
}

/// An endpoint from a row of [`SELECT`].
fn pg_row(r: &Row) -> Result<Webhook, DbError> {
    Ok(Webhook {
        id: r.int(0)?,
        url: r.text(1)?,
        secret: r.text(2)?,
        kinds: r.text(3)?,
        cursor: r.int(4)?,
        failures: r.int(5)?,
        next_attempt: r.int(6)?,
        last_error: r.opt_text(7)?,
        state: r.text(8)?,
        delivered: r.int(9)?,
        salt: r.text(10)?,
        ctime: r.int(11)?,
    })
}

fn pg_get(db: Db<'_>, id: i64) -> Result<Webhook, WebhookError> {
    if !pg_ready(db)? {
        return Err(WebhookError::NotFound(id));
    }
    db.query_opt(&format!("{SELECT} WHERE w.id = ?1"), &[id.into()])?
        .as_ref()
        .map(pg_row)
        .transpose()?
        .ok_or(WebhookError::NotFound(id))
}

fn pg_list(db: Db<'_>) -> Result<Vec<Webhook>, WebhookError> {
    if !pg_ready(db)? {
        return Ok(Vec::new());
    }
    Ok(db
        .query(&format!("{SELECT} ORDER BY w.id"), &[])?
        .iter()
        .map(pg_row)
        .collect::<Result<_, _>>()?)
}

/// [`add`] on PostgreSQL: the endpoint and its ledger entry in one
/// transaction, the cursor read under the lock. The salt and the time
/// are the database's.
fn pg_add(db: Db<'_>, new: &New, kinds: &str) -> Result<Webhook, WebhookError> {
    pg_install(db)?;
    let id = db.write(None, |db| -> Result<i64, DbError> {
        lock(db)?;
        let cursor = if new.from_start { 0 } else { pg_newest(db)? };
        let id = db
            .query_opt(
                "INSERT INTO bo_webhook(url, secret, kinds, salt, ctime)
                 VALUES (?1, ?2, ?3, substr(md5(random()::text || clock_timestamp()::text), 1, 12),
                         CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT))
                 RETURNING id",
                &[
                    new.url.as_str().into(),
                    new.secret.as_str().into(),
                    kinds.into(),
                ],
            )?
            .ok_or_else(|| DbError::Postgres("INSERT … RETURNING returned no row".into()))?
            .int(0)?;
        // `put`, not `start`: an entry left under this id is not this
        // endpoint's.
        ledger::put(
            db,
            &ledger::Entry {
                task: TASK.to_owned(),
                target: target(id),
                cursor,
                ..Default::default()
            },
        )?;
        Ok(id)
    })?;
    pg_get(db, id)
}

fn pg_remove(db: Db<'_>, id: i64) -> Result<Webhook, WebhookError> {
    let w = pg_get(db, id)?;
    db.write(None, |db| -> Result<(), DbError> {
        lock(db)?;
        db.execute("DELETE FROM bo_webhook WHERE id = ?1", &[id.into()])?;
        ledger::remove(db, TASK, &target(id))
    })?;
    Ok(w)
}

/// Endpoint `id`'s ledger entry, or a fresh one, on either store.
fn entry_db(db: Db<'_>, id: i64) -> Result<ledger::Entry, DbError> {
    Ok(
        ledger::get(db, TASK, &target(id))?.unwrap_or_else(|| ledger::Entry {
            task: TASK.to_owned(),
            target: target(id),
            ..Default::default()
        }),
    )
}

fn pg_retry(db: Db<'_>, id: i64) -> Result<Webhook, WebhookError> {
    pg_get(db, id)?;
    db.write(None, |db| -> Result<(), DbError> {
        lock(db)?;
        db.execute(
            "UPDATE bo_webhook SET state = 'active' WHERE id = ?1",
            &[id.into()],
        )?;
        lock_entry(db, id)?;
        let e = entry_db(db, id)?;
        ledger::put(
            db,
            &ledger::Entry {
                failures: 0,
                next_attempt: 0,
                last_error: None,
                ..e
            },
        )
    })?;
    pg_get(db, id)
}

/// [`Webhooks::due`] on PostgreSQL: the same statement as on SQLite, after
/// a look for the table (a schema without endpoints has none).
fn pg_due(db: Db<'_>, now: i64) -> Result<Due, TaskError> {
    if !pg_ready(db)? {
        return Ok(Due::Never);
    }
    let next = db
        .query_opt(
            "SELECT min(coalesce(l.next_attempt, 0)) FROM bo_webhook w
               LEFT JOIN bo_ledger l ON l.task = 'webhooks' AND l.target = CAST(w.id AS TEXT)
             WHERE w.state = 'active'
               AND coalesce(l.cursor, 0) < (SELECT max(eventid) FROM bo_event)",
            &[],
        )?
        .map(|r| r.opt_int(0))
        .transpose()?
        .flatten()
        .and_then(ledger::Entry::next_due);
    Ok(match next {
        None => Due::Never,
        Some(t) if t <= now => Due::Now,
        Some(t) => Due::At(t),
    })
}

/// [`due_endpoints`] on PostgreSQL.
fn pg_due_endpoints(
    db: Db<'_>,
    now: i64,
    skip: &std::collections::HashSet<i64>,
) -> Result<Vec<Webhook>, DbError> {
    let rows = db.query(
        &format!(
            "{SELECT}
             WHERE w.state = 'active' AND coalesce(l.next_attempt, 0) <= ?1
               AND coalesce(l.cursor, 0) < (SELECT max(eventid) FROM bo_event)
             ORDER BY w.id"
        ),
        &[now.into()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let w = pg_row(r)?;
        if !skip.contains(&w.id) {
            out.push(w);
        }
    }
    Ok(out)
}

/// Up to `limit` events after position `cursor`, oldest first, each with
/// its uid: [`backoffice::events::after`]'s statement, the uid added. An
/// event published before the schema's first endpoint (no uid) has its
/// row id instead, `r` and the id, unique in the schema too.
fn pg_events(db: Db<'_>, cursor: i64, limit: i64) -> Result<Vec<(Ev, String)>, DbError> {
    db.query(
        "SELECT eventid, kind, title, body, url, author, mtime,
                coalesce(uid, 'r' || CAST(id AS TEXT))
           FROM bo_event WHERE eventid > ?1 ORDER BY eventid LIMIT ?2",
        &[cursor.into(), limit.into()],
    )?
    .iter()
    .map(|r| Ok((backoffice::events::event_from_row(r)?, r.text(7)?)))
    .collect()
}

/// [`serve`] on PostgreSQL: one endpoint's turn, every answered delivery
/// committed at once, fenced on the run's `term`. A fenced commit ends the
/// turn with [`DbError::Fenced`] (and the caller stops the run); `stop`,
/// set by another thread's fenced write, ends it before the next delivery.
fn pg_serve(
    db: Db<'_>,
    cfg: &Config,
    w: &Webhook,
    now: i64,
    term: u64,
    stop: &AtomicBool,
) -> Result<Turn, DbError> {
    let agent = cfg.agent();
    let mut turn = Turn::default();
    let mut cursor = w.cursor;
    let mut committed = w.cursor;
    let started = Instant::now();
    'outer: loop {
        let events = pg_events(db, cursor, READ_BATCH)?;
        if events.is_empty() {
            break;
        }
        for (ev, uid) in &events {
            if stop.load(Ordering::SeqCst) {
                break 'outer;
            }
            if !crate::notify::subscribers::wants(&w.kinds, &ev.kind) {
                cursor = ev.eventid;
                continue;
            }
            let outcome = answered(cfg, post(&agent, w, &delivery_id(w, ev.eventid, uid), ev));
            match outcome {
                Ok(()) => {
                    cursor = ev.eventid;
                    turn.delivered += 1;
                    if !pg_commit(db, w.id, cursor, 1, now, term)? {
                        return Ok(turn); // removed meanwhile
                    }
                    committed = cursor;
                }
                Err(e) => {
                    let e = backoffice::short_line(&format!("event {}: {e}", ev.eventid));
                    pg_fail(db, cfg, w, cursor, &e, now, term)?;
                    turn.failed = Some(e);
                    break 'outer;
                }
            }
        }
    }
    if turn.failed.is_none() && cursor != committed {
        // Past events of other kinds only.
        pg_commit(db, w.id, cursor, 0, now, term)?;
    }
    tracing::debug!(
        webhook = w.id,
        delivered = turn.delivered,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "webhook turn"
    );
    Ok(turn)
}

/// [`commit`] on PostgreSQL: records deliveries up to `cursor` made at
/// `now` (false if the endpoint is gone), fenced on `term`.
///
/// One statement, in a transaction of its own: the fencing check of
/// [`Db::write`] (the lease row read `FOR SHARE` in the same transaction,
/// nothing written unless it still carries `term`; a takeover waits for
/// the share lock) and the ledger's [`ledger::succeeded`] (cursor never
/// back, failures and error cleared), in one round trip instead of the
/// six of `BEGIN`, the lock, two writes, the check and `COMMIT`: this runs
/// after every delivery, and the six cost about 0.65 ms on a local socket
/// (1,200 deliveries/s to one endpoint, against a goal of 2,000). It
/// takes no advisory lock: both writes are single atomic statements, and
/// the writers that read an entry and write it back ([`pg_fail`],
/// [`pg_retry`]) lock its row first.
fn pg_commit(
    db: Db<'_>,
    id: i64,
    cursor: i64,
    n: i64,
    now: i64,
    term: u64,
) -> Result<bool, DbError> {
    debug_assert_eq!(TASK, "webhooks");
    let term_value = i64::try_from(term).unwrap_or(i64::MAX);
    let row = db
        .query_opt(
            "WITH fence AS (SELECT term FROM bo_lease WHERE id = 1 FOR SHARE),
             hook AS (
               UPDATE bo_webhook SET delivered = delivered + ?2
                WHERE id = ?1 AND (SELECT term FROM fence) = ?5
               RETURNING id),
             moved AS (
               INSERT INTO bo_ledger(task, target, cursor, failures, next_attempt, last_run,
                                     last_error, last_output)
               SELECT 'webhooks', ?3, ?4, 0, 0, ?6, NULL, NULL FROM hook
               ON CONFLICT (task, target) DO UPDATE
                 SET cursor = GREATEST(bo_ledger.cursor, excluded.cursor),
                     failures = 0, next_attempt = 0, last_run = excluded.last_run,
                     last_error = NULL, last_output = excluded.last_output
               RETURNING 1)
             SELECT (SELECT term FROM fence), CAST((SELECT count(*) FROM hook) AS BIGINT),
                    CAST((SELECT count(*) FROM moved) AS BIGINT)",
            &[
                id.into(),
                n.into(),
                target(id).into(),
                cursor.into(),
                term_value.into(),
                now.into(),
            ],
        )?
        .ok_or_else(|| DbError::Postgres("the webhook commit returned no row".into()))?;
    let found = row
        .opt_int(0)?
        .ok_or_else(|| DbError::Postgres("the lease row bo_lease is missing".into()))?;
    if found != term_value {
        return Err(DbError::Fenced {
            expected: term,
            found: u64::try_from(found).unwrap_or(0),
        });
    }
    Ok(row.int(1)? == 1)
}

/// [`fail`] on PostgreSQL, fenced on `term`. Every delivery before the
/// failure is committed already, so only the cursor (moved past events of
/// other kinds) and the failure are recorded; the count is read under the
/// lock, as on SQLite, so an operator's retry is never undone.
fn pg_fail(
    db: Db<'_>,
    cfg: &Config,
    w: &Webhook,
    cursor: i64,
    error: &str,
    now: i64,
    term: u64,
) -> Result<(), DbError> {
    let dead = db.write(Some(term), |db| -> Result<bool, DbError> {
        lock(db)?;
        if pg_get_state(db, w.id)?.is_none() {
            return Ok(false); // removed meanwhile
        }
        lock_entry(db, w.id)?;
        let e = entry_db(db, w.id)?;
        ledger::put(
            db,
            &ledger::Entry {
                cursor: e.cursor.max(cursor),
                failures: e.failures.max(0),
                ..e
            },
        )?;
        let e = ledger::failed(
            db,
            TASK,
            &target(w.id),
            now,
            error,
            None,
            &Backoff::default(),
        )?;
        let dead = e.failures >= cfg.max_attempts;
        if dead {
            db.execute(
                "UPDATE bo_webhook SET state = 'dead' WHERE id = ?1",
                &[w.id.into()],
            )?;
        }
        Ok(dead)
    })?;
    if dead {
        tracing::warn!(webhook = w.id, url = %w.url, error, "webhook endpoint is dead");
    }
    Ok(())
}

/// Inside a write: locks endpoint `id`'s ledger row (if it has one) until
/// the end of the transaction, so that a delivery committed meanwhile
/// ([`pg_commit`], which takes no advisory lock) waits, and the entry read
/// next is written back with nothing lost in between.
fn lock_entry(db: Db<'_>, id: i64) -> Result<(), DbError> {
    db.query(
        "SELECT 1 FROM bo_ledger WHERE task = 'webhooks' AND target = ?1 FOR UPDATE",
        &[target(id).into()],
    )
    .map(drop)
}

/// An endpoint's state (`active`, `dead`), if it exists.
fn pg_get_state(db: Db<'_>, id: i64) -> Result<Option<String>, DbError> {
    db.query_opt("SELECT state FROM bo_webhook WHERE id = ?1", &[id.into()])?
        .map(|r| r.text(0))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retention keeps every event after the lowest cursor over all
    /// endpoints, a dead one's included (an operator may bring it back
    /// with `webhook retry`, and it resumes from its cursor).
    #[test]
    fn events_done_is_the_lowest_cursor_dead_endpoints_included() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("r.db")).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        // Never set up: done with everything there is (nothing).
        assert_eq!(Webhooks.events_done((&conn).into()).unwrap(), Some(0));
        let publish = |t: &str| {
            backoffice::events::publish(
                &conn,
                &backoffice::events::Event {
                    kind: "wiki".into(),
                    title: t.into(),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        for t in ["a", "b", "c", "d", "e"] {
            publish(t);
        }
        let add_at = |cursor: i64| {
            let w = add(
                &conn,
                &New {
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "s".repeat(MIN_SECRET),
                    kinds: "*".into(),
                    from_start: true,
                },
            )
            .unwrap();
            ledger::succeeded(&conn, TASK, &target(w.id), cursor, 0, None).unwrap();
            w
        };
        let fast = add_at(5);
        assert_eq!(Webhooks.events_done((&conn).into()).unwrap(), Some(5));
        let slow = add_at(2);
        let _mid = add_at(4);
        assert_eq!(Webhooks.events_done((&conn).into()).unwrap(), Some(2));
        // Dead: still holds its backlog.
        conn.execute(
            "UPDATE bo_webhook SET state = 'dead' WHERE id = ?1",
            [slow.id],
        )
        .unwrap();
        assert_eq!(Webhooks.events_done((&conn).into()).unwrap(), Some(2));
        // Removed: lets it go.
        remove(&conn, slow.id).unwrap();
        assert_eq!(Webhooks.events_done((&conn).into()).unwrap(), Some(4));
        remove(&conn, _mid.id).unwrap();
        remove(&conn, fast.id).unwrap();
        // No endpoints left: done with every event there is.
        assert_eq!(Webhooks.events_done((&conn).into()).unwrap(), Some(5));
    }

    /// RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    #[test]
    fn signature_matches_the_rfc_4231_vector() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our signature is the same HMAC over "TIMESTAMP.BODY": with the
        // timestamp "what do ya want for nothing?" cannot be produced, so
        // check the framing against a hand-built message instead.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1795261729.{\"a\":1}");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            signature("Jefe", 1_795_261_729, b"{\"a\":1}"),
            format!("sha256={want}")
        );
    }

    /// Python: hmac.new(b"key", b"1700000000.hello", hashlib.sha256).hexdigest()
    #[test]
    fn signature_known_value() {
        assert_eq!(
            signature("key", 1_700_000_000, b"hello"),
            "sha256=4d583a269f4f276a3fa80ff31b5a01879a848096983222a17893d198418939aa"
        );
    }

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        for ok in [
            "http://127.0.0.1:8080/hook",
            "https://example.org/x?y=1",
            "HTTPS://EXAMPLE.ORG",
        ] {
            check_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "ftp://example.org/",
            "file:///etc/passwd",
            "example.org/hook",
            "http://",
            "http://exa mple.org/",
            "http://example.org/\nX: y",
            "https://user:pw@example.org/",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secrets_are_masked() {
        let conn = Connection::open_in_memory().unwrap();
        let w = add(
            &conn,
            &New {
                url: "http://127.0.0.1:9/h".into(),
                secret: "s3cr3t-s3cr3t-s3cr3t".into(),
                kinds: "*".into(),
                from_start: false,
            },
        )
        .unwrap();
        let dbg = format!("{w:?}");
        assert!(!dbg.contains("s3cr3t-s3cr3t"), "{dbg}");
        assert!(dbg.contains("s3cr****"), "{dbg}");
        let json = serde_json::to_string(&w).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert_eq!(mask("short"), "****");
        assert!(matches!(
            add(
                &conn,
                &New {
                    url: "http://127.0.0.1:9/h".into(),
                    secret: "short".into(),
                    kinds: "*".into(),
                    from_start: false,
                }
            ),
            Err(WebhookError::Secret)
        ));
    }

    #[test]
    fn due_follows_events_and_next_attempt() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        assert_eq!(Webhooks.due((&conn).into(), 100).unwrap(), Due::Never);
        let w = add(
            &conn,
            &New {
                url: "http://127.0.0.1:9/h".into(),
                secret: "0123456789abcdef".into(),
                kinds: "*".into(),
                from_start: false,
            },
        )
        .unwrap();
        assert_eq!(Webhooks.due((&conn).into(), 100).unwrap(), Due::Never);
        backoffice::events::publish(
            &conn,
            &backoffice::events::Event {
                kind: "wiki".into(),
                title: "t".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(Webhooks.due((&conn).into(), 100).unwrap(), Due::Now);
        conn.execute(
            "UPDATE bo_ledger SET next_attempt = 200 WHERE task = 'webhooks'",
            [],
        )
        .unwrap();
        assert_eq!(Webhooks.due((&conn).into(), 100).unwrap(), Due::At(200));
        conn.execute("UPDATE bo_webhook SET state = 'dead'", [])
            .unwrap();
        assert_eq!(Webhooks.due((&conn).into(), 100).unwrap(), Due::Never);
        retry(&conn, w.id).unwrap();
        assert_eq!(Webhooks.due((&conn).into(), 100).unwrap(), Due::Now);
    }

    #[test]
    fn status_gauges_count_endpoints_and_events_behind() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        assert_eq!(
            Webhooks.status((&conn).into(), 0).gauges,
            webhook_gauges(0, 0, 0)
        );
        let new = New {
            url: "http://127.0.0.1:9/h".into(),
            secret: "0123456789abcdef".into(),
            kinds: "*".into(),
            from_start: true,
        };
        let ids: Vec<i64> = (0..3).map(|_| add(&conn, &new).unwrap().id).collect();
        for t in ["a", "b", "c", "d"] {
            backoffice::events::publish(
                &conn,
                &backoffice::events::Event {
                    kind: "wiki".into(),
                    title: t.into(),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let set = |id: i64, cursor: i64, state: &str| {
            conn.execute(
                "UPDATE bo_webhook SET state = ?2 WHERE id = ?1",
                params![id, state],
            )
            .unwrap();
            conn.execute(
                "UPDATE bo_ledger SET cursor = ?2 WHERE task = 'webhooks' AND target = ?1",
                params![id.to_string(), cursor],
            )
            .unwrap();
        };
        set(ids[0], 1, "active"); // 3 behind
        set(ids[1], 9, "active"); // ahead (hand-edited): 0, not -5
        set(ids[2], 0, "dead"); // not counted as behind
        assert_eq!(
            Webhooks.status((&conn).into(), 0).gauges,
            webhook_gauges(2, 1, 3)
        );
    }

    /// A failed attempt backs off by the ledger's policy (1 minute, 2, …,
    /// at most 6 hours, plus up to a tenth of jitter); a turn that delivered
    /// something starts counting again; `max_attempts` in a row: dead. A
    /// commit never moves a cursor back and clears the failures.
    #[test]
    fn failures_back_off_by_the_ledger_policy_and_end_dead() {
        let conn = Connection::open_in_memory().unwrap();
        let w = add(
            &conn,
            &New {
                url: "http://127.0.0.1:9/h".into(),
                secret: "0123456789abcdef".into(),
                kinds: "*".into(),
                from_start: true,
            },
        )
        .unwrap();
        let cfg = Config {
            timeout: Duration::from_secs(1),
            max_attempts: 4,
            follow_redirects: false,
        };
        fail(&conn, &cfg, &w, 0, 0, "HTTP 500", 1000, 0).unwrap();
        let g = get(&conn, w.id).unwrap();
        assert_eq!(
            (g.failures, g.state.as_str(), g.last_error.as_deref()),
            (1, "active", Some("HTTP 500"))
        );
        assert!((1060..=1066).contains(&g.next_attempt), "{g:?}");
        fail(&conn, &cfg, &w, 0, 0, "HTTP 500", 2000, 0).unwrap();
        let g = get(&conn, w.id).unwrap();
        assert_eq!(g.failures, 2);
        assert!((2120..=2132).contains(&g.next_attempt), "{g:?}");
        // Two deliveries, then a failure: the cursor and the count move,
        // the failures start again at 1.
        fail(&conn, &cfg, &w, 5, 2, "HTTP 502", 3000, 0).unwrap();
        let g = get(&conn, w.id).unwrap();
        assert_eq!((g.cursor, g.delivered, g.failures), (5, 2, 1), "{g:?}");
        assert!((3060..=3066).contains(&g.next_attempt), "{g:?}");
        // Capped, however many failures are stored.
        conn.execute(
            "UPDATE bo_ledger SET failures = 39 WHERE task = 'webhooks'",
            [],
        )
        .unwrap();
        let lenient = Config {
            max_attempts: 100,
            ..cfg
        };
        fail(&conn, &lenient, &w, 0, 0, "timed out", 4000, 0).unwrap();
        let g = get(&conn, w.id).unwrap();
        assert_eq!((g.failures, g.cursor), (40, 5), "{g:?}");
        assert!(
            (4000 + 6 * 3600..=4000 + 6 * 3600 * 11 / 10).contains(&g.next_attempt),
            "{g:?}"
        );
        // A commit behind the stored cursor keeps it, and clears failures.
        assert!(commit(&conn, w.id, 3, 1, 5000, 0).unwrap());
        let g = get(&conn, w.id).unwrap();
        assert_eq!(
            (
                g.cursor,
                g.delivered,
                g.failures,
                g.next_attempt,
                g.last_error
            ),
            (5, 3, 0, 0, None)
        );
        // Dead after max_attempts in a row.
        for t in 1..=4 {
            fail(&conn, &cfg, &w, 0, 0, "HTTP 500", 6000 + t, 0).unwrap();
        }
        let g = get(&conn, w.id).unwrap();
        assert_eq!((g.failures, g.state.as_str()), (4, "dead"));
        // A removed endpoint is not recorded, nor left in the ledger.
        remove(&conn, w.id).unwrap();
        assert!(!commit(&conn, w.id, 9, 1, 7000, 0).unwrap());
        fail(&conn, &cfg, &w, 9, 0, "HTTP 500", 7000, 0).unwrap();
        assert_eq!(ledger::all(&conn, TASK).unwrap(), vec![]);
    }

    /// `bo_webhook` as release 0.1.0 made it, the retry state in its columns.
    const SCHEMA_0_1_0: &str = "
        CREATE TABLE bo_webhook(
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          url TEXT NOT NULL,
          secret TEXT NOT NULL,
          kinds TEXT NOT NULL DEFAULT '*',
          cursor INTEGER NOT NULL DEFAULT 0,
          failures INTEGER NOT NULL DEFAULT 0,
          next_attempt INTEGER NOT NULL DEFAULT 0,
          last_error TEXT,
          state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dead')),
          delivered INTEGER NOT NULL DEFAULT 0,
          salt TEXT NOT NULL,
          ctime INTEGER NOT NULL
        );
        INSERT INTO bo_webhook VALUES
          (1, 'http://127.0.0.1:9/ok', '0123456789abcdef', '*', 7, 0, 0, NULL, 'active', 2, '1deeea492e92', 100),
          (2, 'http://127.0.0.1:9/down', '0123456789abcdef', 'wiki,ticket', 2, 3, 4102444800,
              'event 3: HTTP 500', 'dead', 0, 'ec59f48c160d', 101),
          (4, 'http://127.0.0.1:9/slow', '0123456789abcdef', '*', 0, 1, 4102444800,
              'event 1: timed out', 'active', 0, '0a0b0c0d0e0f', 102);
    ";

    /// A repository file of release 0.1.0 with three endpoints (one dead,
    /// one backing off) and seven events.
    fn repo_0_1_0(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("app.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        backoffice::events::install(&conn).unwrap();
        for i in 0..7 {
            backoffice::events::publish(
                &conn,
                &backoffice::events::Event {
                    kind: "wiki".into(),
                    title: format!("Event {i}"),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        conn.execute_batch(SCHEMA_0_1_0).unwrap();
        path
    }

    fn columns(conn: &Connection) -> Vec<String> {
        let mut s = conn
            .prepare("SELECT name FROM pragma_table_info('bo_webhook') ORDER BY cid")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Issue 11 item 4: a 0.1.0 repository reads the same before and after
    /// the upgrade; `install` moves every endpoint's retry state into the
    /// ledger, drops the old columns, and does nothing the second time, nor
    /// from a connection that saw the old shape before another upgraded it.
    #[test]
    fn install_moves_the_retry_state_of_a_0_1_0_repository_into_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = repo_0_1_0(dir.path());
        let conn = Connection::open(&path).unwrap();
        // Other processes' connections, which have read the old shape.
        let other = Connection::open(&path).unwrap();
        let before = list(&other).unwrap();
        let reader = Connection::open(&path).unwrap();
        assert_eq!(list(&reader).unwrap(), before);
        assert_eq!(before.len(), 3);
        assert_eq!(
            (
                before[1].cursor,
                before[1].failures,
                before[1].state.as_str()
            ),
            (2, 3, "dead")
        );
        assert_eq!(
            Webhooks.due((&other).into(), 1000).unwrap(),
            Due::At(4_102_444_800)
        );
        assert!(old_shape(&other).unwrap());

        install(&conn).unwrap();
        let entries = ledger::all(&conn, TASK).unwrap();
        let got: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.target.as_str(),
                    e.cursor,
                    e.failures,
                    e.next_attempt,
                    e.last_error.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("1", 7, 0, 0, None),
                ("2", 2, 3, 4_102_444_800, Some("event 3: HTTP 500")),
                ("4", 0, 1, 4_102_444_800, Some("event 1: timed out")),
            ]
        );
        assert_eq!(
            columns(&conn),
            [
                "id",
                "url",
                "secret",
                "kinds",
                "state",
                "delivered",
                "salt",
                "ctime"
            ]
        );
        assert_eq!(list(&conn).unwrap(), before);
        // Endpoint 1 is caught up, 2 dead, 4 backing off until 2100.
        assert_eq!(
            Webhooks.due((&conn).into(), 1000).unwrap(),
            Due::At(4_102_444_800)
        );
        // The same delivery ids as before (they are made of id and salt).
        assert_eq!(
            delivery_id(&list(&conn).unwrap()[0], 7, "u"),
            delivery_id(&before[0], 7, "u")
        );

        // Read through a connection whose schema is stale: the same.
        assert!(old_shape(&reader).unwrap(), "the reader is stale");
        assert_eq!(list(&reader).unwrap(), before);
        assert_eq!(get(&reader, 2).unwrap(), before[1]);
        // Again, and from a connection whose schema is stale: nothing
        // changes, nothing fails.
        install(&conn).unwrap();
        assert!(old_shape(&other).unwrap(), "the other connection is stale");
        migrate(&other).unwrap();
        install(&other).unwrap();
        assert_eq!(ledger::all(&other, TASK).unwrap(), entries);
        assert_eq!(list(&other).unwrap(), before);
        // New endpoints go on from the old ids.
        let w = add(
            &conn,
            &New {
                url: "http://127.0.0.1:9/new".into(),
                secret: "0123456789abcdef".into(),
                kinds: "*".into(),
                from_start: false,
            },
        )
        .unwrap();
        assert_eq!((w.id, w.cursor), (5, 7));
        assert_eq!(retry(&conn, 2).unwrap().cursor, 2);
    }

    /// Four connections upgrading one 0.1.0 repository at once: each
    /// succeeds, the state is copied once, nothing is lost.
    #[test]
    fn concurrent_installs_upgrade_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = repo_0_1_0(dir.path());
        let before = list(&Connection::open(&path).unwrap()).unwrap();
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let c = open(&path).unwrap();
                        assert!(old_shape(&c).unwrap());
                        start.wait();
                        install(&c)
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        let conn = Connection::open(&path).unwrap();
        assert!(!old_shape(&conn).unwrap());
        assert_eq!(list(&conn).unwrap(), before);
        assert_eq!(ledger::all(&conn, TASK).unwrap().len(), 3);
    }
}
