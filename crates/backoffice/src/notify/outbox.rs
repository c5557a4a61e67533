//! The outbox: every message before it is sent, until it is sent or dead.
//!
//! A message is written here in the same transaction that marks its events
//! handled, so composing is all-or-nothing. Delivery then takes the queued
//! messages that are due, sends each through the run's transport, and
//! records the outcomes in batches:
//!
//! * sent → `state = 'sent'`, `sent_time`;
//! * a transient failure → `attempts + 1`, `last_error`, and a later
//!   `next_attempt` (1 min, 2, 4, … capped at 6 h, spread by a little
//!   jitter so a relay that comes back is not hit by everything at once);
//! * a permanent failure, or `email-max-attempts` reached → `state = 'dead'`,
//!   with its reason, until `backoffice outbox retry`.
//!
//! Outcomes are committed every [`COMMIT_EVERY`] messages: a crash between a
//! send and its commit re-sends at most those messages, once each, with the
//! same `Message-ID` (derived from the row, see [`message_id`]), which mail
//! clients recognise as a duplicate; the `dir` method even overwrites the
//! same file. After three transient failures in a row (the relay is down)
//! the run stops early: the rest wait for the next run, not for time-outs.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::config::EmailConfig;
use super::message::{self, Parts};
use super::send::Transport;

/// Outcomes are committed after this many sends.
pub const COMMIT_EVERY: usize = 200;
/// Transient failures in a row after which a run stops sending.
const GIVE_UP_AFTER: usize = 3;
/// First retry delay, seconds.
const FIRST_RETRY: i64 = 60;
/// Longest retry delay, seconds.
const MAX_RETRY: i64 = 6 * 3600;

/// One outbox row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Row id.
    pub msgid: i64,
    /// Recipient.
    pub address: String,
    /// `alert` or `digest`.
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
    /// `alert` or `digest`.
    pub kind: &'a str,
    /// Subject (without prefix).
    pub subject: &'a str,
    /// Body.
    pub body: &'a str,
    /// The subscriber's unsubscribe code.
    pub code: Option<&'a str>,
}

/// Queues a message, due now.
pub fn queue(conn: &Connection, m: &New<'_>, now: i64) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO bo_outbox(subscriberid, address, kind, subject, body, code, ctime, next_attempt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![m.subscriberid, m.address, m.kind, m.subject, m.body, m.code, now])?;
    Ok(conn.last_insert_rowid())
}

/// This repository's Message-ID salt (random, made once), so ids from two
/// repositories never collide.
pub fn salt(conn: &Connection) -> rusqlite::Result<String> {
    const ROW: &str = "email-message-id-salt";
    if let Some(s) = crate::repo::config_get(conn, ROW)? {
        return Ok(s);
    }
    let s: String = conn.query_row("SELECT lower(hex(randomblob(6)))", [], |r| r.get(0))?;
    conn.execute(
        "INSERT OR IGNORE INTO config(name, value, mtime) VALUES (?1, ?2, ?3)",
        params![ROW, s, crate::clock::now()],
    )?;
    Ok(crate::repo::config_get(conn, ROW)?.unwrap_or(s))
}

/// The stable Message-ID of outbox row `msgid`.
pub fn message_id(msgid: i64, salt: &str, domain: &str) -> String {
    format!("<bo.{msgid}.{salt}@{domain}>")
}

