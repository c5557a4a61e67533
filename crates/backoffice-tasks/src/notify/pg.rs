//! Alerts, digests, subscribers and the outbox on a PostgreSQL repository
//! (`backoffice::pg`): the same model as on SQLite, other bookkeeping.
//!
//! # Tables
//!
//! `bo_subscriber` and `bo_outbox` are this task's, not the engine's: they
//! are created in the repository's schema on first use ([`install`], under
//! a per-schema advisory lock so that two first users do not race), with
//! `bigserial` ids and `bigint` flags. Addresses are unique without case
//! (a unique index on `lower(address)`), as `COLLATE NOCASE` makes them on
//! SQLite.
//!
//! # Cursors instead of marks
//!
//! On SQLite the task marks events `alerted` and `digested` in `bo_event`.
//! A PostgreSQL schema's event log has no such columns, and its `eventid`
//! is an event's position in commit order, stamped by the worker before
//! its tasks run (see `backoffice::pg`). So the task keeps cursors of its
//! own in the retry ledger and reads with [`backoffice::events::after`],
//! which never skips an event that committed late:
//!
//! * **alerts** (`alerts`/`events`): the last position turned into alerts.
//!   A batch of alerts is queued in the same transaction that moves it.
//! * **digests** (`alerts`/`digests`): the newest position when the last
//!   digest was composed, and the config row `email-digest-covered`, the
//!   latest digest boundary. An event was in a digest exactly when its
//!   position is at most the cursor *and* its time is before that
//!   boundary (by induction over the digests), so the next digest takes
//!   the events after the cursor or not older than the boundary, and
//!   older than its own end — what `digested = 0 AND mtime < end` takes
//!   on SQLite.
//!
//! # Fencing
//!
//! Every progress write — queueing with the cursor moved, a digest with
//! its marks, each message's outcome, tokens given to rows queued by plain
//! SQL — is [`Db::write`] fenced on the run's term: a worker whose lease
//! was taken over commits nothing and stops. Sending cannot be fenced: it
//! stays at least once, with the message's stable `Message-ID` (from the
//! token minted when it was queued, as on SQLite). Each outcome is
//! committed before the next send, asynchronously (`synchronous_commit =
//! off`: visible to every host at once, durable a fraction of a second
//! later), which is what the sent journal does on SQLite (a file on one
//! host means nothing to another): a worker killed, paused or taken over
//! re-sends at most the one message it was sending, and the `db` method
//! at most the batch its mail database had not committed. A run that was
//! paused (its clock jumped) also reads the lease's term before its next
//! send and stops if it moved.

use std::time::{Duration, Instant};

use backoffice::db::{DbError, Row as DbRow};
use backoffice::ledger;
use backoffice::{Db, Due, Gauge, TaskError, TaskStatus};

use super::compose::{self, EventText};
use super::config::{EmailConfig, Method};
use super::outbox::{self, Delivered, Outcome};
use super::schedule::{DigestDue, DigestTime};
use super::send::Transport;
use super::subscribers::{self, Changes, New, Subscriber, SubscriberError};
use super::task::{DIGEST_MAX_EVENTS, EVENT_BATCH, FRESH_FOR, LAST_DIGEST};

/// The ledger task name of this task's cursors.
const TASK: &str = "alerts";
/// The alerts' cursor (ledger target).
const ALERTS: &str = "events";
/// The digests' cursor (ledger target).
const DIGESTS: &str = "digests";
/// The `config` row: the latest digest boundary covered (Unix seconds).
pub const DIGEST_COVERED: &str = "email-digest-covered";

/// The tables, one statement each (see the module docs).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS bo_subscriber(
       subscriberid bigserial PRIMARY KEY,
       address text NOT NULL,
       name text,
       kinds text NOT NULL DEFAULT '*',
       digest bigint NOT NULL DEFAULT 0,
       verified bigint NOT NULL DEFAULT 0,
       donotcall bigint NOT NULL DEFAULT 0,
       code text NOT NULL UNIQUE,
       ctime bigint NOT NULL,
       mtime bigint NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS bo_subscriber_address ON bo_subscriber(lower(address))",
    "CREATE TABLE IF NOT EXISTS bo_outbox(
       msgid bigserial PRIMARY KEY,
       subscriberid bigint,
       address text NOT NULL,
       kind text NOT NULL,
       subject text NOT NULL,
       body text NOT NULL,
       code text,
       ctime bigint NOT NULL,
       state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'dead')),
       attempts bigint NOT NULL DEFAULT 0,
       next_attempt bigint NOT NULL,
       last_error text,
       sent_time bigint,
       token text,
       gen bigint NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS bo_outbox_due ON bo_outbox(next_attempt) WHERE state = 'queued'",
    "CREATE INDEX IF NOT EXISTS bo_outbox_dead ON bo_outbox(msgid) WHERE state = 'dead'",
];

