//! Subscribers: who gets alerts or digests, for which kinds of event.
//!
//! Fossil's concepts, in our own table: an address (unique, compared
//! without case, validated), the kinds wanted (`*` for all), immediate or
//! daily digest, verified, unsubscribed ("do not call"), a random
//! unsubscribe code, and timestamps. Only verified, subscribed addresses
//! get mail.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::{address, install, valid_kind};

/// One subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Subscriber {
    /// Row id.
    pub id: i64,
    /// Email address.
    pub address: String,
    /// Display name, if any.
    pub name: Option<String>,
    /// Kinds wanted: `*` or a comma-separated list.
    pub kinds: String,
    /// True: one daily digest; false: immediate alerts.
    pub digest: bool,
    /// True once the address is confirmed.
    pub verified: bool,
    /// True once unsubscribed: nothing is sent.
    pub donotcall: bool,
    /// The random unsubscribe code.
    #[serde(skip)]
    pub code: String,
    /// Created, Unix seconds.
    pub ctime: i64,
    /// Last changed, Unix seconds.
    pub mtime: i64,
}

impl Subscriber {
    /// True if this subscriber wants events of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        wants(&self.kinds, kind)
    }

    /// True if mail may be sent to this subscriber at all.
    pub fn active(&self) -> bool {
        self.verified && !self.donotcall
    }
}

/// True if a `kinds` list (`*` or comma-separated) includes `kind`.
pub fn wants(kinds: &str, kind: &str) -> bool {
    kinds.split(',').any(|k| k == "*" || k == kind)
}

/// Why a subscriber change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    /// The address is not acceptable.
    #[error("bad address {0:?}: {1}")]
    Address(String, String),
    /// The address is already subscribed.
    #[error("{0} is already a subscriber")]
    Duplicate(String),
    /// A kind in the list is malformed.
    #[error(
        "bad event kind {0:?}: use 1-32 lowercase letters, digits, '.', '_' or '-', or * for all"
    )]
    Kind(String),
    /// A display name with control characters.
    #[error("a name must be one line")]
    Name,
    /// No such subscriber.
    #[error("no subscriber {0}")]
    NotFound(String),
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store refused (a PostgreSQL repository).
    #[error("{0}")]
    Db(#[from] backoffice::db::DbError),
}

/// Normalises a kinds list: `*`, or a sorted, deduplicated comma list.
pub fn parse_kinds(list: &str) -> Result<String, SubscriberError> {
    let mut kinds: Vec<&str> = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|k| !k.is_empty())
        .collect();
    if kinds.is_empty() || kinds.contains(&"*") {
        return Ok("*".into());
    }
    if let Some(bad) = kinds.iter().find(|k| !valid_kind(k)) {
        return Err(SubscriberError::Kind((*bad).to_owned()));
    }
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds.join(","))
}

/// A new subscriber.
#[derive(Clone, Debug, Default)]
pub struct New {
    /// Email address.
    pub address: String,
    /// Display name.
    pub name: Option<String>,
    /// Kinds wanted (`*` or comma-separated).
    pub kinds: String,
    /// Daily digest instead of immediate alerts.
    pub digest: bool,
    /// Already verified (e.g. added by an administrator).
    pub verified: bool,
}

const COLUMNS: &str =
    "subscriberid, address, name, kinds, digest, verified, donotcall, code, ctime, mtime";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Subscriber> {
    Ok(Subscriber {
        id: r.get(0)?,
        address: r.get(1)?,
        name: r.get(2)?,
        kinds: r.get(3)?,
        digest: r.get(4)?,
        verified: r.get(5)?,
        donotcall: r.get(6)?,
        code: r.get(7)?,
        ctime: r.get(8)?,
        mtime: r.get(9)?,
    })
}

pub(crate) fn check_name(name: &Option<String>) -> Result<(), SubscriberError> {
    match name {
        Some(n) if n.chars().any(char::is_control) => Err(SubscriberError::Name),
        _ => Ok(()),
    }
}

/// Adds a subscriber, with a fresh random unsubscribe code.
pub fn add(conn: &Connection, new: &New) -> Result<Subscriber, SubscriberError> {
    let addr = new.address.trim();
    address::check(addr).map_err(|e| SubscriberError::Address(addr.to_owned(), e))?;
    let kinds = parse_kinds(&new.kinds)?;
    check_name(&new.name)?;
    install(conn)?;
    let now = backoffice::clock::now();
    let r = conn.execute(
        "INSERT INTO bo_subscriber(address, name, kinds, digest, verified, code, ctime, mtime)
         VALUES (?1, ?2, ?3, ?4, ?5, lower(hex(randomblob(16))), ?6, ?6)",
        params![addr, new.name, kinds, new.digest, new.verified, now],
    );
    match r {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(SubscriberError::Duplicate(addr.to_owned()));
        }
        Err(e) => return Err(e.into()),
    }
    find(conn, addr)?.ok_or_else(|| SubscriberError::NotFound(addr.to_owned()))
}

