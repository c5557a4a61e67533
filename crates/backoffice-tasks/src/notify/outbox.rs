//! The outbox: every message before it is sent, until it is sent or dead.
//!
//! A message is written here in the same transaction that marks its events
//! handled, so composing is all-or-nothing. Delivery then takes the queued
//! messages that are due, sends each through the run's transport, and
//! records the outcomes:
//!
//! * sent → `state = 'sent'`, `sent_time`;
//! * a transient failure → `attempts + 1`, `last_error`, and a later
//!   `next_attempt` by the engine's one retry policy,
//!   [`backoffice::ledger::Backoff`] (1 min, 2, 4, … capped at 6 h, plus up
//!   to a tenth of jitter seeded by the message's id, so a relay that comes
//!   back is not hit by everything at once);
//! * a permanent failure, or `email-max-attempts` reached → `state = 'dead'`,
//!   with its reason, until `backoffice outbox retry`.
//!
//! # Identity
//!
//! Each message gets a random 128-bit **token** when it is queued, stored in
//! its row (`bo_outbox.token`). Its `Message-ID` and its `dir` file name are
//! derived from the token, never from the row id alone: row ids restart
//! after the highest rows are purged, and a copy of the repository
//! (`cp app.db other.db`) has the same row ids. The token is the same on
//! every attempt, so a message sent again after a crash carries the same
//! `Message-ID`, which mail clients recognise as a duplicate. Rows queued
//! without a token (plain SQL from another language, older versions) get
//! one, committed, before their first attempt.
//!
//! # When a message counts as sent
//!
//! Only once its destination holds it: the relay answered `250` to the end
//! of the data, the pipe command exited 0, the `.eml` file is in place, or —
//! for the `db` method, which writes a batch in one transaction — the mail
//! database's `COMMIT` succeeded ([`Transport::commit`]). A failed commit
//! turns every message of the batch into a transient failure with that
//! error.
//!
//! # Killed workers: at most one duplicate per connection
//!
//! Outcomes are committed to the repository every [`COMMIT_EVERY`] messages
//! (a commit per message costs an fsync: 150 messages/s in rollback-journal
//! mode on an ordinary disk). Between those commits, each message the
//! destination accepted is appended at once, with one `write(2)`, to a small
//! **sent journal** next to the repository (`REPO-bo-sent`, lines
//! `MSGID TOKEN`), before the next message is sent. The journal lives in
//! the operating system's page cache, which survives the death of the
//! process: a worker killed at any moment leaves every message it had
//! finished in the journal, and the next delivery run first marks those sent
//! ([`fold_journal`]). So a kill re-sends at most the one message in flight
//! on the connection. (A crash of the whole machine can lose the journal's
//! last writes; then at most one batch is sent again — duplicates, never a
//! loss.)
//!
//! # An operator's retry
//!
//! `backoffice outbox retry` bumps the row's `gen`. A run records a failure
//! only if `gen` is still what it read, so an operator's retry made while
//! the run was sending that message is never undone by the run's stale
//! counters. (A success is recorded whatever `gen` says: the message went.)
//!
//! After three transient failures in a row (the relay is down) the run
//! stops early: the rest wait for the next run, not for time-outs.
//!
//! # Why messages keep their own retry columns
//!
//! Hooks, webhooks and peers keep their retry state in the engine's retry
//! ledger ([`backoffice::ledger`]): each is a long-lived *target*, one row
//! that is tried again and again for as long as it exists. A message is a
//! queue item instead: it is tried until it is sent or dead, then purged,
//! and thousands may be queued at once. Its retry state (`attempts`,
//! `next_attempt`, `last_error`) therefore stays in its own `bo_outbox`
//! row, where the queue is read, claimed and updated in one statement per
//! message and purged with the message; a ledger row per message would
//! double the writes of every delivery and outlive purges. What messages
//! share with the ledger is the policy: the wait after a failure is
//! [`Backoff::delay`](backoffice::ledger::Backoff::delay), as for every
//! other retry in the backoffice.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::config::EmailConfig;
use super::message::{self, Parts};
use super::send::{SendError, Transport};
use backoffice::db::DbError;