/// Seconds to wait before attempt `attempts + 1`, spread by `msgid`.
pub fn backoff(attempts: i64, msgid: i64) -> i64 {
    let base = FIRST_RETRY
        .saturating_mul(1i64 << (attempts - 1).clamp(0, 20))
        .min(MAX_RETRY);
    base + (msgid.unsigned_abs().wrapping_mul(7919) % (base as u64 / 10 + 1)) as i64
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

enum Outcome {
    Sent,
    Retry(String),
    Dead(String),
}

/// Sends the due messages. Never holds the write lock while sending.
pub fn deliver(
    conn: &Connection,
    cfg: &EmailConfig,
    transport: &mut dyn Transport,
    now: i64,
) -> rusqlite::Result<Delivered> {
    let salt = salt(conn)?;
    let mut done = Delivered::default();
    let mut in_a_row = 0;
    let mut last_id = 0i64;
    'batches: loop {
        let batch: Vec<(i64, String, String, String, Option<String>, i64)> = {
            let mut s = conn.prepare_cached(
                "SELECT msgid, address, subject, body, code, attempts FROM bo_outbox
                 WHERE state = 'queued' AND next_attempt <= ?1 AND msgid > ?2
                 ORDER BY msgid LIMIT ?3",
            )?;
            s.query_map(params![now, last_id, COMMIT_EVERY as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        if batch.is_empty() {
            break;
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for (msgid, address, subject, body, code, attempts) in &batch {
            last_id = *msgid;
            let id = message_id(*msgid, &salt, cfg.domain());
            let subject = format!("{} {subject}", cfg.subname);
            let unsubscribe = code.as_deref().and_then(|c| cfg.unsubscribe_url(c));
            let parts = Parts {
                from: &cfg.from,
                to: address,
                subject: &subject,
                body,
                message_id: &id,
                date: now,
                list_id: Some(&cfg.list_id),
                unsubscribe: unsubscribe.as_deref(),
            };
            let outcome = match message::build(&parts) {
                Err(e) => Outcome::Dead(e),
                Ok((env, raw)) => {
                    match transport.send_with_id(&format!("{msgid:010}-{salt}"), &env, &raw) {
                        Ok(()) => Outcome::Sent,
                        Err(e) if e.permanent || attempts + 1 >= cfg.max_attempts => {
                            Outcome::Dead(e.message)
                        }
                        Err(e) => Outcome::Retry(e.message),
                    }
                }
            };
            in_a_row = match &outcome {
                Outcome::Retry(_) => in_a_row + 1,
                _ => 0,
            };
            outcomes.push((*msgid, *attempts, outcome));
            if in_a_row >= GIVE_UP_AFTER {
                record(conn, &outcomes, now, &mut done)?;
                break 'batches;
            }
        }
        record(conn, &outcomes, now, &mut done)?;
    }
    transport.finish();
    Ok(done)
}

fn record(
    conn: &Connection,
    outcomes: &[(i64, i64, Outcome)],
    now: i64,
    done: &mut Delivered,
) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    for (msgid, attempts, o) in outcomes {
        match o {
            Outcome::Sent => {
                done.sent += 1;
                tx.prepare_cached(
                    "UPDATE bo_outbox SET state = 'sent', sent_time = ?2, attempts = attempts + 1 WHERE msgid = ?1",
                )?
                .execute(params![msgid, now])?;
            }
            Outcome::Retry(e) => {
                done.retry += 1;
                done.last_error = Some(e.clone());
                tx.prepare_cached(
                    "UPDATE bo_outbox SET attempts = attempts + 1, last_error = ?2, next_attempt = ?3 WHERE msgid = ?1",
                )?
                .execute(params![msgid, e, now + backoff(attempts + 1, *msgid)])?;
            }
            Outcome::Dead(e) => {
                done.dead += 1;
                done.last_error = Some(e.clone());
                tx.prepare_cached(
                    "UPDATE bo_outbox SET state = 'dead', attempts = attempts + 1, last_error = ?2 WHERE msgid = ?1",
                )?
                .execute(params![msgid, e])?;
            }
        }
    }
    tx.commit()
}

/// Queue depths: (queued, sent, dead).
pub fn counts(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    match conn.query_row(
        "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'sent'),
                count(*) FILTER (WHERE state = 'dead') FROM bo_outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    ) {
        Err(e) if crate::repo::is_no_such_table(&e) => Ok((0, 0, 0)),
        r => r,
    }
}

/// Rows in a state (or all), newest first, at most `limit`.
pub fn list(conn: &Connection, state: Option<&str>, limit: i64) -> rusqlite::Result<Vec<Row>> {
    let mut s = match conn.prepare(
        "SELECT msgid, address, kind, subject, state, attempts, next_attempt, last_error, ctime, sent_time
         FROM bo_outbox WHERE ?1 IS NULL OR state = ?1 ORDER BY msgid DESC LIMIT ?2",
    ) {
        Err(e) if crate::repo::is_no_such_table(&e) => return Ok(Vec::new()),
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
pub fn retry(conn: &Connection, msgid: Option<i64>, now: i64) -> rusqlite::Result<usize> {
    no_outbox_is_empty(conn.execute(
        "UPDATE bo_outbox SET state = 'queued', attempts = 0, next_attempt = ?2
         WHERE (?1 IS NULL AND state = 'dead') OR (msgid = ?1 AND state IN ('dead', 'queued'))",
        params![msgid, now],
    ))
}

/// A repository that never had an outbox has no messages in it.
fn no_outbox_is_empty(r: rusqlite::Result<usize>) -> rusqlite::Result<usize> {
    match r {
        Err(e) if crate::repo::is_no_such_table(&e) => Ok(0),
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

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!((60..=66).contains(&backoff(1, 5)));
        assert!((120..=132).contains(&backoff(2, 5)));
        assert!((MAX_RETRY..=MAX_RETRY + MAX_RETRY / 10).contains(&backoff(30, 5)));
        assert!((MAX_RETRY..=MAX_RETRY + MAX_RETRY / 10).contains(&backoff(i64::MAX, i64::MIN)));
    }
}