/// Writers of this task's tables that must take turns (two `subscriber
/// add` of one address; the first creation of the tables) hold this
/// per-schema lock until their transaction ends.
fn lock(db: Db<'_>) -> Result<(), DbError> {
    db.execute(
        "SELECT pg_advisory_xact_lock(hashtext('backoffice-notify:' || current_schema()))",
        &[],
    )?;
    Ok(())
}

/// True once the tables exist in the repository's schema.
pub fn installed(db: Db<'_>) -> Result<bool, DbError> {
    let n = db
        .query_opt(
            "SELECT CAST(count(*) AS BIGINT) FROM pg_tables
              WHERE schemaname = current_schema() AND tablename IN ('bo_subscriber', 'bo_outbox')",
            &[],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    Ok(n == 2)
}

/// Creates the tables if they are missing (idempotent; one read when they
/// are there).
pub fn install(db: Db<'_>) -> Result<(), DbError> {
    if installed(db)? {
        return Ok(());
    }
    db.write(None, |db| {
        lock(db)?;
        for stmt in SCHEMA {
            db.execute(stmt, &[])?;
        }
        Ok(())
    })
}

/// The database's clock, Unix seconds (every time in a PostgreSQL
/// repository is the database's).
pub fn db_now(db: Db<'_>) -> Result<i64, DbError> {
    db.query_opt(
        "SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)",
        &[],
    )?
    .ok_or_else(|| DbError::Postgres("no answer for the clock".into()))?
    .int(0)
}

/// A new random token, 128 bits in hex: from the kernel, else from the
/// server's generator.
fn new_token(db: Db<'_>) -> Result<String, DbError> {
    use std::io::Read;
    let mut b = [0u8; 16];
    let kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    match kernel {
        Ok(()) => Ok(b.iter().map(|x| format!("{x:02x}")).collect()),
        Err(_) => db
            .query_opt("SELECT md5(random()::text || clock_timestamp()::text)", &[])?
            .ok_or_else(|| DbError::Postgres("no random token".into()))?
            .text(0),
    }
}

// ---------------------------------------------------------------- subscribers

const SUB_COLUMNS: &str =
    "subscriberid, address, name, kinds, digest, verified, donotcall, code, ctime, mtime";

fn subscriber(r: &DbRow) -> Result<Subscriber, DbError> {
    Ok(Subscriber {
        id: r.int(0)?,
        address: r.text(1)?,
        name: r.opt_text(2)?,
        kinds: r.text(3)?,
        digest: r.int(4)? != 0,
        verified: r.int(5)? != 0,
        donotcall: r.int(6)? != 0,
        code: r.text(7)?,
        ctime: r.int(8)?,
        mtime: r.int(9)?,
    })
}

/// [`subscribers::add`] on PostgreSQL.
pub fn subscriber_add(db: Db<'_>, new: &New) -> Result<Subscriber, SubscriberError> {
    let addr = new.address.trim();
    super::address::check(addr).map_err(|e| SubscriberError::Address(addr.to_owned(), e))?;
    let kinds = subscribers::parse_kinds(&new.kinds)?;
    subscribers::check_name(&new.name)?;
    install(db)?;
    let code = new_token(db)?;
    db.write(None, |db| {
        // Under the lock: two adds of one address cannot both pass.
        lock(db)?;
        if subscriber_find(db, addr)?.is_some() {
            return Err(SubscriberError::Duplicate(addr.to_owned()));
        }
        let now = db_now(db)?;
        db.execute(
            "INSERT INTO bo_subscriber(address, name, kinds, digest, verified, code, ctime, mtime)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            &[
                addr.into(),
                new.name.clone().into(),
                kinds.into(),
                new.digest.into(),
                new.verified.into(),
                code.into(),
                now.into(),
            ],
        )?;
        subscriber_find(db, addr)?.ok_or_else(|| SubscriberError::NotFound(addr.to_owned()))
    })
}

/// [`subscribers::list`] on PostgreSQL.
pub fn subscriber_list(db: Db<'_>) -> Result<Vec<Subscriber>, SubscriberError> {
    if !installed(db)? {
        return Ok(Vec::new());
    }
    let rows = db.query(
        &format!("SELECT {SUB_COLUMNS} FROM bo_subscriber ORDER BY lower(address), address"),
        &[],
    )?;
    Ok(rows.iter().map(subscriber).collect::<Result<_, _>>()?)
}

/// [`subscribers::find`] on PostgreSQL: by address (any case) or id.
pub fn subscriber_find(db: Db<'_>, key: &str) -> Result<Option<Subscriber>, SubscriberError> {
    if !installed(db)? {
        return Ok(None);
    }
    let id: i64 = key.trim().parse().unwrap_or(-1);
    let row = db.query_opt(
        &format!(
            "SELECT {SUB_COLUMNS} FROM bo_subscriber
              WHERE lower(address) = lower(?1) OR subscriberid = ?2"
        ),
        &[key.trim().into(), id.into()],
    )?;
    Ok(row.as_ref().map(subscriber).transpose()?)
}