/// Every subscriber, by address.
pub fn list(conn: &Connection) -> Result<Vec<Subscriber>, SubscriberError> {
    let mut stmt = match conn.prepare(&format!(
        "SELECT {COLUMNS} FROM bo_subscriber ORDER BY address"
    )) {
        Ok(s) => s,
        Err(e) if backoffice::repo::is_no_such_table(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Finds a subscriber by address (any case) or by numeric id.
pub fn find(conn: &Connection, key: &str) -> Result<Option<Subscriber>, SubscriberError> {
    let sql =
        format!("SELECT {COLUMNS} FROM bo_subscriber WHERE address = ?1 OR subscriberid = ?2");
    let id: i64 = key.parse().unwrap_or(-1);
    match conn
        .query_row(&sql, params![key.trim(), id], from_row)
        .optional()
    {
        Ok(s) => Ok(s),
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes a subscriber. Returns it.
pub fn remove(conn: &Connection, key: &str) -> Result<Subscriber, SubscriberError> {
    let s = find(conn, key)?.ok_or_else(|| SubscriberError::NotFound(key.to_owned()))?;
    conn.execute("DELETE FROM bo_subscriber WHERE subscriberid = ?1", [s.id])?;
    Ok(s)
}

/// Changes to a subscriber; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// New kinds list.
    pub kinds: Option<String>,
    /// Digest or immediate.
    pub digest: Option<bool>,
    /// Verified or not.
    pub verified: Option<bool>,
    /// Unsubscribed or not.
    pub donotcall: Option<bool>,
    /// New display name (empty string clears it).
    pub name: Option<String>,
}

/// Applies `changes` to a subscriber. Returns it as changed.
pub fn set(conn: &Connection, key: &str, changes: &Changes) -> Result<Subscriber, SubscriberError> {
    let s = find(conn, key)?.ok_or_else(|| SubscriberError::NotFound(key.to_owned()))?;
    let kinds = changes.kinds.as_deref().map(parse_kinds).transpose()?;
    let name = changes
        .name
        .as_ref()
        .map(|n| Some(n.clone()).filter(|n| !n.is_empty()));
    if let Some(n) = &name {
        check_name(n)?;
    }
    conn.execute(
        "UPDATE bo_subscriber SET
           kinds = coalesce(?2, kinds),
           digest = coalesce(?3, digest),
           verified = coalesce(?4, verified),
           donotcall = coalesce(?5, donotcall),
           name = CASE WHEN ?6 THEN ?7 ELSE name END,
           mtime = ?8
         WHERE subscriberid = ?1",
        params![
            s.id,
            kinds,
            changes.digest,
            changes.verified,
            changes.donotcall,
            name.is_some(),
            name.flatten(),
            backoffice::clock::now()
        ],
    )?;
    find(conn, &s.id.to_string())?.ok_or_else(|| SubscriberError::NotFound(key.to_owned()))
}

/// True if `code` could be a subscriber's code (32 hex digits): anything
/// else is answered "not found" without asking the store.
pub fn plausible_code(code: &str) -> bool {
    code.len() == 32 && code.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The subscriber who holds this unsubscribe code, if any (changes nothing).
pub fn find_by_code(conn: &Connection, code: &str) -> Result<Option<Subscriber>, SubscriberError> {
    if !plausible_code(code) {
        return Ok(None);
    }
    let sql = format!("SELECT {COLUMNS} FROM bo_subscriber WHERE code = ?1");
    match conn
        .query_row(&sql, [code.to_ascii_lowercase()], from_row)
        .optional()
    {
        Ok(s) => Ok(s),
        // No subscriber table: nobody has a code.
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Unsubscribes whoever holds this code (the one-click unsubscribe link).
/// Returns the address, or `None` for an unknown code.
pub fn unsubscribe_by_code(
    conn: &Connection,
    code: &str,
) -> Result<Option<String>, SubscriberError> {
    if !plausible_code(code) {
        return Ok(None);
    }
    let addr = conn
        .query_row(
            "UPDATE bo_subscriber SET donotcall = 1, mtime = ?2 WHERE code = ?1 RETURNING address",
            params![code.to_ascii_lowercase(), backoffice::clock::now()],
            |r| r.get::<_, String>(0),
        )
        .optional();
    match addr {
        Ok(a) => Ok(a),
        Err(e) if backoffice::repo::is_no_such_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_find_set_remove() {
        let conn = Connection::open_in_memory().unwrap();
        let s = add(
            &conn,
            &New {
                address: "Ann@Example.org".into(),
                kinds: "wiki, checkin,wiki".into(),
                ..New::default()
            },
        )
        .unwrap();
        assert_eq!(s.kinds, "checkin,wiki");
        assert_eq!(s.code.len(), 32);
        assert!(!s.verified && !s.active());
        let dup = add(
            &conn,
            &New {
                address: "ann@example.ORG".into(),
                ..New::default()
            },
        );
        assert!(matches!(dup, Err(SubscriberError::Duplicate(_))), "{dup:?}");
        let s2 = set(
            &conn,
            "ann@example.org",
            &Changes {
                verified: Some(true),
                kinds: Some("*".into()),
                ..Changes::default()
            },
        )
        .unwrap();
        assert!(s2.active() && s2.wants("anything"));
        assert_eq!(
            unsubscribe_by_code(&conn, &s.code).unwrap().as_deref(),
            Some("Ann@Example.org")
        );
        assert!(!find(&conn, "ann@example.org").unwrap().unwrap().active());
        assert_eq!(unsubscribe_by_code(&conn, "nope").unwrap(), None);
        remove(&conn, &s.id.to_string()).unwrap();
        assert!(list(&conn).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_refused_with_reasons() {
        let conn = Connection::open_in_memory().unwrap();
        let e = add(
            &conn,
            &New {
                address: "a@b.c\r\nBcc: x@y.z".into(),
                ..New::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad address"), "{e}");
        let e = add(
            &conn,
            &New {
                address: "a@b.c".into(),
                kinds: "Wiki".into(),
                ..New::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad event kind \"Wiki\""), "{e}");
    }
}