/// Outcomes are committed after this many sends.
pub const COMMIT_EVERY: usize = 200;
/// Transient failures in a row after which a run stops sending.
pub(crate) const GIVE_UP_AFTER: usize = 3;

/// One outbox row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Row id.
    pub msgid: i64,
    /// Recipient.
    pub address: String,
    /// `alert`, `digest` or `confirm` (a sign-up confirmation).
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// `queued`, `sent` or `dead`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt may happen.
    pub next_attempt: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Created.
    pub ctime: i64,
    /// Sent.
    pub sent_time: Option<i64>,
}

/// A message to queue.
#[derive(Clone, Debug)]
pub struct New<'a> {
    /// Subscriber row, if any.
    pub subscriberid: Option<i64>,
    /// Recipient.
    pub address: &'a str,
    /// `alert`, `digest` or `confirm` (a sign-up confirmation).
    pub kind: &'a str,
    /// Subject (without prefix).
    pub subject: &'a str,
    /// Body.
    pub body: &'a str,
    /// The subscriber's unsubscribe code.
    pub code: Option<&'a str>,
}

/// Adds the columns later versions need (`token`, `gen`) to an outbox
/// created before them. Idempotent; cheap when they are there.
pub fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('bo_outbox')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if cols.is_empty() {
        return Ok(());
    }
    if !cols.iter().any(|c| c == "token") {
        conn.execute_batch("ALTER TABLE bo_outbox ADD COLUMN token TEXT")?;
    }
    if !cols.iter().any(|c| c == "gen") {
        conn.execute_batch("ALTER TABLE bo_outbox ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Runs `f`; if it failed because the outbox lacks a newer column, adds
/// the columns ([`upgrade`]) and runs it once more.
fn upgraded<T>(conn: &Connection, f: impl Fn() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    match f() {
        Err(e) if e.to_string().contains("column") => {
            upgrade(conn)?;
            f()
        }
        r => r,
    }
}

/// A new random token: 128 bits from the kernel (`/dev/urandom`), in hex.
/// Should that fail, SQLite's `randomblob`, itself seeded from the kernel.
pub(crate) fn new_token(conn: &Connection) -> rusqlite::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    let kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    match kernel {
        Ok(()) => Ok(b.iter().map(|x| format!("{x:02x}")).collect()),
        Err(_) => conn.query_row("SELECT lower(hex(randomblob(16)))", [], |r| r.get(0)),
    }
}

/// Queues a message, due now, with a new token.
pub fn queue(conn: &Connection, m: &New<'_>, now: i64) -> rusqlite::Result<i64> {
    let token = new_token(conn)?;
    upgraded(conn, || {
        conn.prepare_cached(
            "INSERT INTO bo_outbox(subscriberid, address, kind, subject, body, code, ctime, next_attempt, token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
        )?
        .execute(params![m.subscriberid, m.address, m.kind, m.subject, m.body, m.code, now, token])
    })?;
    Ok(conn.last_insert_rowid())
}

/// The Message-ID of the message with `token`.
pub fn message_id(token: &str, domain: &str) -> String {
    format!("<bo.{token}@{domain}>")
}

/// The `dir` file name (without `.eml`) of message `msgid` with `token`:
/// the row id first, so a folder lists in queue order; the token makes it
/// unique.
pub fn file_name(msgid: i64, token: &str) -> String {
    format!("{msgid:010}-{token}")
}

/// The sent journal of the repository at `repo` (see the module header).
pub fn journal_path(repo: &Path) -> PathBuf {
    let mut p = repo.as_os_str().to_owned();
    p.push("-bo-sent");
    PathBuf::from(p)
}

/// Seconds to wait after a message's `attempts`-th failed attempt: the
/// engine's retry policy, its jitter seeded by the message's id (the same
/// message spreads the same way on every attempt, messages queued together
/// differently).
pub(crate) fn retry_delay(attempts: i64, msgid: i64) -> i64 {
    backoffice::ledger::Backoff::default().delay(attempts, msgid as u64)
}

/// What one delivery run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Messages sent.
    pub sent: u64,
    /// Messages that failed and will be retried.
    pub retry: u64,
    /// Messages that are now dead.
    pub dead: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

pub(crate) enum Outcome {
    Sent,
    Retry(String),
    Dead(String),
}

/// One due message as read for sending.
pub(crate) struct Due {
    pub(crate) msgid: i64,
    pub(crate) token: String,
    pub(crate) generation: i64,
    pub(crate) address: String,
    pub(crate) subject: String,
    pub(crate) body: String,
    pub(crate) code: Option<String>,
    pub(crate) attempts: i64,
}

/// The sent journal of one delivery run: appended to after each message
/// its destination accepted, emptied once the outcomes are committed.
struct Journal {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
}

impl Journal {
    fn new(path: Option<&Path>) -> Journal {
        Journal {
            path: path.map(Path::to_owned),
            file: None,
        }
    }

    /// Appends `MSGID TOKEN` lines, in one write. A journal that cannot be
    /// written (a read-only folder) only widens the duplicate window back
    /// to one batch; it never stops delivery.
    fn append(&mut self, sent: &[(i64, &str)]) {
        let Some(path) = &self.path else { return };
        if sent.is_empty() {
            return;
        }
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
            {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::warn!(journal = %path.display(), error = %e, "cannot open the sent journal");
                    self.path = None;
                    return;
                }
            }
        }
        let mut text = String::new();
        for (msgid, token) in sent {
            text.push_str(&format!("{msgid} {token}\n"));
        }
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!(error = %e, "cannot write the sent journal");
            }
        }
    }

    /// Empties the journal: its lines are committed in the repository.
    fn clear(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
    }

    /// Removes the (empty) journal file at the end of the run.
    fn remove(&mut self) {
        if let (Some(_), Some(p)) = (self.file.take(), &self.path) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Marks sent the messages a killed run left in the sent journal at
/// `path`, then removes it. Returns how many rows it marked.
///
/// Fenced on `fence` like every progress write: a stale worker marks
/// nothing and leaves the journal for the current holder.
pub fn fold_journal(
    conn: &Connection,
    path: &Path,
    now: i64,
    fence: Option<u64>,
) -> Result<usize, DbError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(_) => return Ok(0),
    };
    let text = String::from_utf8_lossy(&text);
    let tx = conn.unchecked_transaction()?;
    let mut n = 0;
    // A line cut short by the kill has no newline, or a short token: the
    // row's token must match whole, so such a line marks nothing.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let Some((id, token)) = line.trim_end().split_once(' ') else {
            continue;
        };
        let Ok(id) = id.parse::<i64>() else { continue };
        n += tx
            .prepare_cached(
                "UPDATE bo_outbox SET state = 'sent', sent_time = ?3, attempts = attempts + 1
                 WHERE msgid = ?1 AND token = ?2 AND state = 'queued'",
            )?
            .execute(params![id, token, now])?;
    }
    super::task::check_fence(&tx, fence)?;
    tx.commit()?;
    let _ = std::fs::remove_file(path);
    if n > 0 {
        tracing::info!(n, "marked sent the messages a killed run had sent");
    }
    Ok(n)
}

