//! The event log: what happened in the application, for the tasks that
//! react to it.
//!
//! An application **publishes** an event ([`publish`]) inside its own
//! transaction, so the event commits or rolls back with the data it is
//! about; any language can do the same with plain SQL:
//!
//! ```sql
//! INSERT INTO bo_event(kind, title, body, url, author, mtime)
//! VALUES ('checkin', 'Fix the parser', '', NULL, 'alice', strftime('%s','now'));
//! ```
//!
//! Consumers (alerts and digests, hooks, webhooks, a host's own task) read
//! the log in `eventid` order after a cursor of their own
//! ([`events_after`]), so each consumes at its own pace and none can make
//! another miss an event. Installing the log ([`install`]) creates the
//! `bo_event` table and its indexes, nothing else. The `alerted` and
//! `digested` columns are the alerts task's marks, kept in this table for
//! compatibility with repositories of earlier versions.
//!
//! Events are bounded ([`MAX_TITLE`] and the rest): an event over a limit
//! is refused, naming the field, never cut or stored as sent.
//!
//! # Retention
//!
//! The log is kept forever unless the `event-retention-days` setting says
//! otherwise. Then, at most once a day, a worker run deletes ([`purge`])
//! the events older than that many days (by their time, `mtime`) that
//! every task reading the log is done with ([`Task::events_done`], the
//! minimum over the tasks: [`Tasks::events_done`]): an event a failing
//! hook, a dead webhook endpoint or an unsent digest still needs stays,
//! whatever its age. The newest event always stays too (see [`purge`]).
//!
//! [`Task::events_done`]: crate::Task::events_done
//! [`Tasks::events_done`]: crate::Tasks::events_done
//!
//! ```
//! use backoffice::events::{self, Event};
//!
//! let conn = rusqlite::Connection::open_in_memory()?;
//! let ev = Event { kind: "wiki".into(), title: "Home edited".into(), ..Event::default() };
//! let id = events::publish(&conn, &ev)?;
//! // A consumer reads after its cursor (0: from the start), oldest first.
//! let new = events::events_after(&conn, 0, 100)?;
//! assert_eq!((new.len(), new[0].eventid, new[0].title.as_str()), (1, id, "Home edited"));
//! assert!(events::events_after(&conn, id, 100)?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rusqlite::{Connection, params};

/// The event table and its indexes. `IF NOT EXISTS` throughout:
/// installing is idempotent and happens on first use.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bo_event(
  eventid INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,
  title TEXT NOT NULL,
  body TEXT NOT NULL DEFAULT '',
  url TEXT,
  author TEXT,
  mtime INTEGER NOT NULL,
  alerted INTEGER NOT NULL DEFAULT 0,
  digested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS bo_event_new ON bo_event(eventid) WHERE alerted = 0;
CREATE INDEX IF NOT EXISTS bo_event_undigested ON bo_event(mtime) WHERE digested = 0;
CREATE INDEX IF NOT EXISTS bo_event_mtime ON bo_event(mtime);
";

/// Creates the event table if it is missing.
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// An event as stored in `bo_event`, for the tasks that consume events
/// (alerts and digests, hooks, webhooks). It serialises to the JSON that
/// hooks read on stdin and webhooks receive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredEvent {
    /// `bo_event.eventid`: events are consumed in this order.
    pub eventid: i64,
    /// The kind.
    pub kind: String,
    /// The title (one line).
    pub title: String,
    /// The body.
    pub body: String,
    /// The link, if any.
    pub url: Option<String>,
    /// Who, if known.
    pub author: Option<String>,
    /// When, Unix seconds.
    pub time: i64,
}

/// The `bo_event` columns [`stored_event`] reads, in its order.
pub const EVENT_COLUMNS: &str = "eventid, kind, title, body, url, author, mtime";