/// [`subscribers::remove`] on PostgreSQL.
pub fn subscriber_remove(db: Db<'_>, key: &str) -> Result<Subscriber, SubscriberError> {
    let s = subscriber_find(db, key)?.ok_or_else(|| SubscriberError::NotFound(key.to_owned()))?;
    db.execute(
        "DELETE FROM bo_subscriber WHERE subscriberid = ?1",
        &[s.id.into()],
    )?;
    Ok(s)
}

/// [`subscribers::set`] on PostgreSQL.
pub fn subscriber_set(
    db: Db<'_>,
    key: &str,
    changes: &Changes,
) -> Result<Subscriber, SubscriberError> {
    let s = subscriber_find(db, key)?.ok_or_else(|| SubscriberError::NotFound(key.to_owned()))?;
    let kinds = changes
        .kinds
        .as_deref()
        .map(subscribers::parse_kinds)
        .transpose()?;
    let name = changes
        .name
        .as_ref()
        .map(|n| Some(n.clone()).filter(|n| !n.is_empty()));
    if let Some(n) = &name {
        subscribers::check_name(n)?;
    }
    let now = db_now(db)?;
    db.execute(
        "UPDATE bo_subscriber SET
           kinds = coalesce(CAST(?2 AS TEXT), kinds),
           digest = coalesce(CAST(?3 AS BIGINT), digest),
           verified = coalesce(CAST(?4 AS BIGINT), verified),
           donotcall = coalesce(CAST(?5 AS BIGINT), donotcall),
           name = CASE WHEN CAST(?6 AS BIGINT) <> 0 THEN CAST(?7 AS TEXT) ELSE name END,
           mtime = ?8
         WHERE subscriberid = ?1",
        &[
            s.id.into(),
            kinds.into(),
            changes.digest.into(),
            changes.verified.into(),
            changes.donotcall.into(),
            name.is_some().into(),
            name.flatten().into(),
            now.into(),
        ],
    )?;
    subscriber_find(db, &s.id.to_string())?.ok_or_else(|| SubscriberError::NotFound(key.to_owned()))
}

/// [`subscribers::find_by_code`] on PostgreSQL (changes nothing).
pub fn subscriber_by_code(db: Db<'_>, code: &str) -> Result<Option<Subscriber>, SubscriberError> {
    if !subscribers::plausible_code(code) || !installed(db)? {
        return Ok(None);
    }
    let row = db.query_opt(
        &format!("SELECT {SUB_COLUMNS} FROM bo_subscriber WHERE code = ?1"),
        &[code.to_ascii_lowercase().into()],
    )?;
    Ok(row.as_ref().map(subscriber).transpose()?)
}

/// [`subscribers::unsubscribe_by_code`] on PostgreSQL: the address, or
/// `None` for an unknown code.
pub fn unsubscribe_by_code(db: Db<'_>, code: &str) -> Result<Option<String>, SubscriberError> {
    if !subscribers::plausible_code(code) || !installed(db)? {
        return Ok(None);
    }
    let now = db_now(db)?;
    let row = db.query_opt(
        "UPDATE bo_subscriber SET donotcall = 1, mtime = ?2 WHERE code = ?1 RETURNING address",
        &[code.to_ascii_lowercase().into(), now.into()],
    )?;
    Ok(row.map(|r| r.text(0)).transpose()?)
}

// ---------------------------------------------------------------- the outbox

/// [`outbox::queue`] on PostgreSQL, inside the caller's write.
fn queue(db: Db<'_>, m: &outbox::New<'_>, now: i64) -> Result<i64, DbError> {
    let token = new_token(db)?;
    db.query_opt(
        "INSERT INTO bo_outbox(subscriberid, address, kind, subject, body, code, ctime, next_attempt, token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8) RETURNING msgid",
        &[
            m.subscriberid.into(),
            m.address.into(),
            m.kind.into(),
            m.subject.into(),
            m.body.into(),
            m.code.into(),
            now.into(),
            token.into(),
        ],
    )?
    .ok_or_else(|| DbError::Postgres("INSERT … RETURNING returned no row".into()))?
    .int(0)
}

/// [`outbox::counts`] on PostgreSQL: (queued, sent, dead).
pub fn outbox_counts(db: Db<'_>) -> Result<(i64, i64, i64), DbError> {
    if !installed(db)? {
        return Ok((0, 0, 0));
    }
    let r = db
        .query_opt(
            "SELECT CAST(count(*) FILTER (WHERE state = 'queued') AS BIGINT),
                    CAST(count(*) FILTER (WHERE state = 'sent') AS BIGINT),
                    CAST(count(*) FILTER (WHERE state = 'dead') AS BIGINT) FROM bo_outbox",
            &[],
        )?
        .unwrap_or_default();
    Ok((r.int(0)?, r.int(1)?, r.int(2)?))
}