/// Sends the due messages. Never holds the write lock while sending.
///
/// `journal` is the sent journal's path ([`journal_path`] of the
/// repository); `None` runs without one (outcomes then survive a kill only
/// at each batch's commit).
pub fn deliver(
    conn: &Connection,
    cfg: &EmailConfig,
    transport: &mut dyn Transport,
    now: i64,
    journal: Option<&Path>,
    fence: Option<u64>,
) -> Result<Delivered, DbError> {
    upgrade(conn)?;
    if let Some(j) = journal {
        fold_journal(conn, j, now, fence)?;
    }
    // Every message gets its token before its first attempt, committed,
    // so that every attempt carries the same one.
    conn.execute(
        "UPDATE bo_outbox SET token = lower(hex(randomblob(16)))
         WHERE token IS NULL AND state = 'queued'",
        [],
    )?;
    let mut journal = Journal::new(journal);
    let mut done = Delivered::default();
    let mut in_a_row = 0;
    let mut last_id = 0i64;
    let mut stop = false;
    while !stop {
        let batch: Vec<Due> = {
            let mut s = conn.prepare_cached(
                "SELECT msgid, token, gen, address, subject, body, code, attempts FROM bo_outbox
                 WHERE state = 'queued' AND next_attempt <= ?1 AND msgid > ?2
                 ORDER BY msgid LIMIT ?3",
            )?;
            s.query_map(params![now, last_id, COMMIT_EVERY as i64], |r| {
                Ok(Due {
                    msgid: r.get(0)?,
                    token: r.get(1)?,
                    generation: r.get(2)?,
                    address: r.get(3)?,
                    subject: r.get(4)?,
                    body: r.get(5)?,
                    code: r.get(6)?,
                    attempts: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        if batch.is_empty() {
            break;
        }
        let mut outcomes: Vec<(&Due, Outcome)> = Vec::with_capacity(batch.len());
        for m in &batch {
            last_id = m.msgid;
            let outcome = attempt(cfg, transport, m, now);
            // Held by the destination: into the journal before the next
            // message goes.
            if matches!(outcome, Outcome::Sent) && !transport.batched() {
                journal.append(&[(m.msgid, &m.token)]);
            }
            in_a_row = match &outcome {
                Outcome::Retry(_) => in_a_row + 1,
                _ => 0,
            };
            outcomes.push((m, outcome));
            if in_a_row >= GIVE_UP_AFTER {
                stop = true;
                break;
            }
        }
        // The batch's messages count as sent only once the destination
        // has them for good (the `db` method's COMMIT).
        match transport.commit() {
            Ok(()) => {
                if transport.batched() {
                    let sent: Vec<(i64, &str)> = outcomes
                        .iter()
                        .filter(|(_, o)| matches!(o, Outcome::Sent))
                        .map(|(m, _)| (m.msgid, m.token.as_str()))
                        .collect();
                    journal.append(&sent);
                }
            }
            Err(e) => {
                for (m, o) in &mut outcomes {
                    if matches!(o, Outcome::Sent) {
                        *o = failed(e.clone(), m, cfg);
                    }
                }
            }
        }
        // Fenced: a worker whose lease was taken over while it sent marks
        // nothing and stops here; the batch it sent stays queued (and in
        // the journal) for the next holder: at least once, same names and
        // Message-IDs.
        record(conn, &outcomes, now, &mut done, fence)?;
        journal.clear();
    }
    transport.finish();
    journal.remove();
    Ok(done)
}

/// One attempt at one message, on either store: built with its stable
/// Message-ID (from its token) and handed to the transport.
pub(crate) fn attempt(
    cfg: &EmailConfig,
    transport: &mut dyn Transport,
    m: &Due,
    now: i64,
) -> Outcome {
    let id = message_id(&m.token, cfg.domain());
    let subject = format!("{} {}", cfg.subname, m.subject);
    let unsubscribe = m.code.as_deref().and_then(|c| cfg.unsubscribe_url(c));
    let parts = Parts {
        from: &cfg.from,
        to: &m.address,
        subject: &subject,
        body: &m.body,
        message_id: &id,
        date: now,
        list_id: Some(&cfg.list_id),
        unsubscribe: unsubscribe.as_deref(),
    };
    match message::build(&parts) {
        Err(e) => Outcome::Dead(e),
        Ok((env, raw)) => match transport.send_with_id(&file_name(m.msgid, &m.token), &env, &raw) {
            Ok(()) => Outcome::Sent,
            Err(e) => failed(e, m, cfg),
        },
    }
}

/// The outcome of a failed attempt: dead if retrying cannot help or the
/// attempts are used up, else retried later.
pub(crate) fn failed(e: SendError, m: &Due, cfg: &EmailConfig) -> Outcome {
    if e.permanent || m.attempts.saturating_add(1) >= cfg.max_attempts {
        Outcome::Dead(e.message)
    } else {
        Outcome::Retry(e.message)
    }
}

fn record(
    conn: &Connection,
    outcomes: &[(&Due, Outcome)],
    now: i64,
    done: &mut Delivered,
    fence: Option<u64>,
) -> Result<(), DbError> {
    let tx = conn.unchecked_transaction()?;
    for (m, o) in outcomes {
        match o {
            Outcome::Sent => {
                done.sent += 1;
                tx.prepare_cached(
                    "UPDATE bo_outbox SET state = 'sent', sent_time = ?2, attempts = attempts + 1 WHERE msgid = ?1",
                )?
                .execute(params![m.msgid, now])?;
            }
            // Failures only if no operator retried the message meanwhile
            // (`gen` unchanged): their retry wins over our stale counters.
            Outcome::Retry(e) => {
                done.last_error = Some(e.clone());
                done.retry += tx
                    .prepare_cached(
                        "UPDATE bo_outbox SET attempts = attempts + 1, last_error = ?2, next_attempt = ?3
                         WHERE msgid = ?1 AND gen = ?4",
                    )?
                    .execute(params![
                        m.msgid,
                        e,
                        now.saturating_add(retry_delay(m.attempts.saturating_add(1), m.msgid)),
                        m.generation
                    ])? as u64;
            }
            Outcome::Dead(e) => {
                done.last_error = Some(e.clone());
                done.dead += tx
                    .prepare_cached(
                        "UPDATE bo_outbox SET state = 'dead', attempts = attempts + 1, last_error = ?2
                         WHERE msgid = ?1 AND gen = ?3",
                    )?
                    .execute(params![m.msgid, e, m.generation])? as u64;
            }
        }
    }
    super::task::check_fence(&tx, fence)?;
    tx.commit()?;
    Ok(())
}

/// Queue depths: (queued, sent, dead).
pub fn counts(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    match conn.query_row(
        "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'sent'),
                count(*) FILTER (WHERE state = 'dead') FROM bo_outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    ) {
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok((0, 0, 0)),
        r => r,
    }
}

/// Rows in a state (or all), newest first, at most `limit`.
pub fn list(conn: &Connection, state: Option<&str>, limit: i64) -> rusqlite::Result<Vec<Row>> {
    let mut s = match conn.prepare(
        "SELECT msgid, address, kind, subject, state, attempts, next_attempt, last_error, ctime, sent_time
         FROM bo_outbox WHERE ?1 IS NULL OR state = ?1 ORDER BY msgid DESC LIMIT ?2",
    ) {
        Err(e) if backoffice::repo::is_no_such_table(&e) => return Ok(Vec::new()),
        r => r?,
    };
    s.query_map(params![state, limit], |r| {
        Ok(Row {
            msgid: r.get(0)?,
            address: r.get(1)?,
            kind: r.get(2)?,
            subject: r.get(3)?,
            state: r.get(4)?,
            attempts: r.get(5)?,
            next_attempt: r.get(6)?,
            last_error: r.get(7)?,
            ctime: r.get(8)?,
            sent_time: r.get(9)?,
        })
    })?
    .collect()
}

/// Puts every dead message, or the one given (dead or waiting to retry),
/// back in the queue, due now, with attempts reset. Returns how many.
///
/// Each retried row's `gen` goes up, so a run sending it at this moment
/// does not record its stale failure over the retry (see the module
/// header).
pub fn retry(conn: &Connection, msgid: Option<i64>, now: i64) -> rusqlite::Result<usize> {
    no_outbox_is_empty(upgraded(conn, || {
        conn.execute(
            "UPDATE bo_outbox SET state = 'queued', attempts = 0, next_attempt = ?2, gen = gen + 1
             WHERE (?1 IS NULL AND state = 'dead') OR (msgid = ?1 AND state IN ('dead', 'queued'))",
            params![msgid, now],
        )
    }))
}

/// A repository that never had an outbox has no messages in it.
fn no_outbox_is_empty(r: rusqlite::Result<usize>) -> rusqlite::Result<usize> {
    match r {
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok(0),
        r => r,
    }
}

/// Deletes sent messages older than `before`, and dead ones too if `dead`.
pub fn purge(conn: &Connection, before: i64, dead: bool) -> rusqlite::Result<usize> {
    no_outbox_is_empty(conn.execute(
        "DELETE FROM bo_outbox WHERE (state = 'sent' AND sent_time < ?1) OR (?2 AND state = 'dead')",
        params![before, dead],
    ))
}

/// The newest failure recorded on a message still queued, if any.
pub fn last_error(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT last_error FROM bo_outbox WHERE state = 'queued' AND last_error IS NOT NULL
         ORDER BY msgid DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// The oldest queued message's next attempt, if any.
pub fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT min(next_attempt) FROM bo_outbox WHERE state = 'queued'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map(Option::flatten)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sent journal a killed run left: whole lines whose token matches
    /// a queued row mark it sent; a line cut short, a wrong token, or a row
    /// no longer queued change nothing; the journal is gone afterwards.
    #[test]
    fn fold_journal_marks_only_what_was_sent() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        super::super::install(&conn).unwrap();
        let m = New {
            subscriberid: None,
            address: "a@example.org",
            kind: "alert",
            subject: "s",
            body: "b",
            code: None,
        };
        let ids: Vec<i64> = (0..4).map(|_| queue(&conn, &m, 100).unwrap()).collect();
        let token = |id: i64| -> String {
            conn.query_row("SELECT token FROM bo_outbox WHERE msgid = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(token(ids[0]).len(), 32);
        assert_ne!(token(ids[0]), token(ids[1]));
        conn.execute(
            "UPDATE bo_outbox SET state = 'dead' WHERE msgid = ?1",
            [ids[3]],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db-bo-sent");
        let cut = &token(ids[2])[..20];
        std::fs::write(
            &path,
            format!(
                "{} {}\n{} {}\n{} {}\n{} {cut}",
                ids[0],
                token(ids[0]),
                ids[1],
                token(ids[0]), // someone else's token
                ids[3],
                token(ids[3]),
                ids[2],
            ),
        )
        .unwrap();
        assert_eq!(fold_journal(&conn, &path, 200, None).unwrap(), 1);
        let states: Vec<String> = conn
            .prepare("SELECT state FROM bo_outbox ORDER BY msgid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(states, ["sent", "queued", "queued", "dead"]);
        assert!(!path.exists());
        assert_eq!(fold_journal(&conn, &path, 300, None).unwrap(), 0);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        const MAX: i64 = 6 * 3600;
        assert!((60..=66).contains(&retry_delay(1, 5)));
        assert!((120..=132).contains(&retry_delay(2, 5)));
        assert!((MAX..=MAX + MAX / 10).contains(&retry_delay(30, 5)));
        assert!((MAX..=MAX + MAX / 10).contains(&retry_delay(i64::MAX, i64::MIN)));
        assert!((60..=66).contains(&retry_delay(i64::MIN, -1)));
        // Messages that failed together retry at different moments.
        let spread: std::collections::HashSet<i64> = (0..50).map(|id| retry_delay(3, id)).collect();
        assert!(spread.len() > 5, "{spread:?}");
    }
}
