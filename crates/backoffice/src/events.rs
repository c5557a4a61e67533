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
    let ready: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('bo_event') WHERE name = 'uid')
            AND EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND name = 'bo_event_uid')",
        [],
        |r| r.get(0),
    )?;
    if ready {
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
fn checked(ev: &Event) -> Result<(String, Option<String>, Option<String>), PublishError> {
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
    if !conn.is_autocommit() {
        return write();
    }
    // Whatever fails, COMMIT included, leaves no transaction open.
    crate::repo::immediate(conn, write)
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
}