/// [`outbox::list`] on PostgreSQL.
pub fn outbox_list(
    db: Db<'_>,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<outbox::Row>, DbError> {
    if !installed(db)? {
        return Ok(Vec::new());
    }
    let rows = db.query(
        "SELECT msgid, address, kind, subject, state, attempts, next_attempt, last_error, ctime, sent_time
           FROM bo_outbox WHERE CAST(?1 AS TEXT) IS NULL OR state = ?1
          ORDER BY msgid DESC LIMIT ?2",
        &[state.into(), limit.max(0).into()],
    )?;
    rows.iter()
        .map(|r| {
            Ok(outbox::Row {
                msgid: r.int(0)?,
                address: r.text(1)?,
                kind: r.text(2)?,
                subject: r.text(3)?,
                state: r.text(4)?,
                attempts: r.int(5)?,
                next_attempt: r.int(6)?,
                last_error: r.opt_text(7)?,
                ctime: r.int(8)?,
                sent_time: r.opt_int(9)?,
            })
        })
        .collect()
}

/// [`outbox::retry`] on PostgreSQL.
pub fn outbox_retry(db: Db<'_>, msgid: Option<i64>, now: i64) -> Result<u64, DbError> {
    if !installed(db)? {
        return Ok(0);
    }
    db.execute(
        "UPDATE bo_outbox SET state = 'queued', attempts = 0, next_attempt = ?2, gen = gen + 1
          WHERE (CAST(?1 AS BIGINT) IS NULL AND state = 'dead')
             OR (msgid = ?1 AND state IN ('dead', 'queued'))",
        &[msgid.into(), now.into()],
    )
}

/// [`outbox::purge`] on PostgreSQL.
pub fn outbox_purge(db: Db<'_>, before: i64, dead: bool) -> Result<u64, DbError> {
    if !installed(db)? {
        return Ok(0);
    }
    db.execute(
        "DELETE FROM bo_outbox
          WHERE (state = 'sent' AND sent_time < ?1) OR (CAST(?2 AS BIGINT) <> 0 AND state = 'dead')",
        &[before.into(), dead.into()],
    )
}

fn next_due(db: Db<'_>) -> Result<Option<i64>, DbError> {
    db.query_opt(
        "SELECT min(next_attempt) FROM bo_outbox WHERE state = 'queued'",
        &[],
    )?
    .map_or(Ok(None), |r| r.opt_int(0))
}

// ---------------------------------------------------------------- the task

/// `Notify::due` on PostgreSQL: the same answer as on SQLite, with the
/// alerts' cursor in place of the `alerted` marks.
pub fn due(db: Db<'_>, now: i64) -> Result<Due, TaskError> {
    if !installed(db)? {
        return Ok(Due::Never);
    }
    let r = db
        .query_opt(
            "SELECT (SELECT value FROM config WHERE name = 'email-send-method'),
                    EXISTS(SELECT 1 FROM bo_event WHERE eventid > coalesce(
                      (SELECT cursor FROM bo_ledger WHERE task = 'alerts' AND target = 'events'), 0)),
                    (SELECT min(next_attempt) FROM bo_outbox WHERE state = 'queued'),
                    (SELECT value FROM config WHERE name = 'email-digest-time'),
                    (SELECT value FROM config WHERE name = 'email-last-digest-boundary')",
            &[],
        )?
        .unwrap_or_default();
    debug_assert_eq!(
        (TASK, ALERTS, LAST_DIGEST),
        ("alerts", "events", "email-last-digest-boundary")
    );
    if r.opt_text(0)?
        .as_deref()
        .is_none_or(|m| m.trim().eq_ignore_ascii_case("off"))
    {
        return Ok(Due::Never);
    }
    if r.int(1)? != 0 {
        return Ok(Due::Now);
    }
    let send = match r.opt_int(2)? {
        Some(t) if t <= now => Due::Now,
        Some(t) => Due::At(t),
        None => Due::Never,
    };
    let digest = r
        .opt_text(3)?
        .and_then(|t| DigestTime::parse(&t).ok())
        .unwrap_or_default()
        .digest_due(r.opt_text(4)?.and_then(|v| v.trim().parse().ok()), now)
        .task_due();
    Ok(send.earliest(digest))
}

/// The project's name for subjects: `project-name`, else the schema's.
fn project(db: Db<'_>) -> Result<String, DbError> {
    if let Some(n) = db
        .config_get("project-name")?
        .filter(|n| !n.trim().is_empty())
    {
        return Ok(n
            .trim()
            .chars()
            .map(|c| if c.is_whitespace() { '-' } else { c })
            .collect());
    }
    db.query_opt("SELECT CAST(current_schema() AS TEXT)", &[])?
        .map_or(Ok(String::new()), |r| r.text(0))
}