/// Reads a row selected with [`EVENT_COLUMNS`].
pub fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        eventid: r.get(0)?,
        kind: r.get(1)?,
        title: r.get(2)?,
        body: r.get(3)?,
        url: r.get(4)?,
        author: r.get(5)?,
        time: r.get(6)?,
    })
}

/// Up to `limit` events after `cursor`, oldest first.
pub fn events_after(
    conn: &Connection,
    cursor: i64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM bo_event WHERE eventid > ?1 ORDER BY eventid LIMIT ?2"
    ))?
    .query_map(params![cursor, limit as i64], stored_event)?
    .collect()
}

/// Up to `limit` events after `cursor`, oldest first, each with its uid
/// (empty where [`ensure_uid`] was never called).
pub fn events_after_with_uid(
    db: &Connection,
    cursor: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(StoredEvent, String)>> {
    db.prepare_cached(&format!(
        "SELECT {}, coalesce(uid, '') FROM bo_event WHERE eventid > ?1 ORDER BY eventid LIMIT ?2",
        EVENT_COLUMNS
    ))?
    .query_map(params![cursor, limit as i64], |r| {
        Ok((stored_event(r)?, r.get::<_, String>(7)?))
    })?
    .collect()
}

/// Gives `bo_event` its `uid` column (random, minted per event when it is
/// published, by a trigger, and stored with it) if it lacks one. A consumer
/// that needs an id unique to an event forever (webhook delivery ids)
/// calls this when it is set up, and reads the uid with
/// [`events_after_with_uid`]. Event ids alone are not enough: event ids restart after the newest events are purged,
/// and a copy of the repository (`cp app.db other.db`) has the original's
/// endpoints (salt and id) and event ids, but each repository mints its own
/// uids for the events published from then on, so a delivery id is never
/// used for two different events.
pub fn ensure_uid(conn: &Connection) -> rusqlite::Result<()> {
    const READY: &str = "SELECT EXISTS(SELECT 1 FROM pragma_table_info('bo_event') WHERE name = 'uid')
            AND EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND name = 'bo_event_uid')";
    if conn.query_row(READY, [], |r| r.get::<_, bool>(0))? {
        return Ok(());
    }
    // Two processes may both find it missing: the change is made under the
    // write lock, after looking again (that read also reloads a schema
    // another process changed since this connection last looked).
    let upgrade = || -> rusqlite::Result<()> {
        if conn.query_row(READY, [], |r| r.get::<_, bool>(0))? {
            return Ok(());
        }
        let has_column: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('bo_event') WHERE name = 'uid')",
            [],
            |r| r.get(0),
        )?;
        if !has_column {
            conn.execute_batch("ALTER TABLE bo_event ADD COLUMN uid TEXT")?;
        }
        conn.execute_batch(
            "UPDATE bo_event SET uid = lower(hex(randomblob(8))) WHERE uid IS NULL;
             CREATE TRIGGER IF NOT EXISTS bo_event_uid AFTER INSERT ON bo_event
             WHEN new.uid IS NULL BEGIN
               UPDATE bo_event SET uid = lower(hex(randomblob(8))) WHERE eventid = new.eventid;
             END;",
        )
    };
    crate::repo::in_write(conn, upgrade)
}