/// `Notify::run` on PostgreSQL (its `due` said now).
pub fn run(db: Db<'_>, term: u64, now: i64) -> Result<u64, TaskError> {
    if !installed(db)? {
        return Ok(0);
    }
    let cfg = match EmailConfig::load_db(db) {
        Ok(c) if c.method == Method::Off => return Ok(0),
        Ok(c) => c,
        Err(problems) => return Err(problems.join("; ").into()),
    };
    let project = project(db)?;
    while compose_alerts(db, &cfg, &project, now, term)? == EVENT_BATCH as usize {}
    compose_digests(db, &cfg, &project, now, term)?;
    if next_due(db)?.is_none_or(|t| t > now) {
        return Ok(0);
    }
    let mut transport = cfg.transport()?;
    let d = deliver(db, &cfg, transport.as_mut(), now, term)?;
    if d.sent == 0 && (d.retry > 0 || d.dead > 0) {
        return Err(format!(
            "{} to retry, {} dead: {}",
            d.retry,
            d.dead,
            d.last_error.unwrap_or_default()
        )
        .into());
    }
    Ok(d.sent)
}

/// (id, address, kinds, code) of the active subscribers of one mode.
fn active_subscribers(
    db: Db<'_>,
    digest: bool,
) -> Result<Vec<(i64, String, String, String)>, DbError> {
    db.query(
        "SELECT subscriberid, address, kinds, code FROM bo_subscriber
          WHERE digest = ?1 AND verified <> 0 AND donotcall = 0 ORDER BY subscriberid",
        &[digest.into()],
    )?
    .iter()
    .map(|r| Ok((r.int(0)?, r.text(1)?, r.text(2)?, r.text(3)?)))
    .collect()
}

/// One batch of events after the alerts' cursor turned into queued
/// alerts, and the cursor moved, in one fenced transaction. Returns how
/// many events.
fn compose_alerts(
    db: Db<'_>,
    cfg: &EmailConfig,
    project: &str,
    now: i64,
    term: u64,
) -> Result<usize, DbError> {
    db.write(Some(term), |db| {
        let cursor = ledger::get(db, TASK, ALERTS)?.map_or(0, |e| e.cursor);
        let events = backoffice::events::after(db, cursor, EVENT_BATCH as usize)?;
        let Some(last) = events.last().map(|e| e.eventid) else {
            return Ok(0);
        };
        let fresh: Vec<&EventText> = events
            .iter()
            .filter(|e| e.time >= now.saturating_sub(FRESH_FOR))
            .collect();
        if !fresh.is_empty() {
            for (id, address, kinds, code) in &active_subscribers(db, false)? {
                let wanted: Vec<EventText> = fresh
                    .iter()
                    .filter(|e| subscribers::wants(kinds, &e.kind))
                    .map(|e| (*e).clone())
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let unsubscribe = cfg.unsubscribe_url(code);
                let groups: Vec<Vec<EventText>> = if cfg.one_per_event {
                    wanted.into_iter().map(|e| vec![e]).collect()
                } else {
                    vec![wanted]
                };
                for g in groups {
                    let c = compose::alert(project, &g, unsubscribe.as_deref());
                    queue(
                        db,
                        &outbox::New {
                            subscriberid: Some(*id),
                            address,
                            kind: "alert",
                            subject: &c.subject,
                            body: &c.body,
                            code: Some(code),
                        },
                        now,
                    )?;
                }
            }
        }
        ledger::succeeded(db, TASK, ALERTS, last, now, None)?;
        Ok(events.len())
    })
}

/// The digests, if the digest time has passed since the last one, and
/// their marks, in one fenced transaction (see the module docs for what
/// "not yet in a digest" means here). Returns the number queued.
fn compose_digests(
    db: Db<'_>,
    cfg: &EmailConfig,
    project: &str,
    now: i64,
    term: u64,
) -> Result<usize, DbError> {
    db.write(Some(term), |db| {
        let last: Option<i64> = db
            .config_get(LAST_DIGEST)?
            .and_then(|v| v.trim().parse().ok());
        let (from, to) = match cfg.digest_time.digest_due(last, now) {
            DigestDue::NotUntil(_) => return Ok(0),
            DigestDue::ClockBehind { reset_to } => {
                tracing::warn!(
                    ?last,
                    reset_to,
                    "the clock went back; digests resume at the next digest time"
                );
                db.config_set(LAST_DIGEST, &reset_to.to_string())?;
                return Ok(0);
            }
            DigestDue::Due {
                window_start,
                window_end,
            } => (window_start, window_end),
        };
        let since = if last.is_none() { from } else { i64::MIN };
        let cursor = ledger::get(db, TASK, DIGESTS)?.map_or(0, |e| e.cursor);
        let covered: i64 = db
            .config_get(DIGEST_COVERED)?
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(i64::MIN);
        let newest = db
            .query_opt(
                "SELECT CAST(coalesce(max(eventid), 0) AS BIGINT) FROM bo_event",
                &[],
            )?
            .map_or(Ok(0), |r| r.int(0))?;
        let rows = db.query(
            "SELECT eventid, kind, title, body, url, author, mtime FROM bo_event
              WHERE eventid <= ?1 AND (eventid > ?2 OR mtime >= ?3)
                AND mtime < ?4 AND mtime >= ?5
              ORDER BY mtime, eventid",
            &[
                newest.into(),
                cursor.into(),
                covered.into(),
                to.into(),
                since.into(),
            ],
        )?;
        let events: Vec<EventText> = rows
            .iter()
            .map(backoffice::events::event_from_row)
            .collect::<Result<_, DbError>>()?;
        let mut queued = 0;
        if !events.is_empty() {
            for (id, address, kinds, code) in &active_subscribers(db, true)? {
                let wanted: Vec<EventText> = events
                    .iter()
                    .filter(|e| subscribers::wants(kinds, &e.kind))
                    .take(DIGEST_MAX_EVENTS)
                    .cloned()
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let unsubscribe = cfg.unsubscribe_url(code);
                let c = compose::digest(project, &wanted, from, to, unsubscribe.as_deref());
                queue(
                    db,
                    &outbox::New {
                        subscriberid: Some(*id),
                        address,
                        kind: "digest",
                        subject: &c.subject,
                        body: &c.body,
                        code: Some(code),
                    },
                    now,
                )?;
                queued += 1;
            }
        }
        ledger::succeeded(db, TASK, DIGESTS, newest, now, None)?;
        db.config_set(DIGEST_COVERED, &covered.max(to).to_string())?;
        db.config_set(LAST_DIGEST, &to.to_string())?;
        Ok(queued)
    })
}

/// After this long without a look at the lease, a delivery run reads its
/// term before the next send: a run that was paused (SIGSTOP, a frozen
/// VM) longer than that stops instead of sending what its successor sends.
const TERM_CHECK_AFTER: Duration = Duration::from_millis(250);

fn term_now(db: Db<'_>) -> Result<u64, DbError> {
    let t = db
        .query_opt("SELECT term FROM bo_lease WHERE id = 1", &[])?
        .map_or(Ok(0), |r| r.int(0))?;
    Ok(u64::try_from(t).unwrap_or(0))
}

/// Sends the due messages and records each outcome, fenced on `term`:
/// for a transport that holds a message once it accepted it (`relay`,
/// `pipe`, `stdout`) before the next send ([`mark`]), committed
/// asynchronously (`synchronous_commit = off`: visible to every session at
/// once, on disk within a fraction of a second — the PostgreSQL
/// counterpart of the sent journal on SQLite, which no other host could
/// read); for the `db` method after each batch's COMMIT in the mail
/// database, and for `dir` (where a message sent again under its name is
/// no duplicate: the file is never replaced) every
/// [`outbox::COMMIT_EVERY`] messages. So a worker killed, paused or taken
/// over re-sends at most the message it was sending (its successor sends
/// it again, with the same Message-ID; `dir`: the messages of its batch,
/// onto the same file names), and a fenced worker stops at its next
/// record.
fn deliver(
    db: Db<'_>,
    cfg: &EmailConfig,
    transport: &mut dyn Transport,
    now: i64,
    term: u64,
) -> Result<Delivered, DbError> {
    // The marks of each message are committed asynchronously (see
    // `mark`); the session's setting is restored whatever happens, as the
    // session goes on with other tasks or schemas.
    db.execute("SET synchronous_commit TO off", &[])?;
    let out = deliver_all(db, cfg, transport, now, term);
    transport.finish();
    if let Err(e) = db.execute("RESET synchronous_commit", &[]) {
        tracing::warn!(error = %e, "cannot reset synchronous_commit");
    }
    out
}

/// Records one message's outcome before the next send. A success is one
/// statement, its own transaction, fenced inside it: it reads the lease row
/// `FOR SHARE` (as [`Db::write`]'s check does, so a takeover waits for it)
/// and changes nothing unless the lease still carries `term` — one round
/// trip instead of a transaction's five, which is what lets a run send
/// thousands a second while every outcome is committed before the next
/// send. Failures (rare) go through [`Db::write`].
fn mark(
    db: Db<'_>,
    m: &outbox::Due,
    outcome: Outcome,
    now: i64,
    term: u64,
    done: &mut Delivered,
) -> Result<(), DbError> {
    if !matches!(outcome, Outcome::Sent) {
        let one = [(m, outcome)];
        return db.write(Some(term), |db| record(db, &one, now, done));
    }
    let n = db.execute(
        "UPDATE bo_outbox SET state = 'sent', sent_time = ?2, attempts = attempts + 1
          WHERE msgid = ?1
            AND EXISTS(SELECT 1 FROM bo_lease WHERE id = 1 AND term = ?3 FOR SHARE)",
        &[
            m.msgid.into(),
            now.into(),
            i64::try_from(term).unwrap_or(i64::MAX).into(),
        ],
    )?;
    if n == 0 {
        let found = term_now(db)?;
        if found != term {
            return Err(DbError::Fenced {
                expected: term,
                found,
            });
        }
        // Otherwise the row went meanwhile (an operator's purge): nothing
        // to record.
    }
    done.sent = done.sent.saturating_add(n);
    Ok(())
}