/// The newest event's id; 0 if there is none (or no event table).
pub fn newest(conn: &Connection) -> rusqlite::Result<i64> {
    match conn.prepare_cached("SELECT coalesce(max(eventid), 0) FROM bo_event") {
        Ok(mut s) => s.query_row([], |r| r.get(0)),
        Err(e) if crate::repo::is_no_such_table(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Events [`purge`] deletes per transaction.
pub const PURGE_BATCH: usize = 1000;

/// The `config` row holding when the engine last purged the event log
/// (Unix seconds), so it does so at most once a day.
pub const PURGE_ROW: &str = "backoffice-event-purge";

/// Deletes the events older than `before_mtime` (`mtime < before_mtime`)
/// whose id is at most `upto_eventid`, at most `limit` of them, oldest id
/// first; returns how many. Nothing if there is no event table.
///
/// It deletes in batches of [`PURGE_BATCH`], each in a short write
/// transaction of its own, so the application never waits long for the
/// write lock; each is one of the backoffice's own writes
/// ([`crate::writes::own_write`]), so replication does not take a purge for
/// a change made by the application.
///
/// **The newest event is never deleted**, whatever the bounds say: event
/// ids are `INTEGER PRIMARY KEY` without `AUTOINCREMENT` (the table's
/// shape since the first release), so SQLite gives a new event the
/// highest id plus one; were the newest deleted, the next event would get
/// an id again that consumers' cursors are already past, and they would
/// never see it.
///
/// A caller passes as `upto_eventid` what every consumer is done with
/// ([`Tasks::events_done`](crate::Tasks::events_done)); the engine does so
/// for `event-retention-days`.
pub fn purge(
    conn: &Connection,
    before_mtime: i64,
    upto_eventid: i64,
    limit: usize,
) -> rusqlite::Result<u64> {
    if !conn.table_exists(None, "bo_event")? {
        return Ok(0);
    }
    let mut deleted = 0u64;
    // Every event with an id up to `after` was looked at by an earlier
    // batch: deleted, or too young. The next batch starts above it, so a
    // young event with a low id is not read again by every batch.
    let mut after = i64::MIN;
    loop {
        let room = limit
            .saturating_sub(usize::try_from(deleted).unwrap_or(usize::MAX))
            .min(PURGE_BATCH);
        if room == 0 {
            break;
        }
        let batch = crate::writes::own_write(conn, |c| -> rusqlite::Result<Option<(i64, u64)>> {
            // Read under the write lock: nothing is published in between.
            let Some(newest) = c
                .prepare_cached("SELECT max(eventid) FROM bo_event")?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?
            else {
                return Ok(None);
            };
            let top = upto_eventid.min(newest.saturating_sub(1));
            // `+mtime`: walk the primary key in id order (the bound on ids
            // is the tight one), not the `mtime` index.
            let last: Option<i64> = c
                .prepare_cached(
                    "SELECT max(eventid) FROM (SELECT eventid FROM bo_event
                     WHERE eventid > ?1 AND eventid <= ?2 AND +mtime < ?3
                     ORDER BY eventid LIMIT ?4)",
                )?
                .query_row(params![after, top, before_mtime, room as i64], |r| r.get(0))?;
            let Some(last) = last else {
                return Ok(None);
            };
            let n = c
                .prepare_cached(
                    "DELETE FROM bo_event WHERE eventid > ?1 AND eventid <= ?2 AND +mtime < ?3",
                )?
                .execute(params![after, last, before_mtime])?;
            Ok(Some((last, n as u64)))
        })?;
        let Some((last, n)) = batch else {
            break;
        };
        deleted = deleted.saturating_add(n);
        after = last;
        if n < room as u64 {
            break;
        }
    }
    Ok(deleted)
}

/// The newest `limit` events, newest first (none if nothing was ever
/// published). For status pages.
pub fn recent_events(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
    let stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM bo_event ORDER BY eventid DESC LIMIT ?1"
    ));
    match stmt {
        Ok(mut s) => s.query_map([limit as i64], stored_event)?.collect(),
        Err(e) if crate::repo::is_no_such_table(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

// The limits on an event's fields: the one definition that `publish` (and
// so the CLI's `publish` and the web API) enforces. An event over a limit is
// refused, naming the field, rather than cut or stored as sent: a 900 KB
// title or a `time` of i64::MAX would otherwise travel into every alert,
// digest, hook and webhook built from it, and into arithmetic on times.

/// Longest title, in characters (after folding it onto one line).
pub const MAX_TITLE: usize = 500;
/// Longest body, in bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Longest `url`, in bytes.
pub const MAX_URL: usize = 2048;
/// Longest `author`, in characters.
pub const MAX_AUTHOR: usize = 200;
/// Latest event time: 9999-12-31 23:59:59 UTC, in Unix seconds. The
/// earliest is 0 (1970-01-01).
pub const MAX_TIME: i64 = 253_402_300_799;

/// Something that happened in the application, worth telling subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// What kind of event (`checkin`, `wiki`, `ticket`, …): lowercase
    /// letters, digits, `.`, `_`, `-`; subscribers filter on it.
    pub kind: String,
    /// One line saying what happened.
    pub title: String,
    /// More text, shown in alerts and digests (may be empty).
    pub body: String,
    /// A link to the thing itself.
    pub url: Option<String>,
    /// Who did it.
    pub author: Option<String>,
    /// When, in Unix seconds; `None`: now.
    pub time: Option<i64>,
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The kind is not a short lowercase word.
    #[error("bad event kind {0:?}: use 1-32 lowercase letters, digits, '.', '_' or '-'")]
    Kind(String),
    /// The title is empty.
    #[error("an event needs a title")]
    EmptyTitle,
    /// A field is longer than its limit.
    #[error("the event's {field} is too long: at most {max} {unit}")]
    TooLong {
        /// The field: `title`, `body`, `url` or `author`.
        field: &'static str,
        /// Its limit.
        max: usize,
        /// What the limit counts: `characters` or `bytes`.
        unit: &'static str,
    },
    /// The time is outside 0..=[`MAX_TIME`].
    #[error("the event's time {0} is out of range: Unix seconds from 0 to {MAX_TIME} (year 9999)")]
    Time(i64),
    /// SQLite refused.
    #[error("cannot publish the event: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store refused (PostgreSQL), in its words.
    #[error("cannot publish the event: {0}")]
    Store(String),
}

/// True if `kind` is a valid event kind.
pub fn valid_kind(kind: &str) -> bool {
    (1..=32).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Checks an event against the limits ([`MAX_TITLE`] and the rest) and
/// returns its title, url and author folded onto one line.
#[allow(clippy::type_complexity)]
pub(crate) fn checked(
    ev: &Event,
) -> Result<(String, Option<String>, Option<String>), PublishError> {
    let too_long = |field, max, unit| PublishError::TooLong { field, max, unit };
    if !valid_kind(&ev.kind) {
        return Err(PublishError::Kind(ev.kind.clone()));
    }
    // Bytes first, so a huge title is refused before it is folded.
    if ev.title.len() > MAX_TITLE * 4 || ev.title.chars().count() > MAX_TITLE * 4 {
        return Err(too_long("title", MAX_TITLE, "characters"));
    }
    let title = one_line(&ev.title);
    if title.is_empty() {
        return Err(PublishError::EmptyTitle);
    }
    if title.chars().count() > MAX_TITLE {
        return Err(too_long("title", MAX_TITLE, "characters"));
    }
    if ev.body.len() > MAX_BODY {
        return Err(too_long("body", MAX_BODY, "bytes"));
    }
    if ev.url.as_ref().is_some_and(|u| u.len() > MAX_URL) {
        return Err(too_long("url", MAX_URL, "bytes"));
    }
    if ev
        .author
        .as_ref()
        .is_some_and(|a| a.len() > MAX_AUTHOR * 4 || a.chars().count() > MAX_AUTHOR)
    {
        return Err(too_long("author", MAX_AUTHOR, "characters"));
    }
    if let Some(t) = ev.time {
        if !(0..=MAX_TIME).contains(&t) {
            return Err(PublishError::Time(t));
        }
    }
    let url = ev.url.as_deref().map(one_line).filter(|u| !u.is_empty());
    let author = ev.author.as_deref().map(one_line).filter(|a| !a.is_empty());
    Ok((title, url, author))
}

/// Publishes an event on `conn`, normally inside the application's own
/// transaction (pass the `rusqlite::Transaction`; it derefs to a
/// connection), so the event commits or rolls back with the data it is
/// about. Returns the event id. Creates the tables on first use.
///
/// On a connection outside any transaction, the event gets a transaction of
/// its own that takes the write lock up front (`BEGIN IMMEDIATE`), so it
/// waits for other writers for the busy timeout. (In rollback-journal mode
/// a statement that read first and then wants to write gets `SQLITE_BUSY`
/// at once, without waiting, when another connection is writing.)
///
/// An event over a limit ([`MAX_TITLE`], [`MAX_BODY`], [`MAX_URL`],
/// [`MAX_AUTHOR`], [`MAX_TIME`]) is refused with the field's name. Titles
/// are kept to one line: control characters (CR, LF, tabs) become spaces,
/// so no title can ever become a header.
pub fn publish(conn: &Connection, ev: &Event) -> Result<i64, PublishError> {
    let (title, url, author) = checked(ev)?;
    let time = ev.time.unwrap_or_else(crate::clock::now);
    const SQL: &str = "INSERT INTO bo_event(kind, title, body, url, author, mtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    let insert = |conn: &Connection| {
        conn.prepare_cached(SQL)?
            .execute(params![ev.kind, title, ev.body, url, author, time])
    };
    let write = || -> Result<i64, PublishError> {
        match insert(conn) {
            Ok(_) => {}
            // First event ever: create the tables (inside the caller's
            // transaction, so they roll back with it too) and try again.
            Err(e) if crate::repo::is_no_such_table(&e) => {
                install(conn)?;
                insert(conn)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(conn.last_insert_rowid())
    };
    // On its own: whatever fails, COMMIT included, leaves no transaction
    // open.
    crate::repo::in_write(conn, write)
}

/// Events after position `cursor`, oldest first, at most `limit`, on either
/// store: the portable form of [`events_after`]. On PostgreSQL an event's
/// `eventid` is its position in commit order (see [`crate::pg`]): events
/// not yet given one by a worker are not returned yet, so a cursor that
/// follows positions never skips one.
pub fn after(
    db: crate::Db<'_>,
    cursor: i64,
    limit: usize,
) -> Result<Vec<StoredEvent>, crate::db::DbError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db.query(
        "SELECT eventid, kind, title, body, url, author, mtime FROM bo_event
          WHERE eventid > ?1 ORDER BY eventid LIMIT ?2",
        &[cursor.into(), limit.into()],
    );
    let rows = match rows {
        Ok(r) => r,
        // No event was ever published here.
        Err(crate::db::DbError::Sqlite(e)) if crate::repo::is_no_such_table(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    rows.iter().map(event_from_row).collect()
}

/// The newest `limit` events, newest first, on either store: what a status
/// page shows. On PostgreSQL an event a worker has not yet given its
/// position has `eventid` 0 (it is listed by when it was inserted).
pub fn recent<'a>(
    db: impl Into<crate::Db<'a>>,
    limit: usize,
) -> Result<Vec<StoredEvent>, crate::db::DbError> {
    let db = db.into();
    if let Some(conn) = db.sqlite() {
        return Ok(recent_events(conn, limit)?);
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db.query(
        "SELECT coalesce(eventid, 0), kind, title, body, url, author, mtime FROM bo_event
          ORDER BY id DESC LIMIT ?1",
        &[limit.into()],
    )?;
    rows.iter().map(event_from_row).collect()
}

/// Reads a row selected with [`EVENT_COLUMNS`] (in that order, first)
/// through [`crate::Db`], on either store.
pub fn event_from_row(r: &crate::db::Row) -> Result<StoredEvent, crate::db::DbError> {
    Ok(StoredEvent {
        eventid: r.int(0)?,
        kind: r.text(1)?,
        title: r.text(2)?,
        body: r.text(3)?,
        url: r.opt_text(4)?,
        author: r.opt_text(5)?,
        time: r.int(6)?,
    })
}

/// Collapses control characters and runs of whitespace into single spaces.
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository file with `n` events, event `i` (from 1) at time `t(i)`.
    fn with_events(n: i64, t: impl Fn(i64) -> i64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("r.db")).unwrap();
        conn.execute_batch("CREATE TABLE config(name TEXT PRIMARY KEY, value, mtime)")
            .unwrap();
        install(&conn).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 1..=n {
            tx.execute(
                "INSERT INTO bo_event(kind, title, mtime) VALUES ('k', 't', ?1)",
                [t(i)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        (dir, conn)
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        conn.prepare("SELECT eventid FROM bo_event ORDER BY eventid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Only events both older than the time bound and within the id bound
    /// go; an event with an old time but a higher id (published late, with
    /// an explicit time) stays while a consumer is behind it.
    #[test]
    fn purge_deletes_only_within_both_bounds() {
        // Events 1..=10 at times 100..=1000; event 8 has an old time.
        let (_d, conn) = with_events(10, |i| if i == 8 { 50 } else { i * 100 });
        assert_eq!(purge(&conn, 500, 6, 1000).unwrap(), 4);
        assert_eq!(ids(&conn), [5, 6, 7, 8, 9, 10]);
        // Time 500 is not older than 500; the id bound now lets 8 go.
        assert_eq!(purge(&conn, 500, 9, 1000).unwrap(), 1);
        assert_eq!(ids(&conn), [5, 6, 7, 9, 10]);
        assert_eq!(purge(&conn, 500, 9, 1000).unwrap(), 0);
    }

    /// Whatever the bounds, the newest event stays, so a new event never
    /// gets an id that consumers' cursors are already past.
    #[test]
    fn purge_keeps_the_newest_event_so_ids_never_go_back() {
        let (_d, conn) = with_events(5, |_| 0);
        assert_eq!(purge(&conn, i64::MAX, i64::MAX, usize::MAX).unwrap(), 4);
        assert_eq!(ids(&conn), [5]);
        let id = publish(
            &conn,
            &Event {
                kind: "k".into(),
                title: "after".into(),
                ..Event::default()
            },
        )
        .unwrap();
        assert_eq!(id, 6, "a consumer at cursor 5 must see the next event");
    }

    /// Batches of PURGE_BATCH, each its own write transaction (SQLite's
    /// file change counter goes up once per committed write transaction),
    /// stopping at `limit`.
    #[test]
    fn purge_goes_in_bounded_batches_up_to_the_limit() {
        let (_d, conn) = with_events(2600, |_| 0);
        let before = crate::writes::write_counter(&conn).unwrap();
        let n = purge(&conn, 1, i64::MAX, 2 * PURGE_BATCH + 100).unwrap();
        assert_eq!(n, 2100);
        let after = crate::writes::write_counter(&conn).unwrap();
        assert_eq!(after - before, 3, "one transaction per batch");
        assert_eq!(ids(&conn).first(), Some(&2101));
        // The rest (but the newest) goes on the next call.
        assert_eq!(purge(&conn, 1, i64::MAX, usize::MAX).unwrap(), 499);
        assert_eq!(ids(&conn), [2600]);
    }

    #[test]
    fn purge_without_an_event_table_or_events_does_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(purge(&conn, i64::MAX, i64::MAX, 10).unwrap(), 0);
        assert_eq!(newest(&conn).unwrap(), 0);
        install(&conn).unwrap();
        assert_eq!(purge(&conn, i64::MAX, i64::MAX, 10).unwrap(), 0);
        assert_eq!(purge(&conn, i64::MAX, i64::MAX, 0).unwrap(), 0);
    }

    #[test]
    fn publish_validates_and_sanitises() {
        let conn = Connection::open_in_memory().unwrap();
        let ev = Event {
            kind: "wiki".into(),
            title: "Hello\r\nBcc: evil@example.org\tthere".into(),
            ..Event::default()
        };
        let id = publish(&conn, &ev).unwrap();
        let title: String = conn
            .query_row("SELECT title FROM bo_event WHERE eventid=?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(title, "Hello Bcc: evil@example.org there");
        let bad = Event {
            kind: "Wiki Page".into(),
            title: "x".into(),
            ..Event::default()
        };
        assert!(matches!(publish(&conn, &bad), Err(PublishError::Kind(_))));
        let empty = Event {
            kind: "wiki".into(),
            title: " \n ".into(),
            ..Event::default()
        };
        assert!(matches!(
            publish(&conn, &empty),
            Err(PublishError::EmptyTitle)
        ));
    }

    #[test]
    fn publish_rolls_back_with_the_application() {
        let mut conn = Connection::open_in_memory().unwrap();
        install(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        publish(
            &tx,
            &Event {
                kind: "k".into(),
                title: "t".into(),
                ..Event::default()
            },
        )
        .unwrap();
        tx.rollback().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM bo_event", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn every_field_is_bounded_and_a_refusal_names_it() {
        let conn = Connection::open_in_memory().unwrap();
        let ok = Event {
            kind: "k".into(),
            title: "é".repeat(MAX_TITLE),
            body: "b".repeat(MAX_BODY),
            url: Some("u".repeat(MAX_URL)),
            author: Some("é".repeat(MAX_AUTHOR)),
            time: Some(MAX_TIME),
        };
        publish(&conn, &ok).unwrap();
        publish(
            &conn,
            &Event {
                time: Some(0),
                ..ok.clone()
            },
        )
        .unwrap();
        for (bad, field) in [
            (
                Event {
                    title: "x".repeat(MAX_TITLE + 1),
                    ..ok.clone()
                },
                "title",
            ),
            (
                Event {
                    title: "x".repeat(900_000),
                    ..ok.clone()
                },
                "title",
            ),
            (
                Event {
                    body: "b".repeat(MAX_BODY + 1),
                    ..ok.clone()
                },
                "body",
            ),
            (
                Event {
                    url: Some("u".repeat(MAX_URL + 1)),
                    ..ok.clone()
                },
                "url",
            ),
            (
                Event {
                    author: Some("a".repeat(MAX_AUTHOR + 1)),
                    ..ok.clone()
                },
                "author",
            ),
            (
                Event {
                    time: Some(i64::MAX),
                    ..ok.clone()
                },
                "time",
            ),
            (
                Event {
                    time: Some(MAX_TIME + 1),
                    ..ok.clone()
                },
                "time",
            ),
            (
                Event {
                    time: Some(-1),
                    ..ok.clone()
                },
                "time",
            ),
        ] {
            let e = publish(&conn, &bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let n: i64 = conn
            .query_row("SELECT count(*) FROM bo_event", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "nothing refused was stored");
    }

    /// Connections that all find the uid missing add it once: none fails
    /// with "duplicate column name", every event gets a uid.
    #[test]
    fn connections_adding_the_uid_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        // The race is narrow: many rounds, each on a fresh file.
        for round in 0..15 {
            let path = dir.path().join(format!("r{round}.db"));
            let c = Connection::open(&path).unwrap();
            install(&c).unwrap();
            c.execute_batch("INSERT INTO bo_event(kind, title, mtime) VALUES ('k', 't', 0)")
                .unwrap();
            let conns: Vec<Connection> = (0..4)
                .map(|_| {
                    let c = Connection::open(&path).unwrap();
                    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                    // Each has read the old schema already.
                    c.query_row("SELECT count(*) FROM bo_event", [], |r| r.get::<_, i64>(0))
                        .unwrap();
                    c
                })
                .collect();
            let barrier = std::sync::Barrier::new(conns.len());
            std::thread::scope(|s| {
                for c in conns {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        ensure_uid(&c).unwrap();
                    });
                }
            });
            let missing: i64 = c
                .query_row("SELECT count(*) FROM bo_event WHERE uid IS NULL", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(missing, 0);
        }
    }
}