fn deliver_all(
    db: Db<'_>,
    cfg: &EmailConfig,
    transport: &mut dyn Transport,
    now: i64,
    term: u64,
) -> Result<Delivered, DbError> {
    // Rows queued by plain SQL get their token, committed, before their
    // first attempt: every attempt then carries the same Message-ID.
    db.write(Some(term), |db| {
        db.execute(
            "UPDATE bo_outbox SET token = md5(random()::text || msgid::text || clock_timestamp()::text)
              WHERE token IS NULL AND state = 'queued'",
            &[],
        )
    })?;
    // One mark per message where a re-sent message would be a duplicate
    // (`relay`, `pipe`, `stdout`); per batch where the destination holds
    // messages only once committed (`db`) or where sending one again
    // changes nothing (`dir`: the file its id names is never replaced).
    let each = !transport.batched() && !transport.idempotent();
    let mut done = Delivered::default();
    let mut in_a_row = 0;
    let mut last_id = 0i64;
    let mut stop = false;
    let mut looked = Instant::now();
    while !stop {
        let batch: Vec<outbox::Due> = db
            .query(
                "SELECT msgid, token, gen, address, subject, body, code, attempts FROM bo_outbox
                  WHERE state = 'queued' AND next_attempt <= ?1 AND msgid > ?2
                  ORDER BY msgid LIMIT ?3",
                &[
                    now.into(),
                    last_id.into(),
                    (outbox::COMMIT_EVERY as i64).into(),
                ],
            )?
            .iter()
            .map(|r| {
                Ok(outbox::Due {
                    msgid: r.int(0)?,
                    token: r.text(1)?,
                    generation: r.int(2)?,
                    address: r.text(3)?,
                    subject: r.text(4)?,
                    body: r.text(5)?,
                    code: r.opt_text(6)?,
                    attempts: r.int(7)?,
                })
            })
            .collect::<Result<_, DbError>>()?;
        if batch.is_empty() {
            break;
        }
        let mut outcomes: Vec<(&outbox::Due, Outcome)> = Vec::with_capacity(batch.len());
        for m in &batch {
            // A run that was paused looks at the lease before it sends on.
            if looked.elapsed() >= TERM_CHECK_AFTER {
                let found = term_now(db)?;
                if found != term {
                    return Err(DbError::Fenced {
                        expected: term,
                        found,
                    });
                }
                looked = Instant::now();
            }
            last_id = m.msgid;
            let outcome = outbox::attempt(cfg, transport, m, now);
            in_a_row = match &outcome {
                Outcome::Retry(_) => in_a_row + 1,
                _ => 0,
            };
            if each {
                mark(db, m, outcome, now, term, &mut done)?;
            } else {
                outcomes.push((m, outcome));
            }
            if in_a_row >= outbox::GIVE_UP_AFTER {
                stop = true;
                break;
            }
        }
        if !each {
            // The batch's messages count as sent only once the mail
            // database committed them (`dir`: nothing to commit).
            if let Err(e) = transport.commit() {
                for (m, o) in &mut outcomes {
                    if matches!(o, Outcome::Sent) {
                        *o = outbox::failed(e.clone(), m, cfg);
                    }
                }
            }
            db.write(Some(term), |db| record(db, &outcomes, now, &mut done))?;
        }
    }
    Ok(done)
}

/// The outcomes of one message or one batch: the sent ones in one
/// statement, failures each (only if no operator retried the message meanwhile, as on SQLite).
fn record(
    db: Db<'_>,
    outcomes: &[(&outbox::Due, Outcome)],
    now: i64,
    done: &mut Delivered,
) -> Result<(), DbError> {
    let sent: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Sent))
        .map(|(m, _)| m.msgid.to_string())
        .collect();
    if !sent.is_empty() {
        let n = db.execute(
            "UPDATE bo_outbox SET state = 'sent', sent_time = ?2, attempts = attempts + 1
              WHERE msgid = ANY(CAST(string_to_array(?1, ',') AS bigint[]))",
            &[sent.join(",").into(), now.into()],
        )?;
        done.sent = done.sent.saturating_add(n);
    }
    for (m, o) in outcomes {
        match o {
            Outcome::Sent => {}
            Outcome::Retry(e) => {
                done.last_error = Some(e.clone());
                let n = db.execute(
                    "UPDATE bo_outbox SET attempts = attempts + 1, last_error = ?2, next_attempt = ?3
                      WHERE msgid = ?1 AND gen = ?4",
                    &[
                        m.msgid.into(),
                        e.into(),
                        now.saturating_add(outbox::retry_delay(
                            m.attempts.saturating_add(1),
                            m.msgid,
                        ))
                        .into(),
                        m.generation.into(),
                    ],
                )?;
                done.retry = done.retry.saturating_add(n);
            }
            Outcome::Dead(e) => {
                done.last_error = Some(e.clone());
                let n = db.execute(
                    "UPDATE bo_outbox SET state = 'dead', attempts = attempts + 1, last_error = ?2
                      WHERE msgid = ?1 AND gen = ?3",
                    &[m.msgid.into(), e.into(), m.generation.into()],
                )?;
                done.dead = done.dead.saturating_add(n);
            }
        }
    }
    Ok(())
}

/// `Notify::events_done` on PostgreSQL: just below the lowest event the
/// alerts (after their cursor, within a day) or the digests (not yet in a
/// digest, while a digest subscriber exists) may still need.
pub fn events_done(db: Db<'_>) -> Result<Option<i64>, TaskError> {
    let newest = db
        .query_opt(
            "SELECT CAST(coalesce(max(eventid), 0) AS BIGINT) FROM bo_event",
            &[],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    let now = db_now(db)?;
    let alerts = ledger::get(db, TASK, ALERTS)?.map_or(0, |e| e.cursor);
    let unalerted = db
        .query_opt(
            "SELECT min(eventid) FROM bo_event WHERE eventid > ?1 AND mtime >= ?2",
            &[alerts.into(), now.saturating_sub(FRESH_FOR).into()],
        )?
        .map_or(Ok(None), |r| r.opt_int(0))?;
    let digest_subscribers = installed(db)?
        && db
            .query_opt(
                "SELECT EXISTS(SELECT 1 FROM bo_subscriber WHERE digest <> 0 AND donotcall = 0)",
                &[],
            )?
            .map_or(Ok(0), |r| r.int(0))?
            != 0;
    let undigested = if digest_subscribers {
        let cursor = ledger::get(db, TASK, DIGESTS)?.map_or(0, |e| e.cursor);
        let covered: i64 = db
            .config_get(DIGEST_COVERED)?
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(i64::MIN);
        db.query_opt(
            "SELECT min(eventid) FROM bo_event WHERE eventid > ?1 OR mtime >= ?2",
            &[cursor.into(), covered.into()],
        )?
        .map_or(Ok(None), |r| r.opt_int(0))?
    } else {
        None
    };
    Ok(Some(match (unalerted, undigested) {
        (None, None) => newest,
        (a, d) => a
            .into_iter()
            .chain(d)
            .min()
            .unwrap_or(newest)
            .saturating_sub(1),
    }))
}

/// `Notify::status` on PostgreSQL.
pub fn status(db: Db<'_>, now: i64) -> TaskStatus {
    let mut st = TaskStatus::default();
    match EmailConfig::load_db(db) {
        Ok(c) if c.method == Method::Off => st
            .info
            .push("email-send-method is off: nothing is sent".into()),
        Ok(_) => {}
        Err(p) => st.problems.extend(p),
    }
    if !installed(db).unwrap_or(false) {
        return st;
    }
    let Ok((queued, sent, dead)) = outbox_counts(db) else {
        return st;
    };
    st.gauges.extend([
        Gauge::new("outbox", "queued", queued),
        Gauge::new("outbox", "sent", sent),
        Gauge::new("outbox", "dead", dead),
    ]);
    let next = match next_due(db) {
        Ok(Some(t)) if t > now => format!(", next attempt {}", backoffice::clock::relative(t, now)),
        _ => String::new(),
    };
    st.info.push(format!(
        "outbox: {queued} queued{next}, {sent} sent, {dead} dead"
    ));
    if dead > 0 {
        st.problems.push(format!(
            "{dead} dead message(s): see `backoffice outbox list --dead`"
        ));
        for r in outbox_list(db, Some("dead"), 3).unwrap_or_default() {
            st.problems.push(format!(
                "  dead #{} to {}: {}",
                r.msgid,
                r.address,
                r.last_error.unwrap_or_default()
            ));
        }
    }
    if let Ok(Some(r)) = db.query_opt(
        "SELECT last_error FROM bo_outbox WHERE state = 'queued' AND last_error IS NOT NULL
          ORDER BY msgid DESC LIMIT 1",
        &[],
    ) {
        if let Ok(e) = r.text(0) {
            st.problems.push(format!("last delivery failure: {e}"));
        }
    }
    st
}
