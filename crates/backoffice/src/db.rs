//! The database a task works on: a repository's SQLite file or, with the
//! `postgres` feature, its PostgreSQL schema.
//!
//! Every [`Task`](crate::Task) method receives a [`Db`]: a borrowed handle,
//! cheap to copy. A task has two ways to use it.
//!
//! * **SQLite only.** [`Db::sqlite_only`] hands over the `rusqlite`
//!   connection, and the task goes on as it always did; on PostgreSQL it
//!   gets a clear error instead (and `status` says the task is SQLite-only).
//! * **Either store.** [`Db::execute`], [`Db::query`] and [`Db::write`]
//!   take one SQL text for both: positional parameters `?1`, `?2`, …
//!   (rewritten to `$1`, `$2`, … for PostgreSQL), values as [`Value`]s,
//!   integer columns read as `i64` (declare them `BIGINT` for PostgreSQL,
//!   and `CAST(… AS BIGINT)` an aggregate like `sum`), and SQL both
//!   dialects share (`INSERT … ON CONFLICT … DO UPDATE`, `COALESCE`,
//!   `RETURNING`). The engine's own facilities that a portable task needs —
//!   the event log ([`crate::events::after`]), the retry ledger, `config` —
//!   take a `Db` and do the right thing on each store.
//!
//! [`Db::write`] is the transaction a progress write goes in: `BEGIN
//! IMMEDIATE` on SQLite, `BEGIN` on PostgreSQL, and with `Some(term)` the
//! fencing check of [`crate::writes`] before `COMMIT`, so a worker whose
//! lease was taken over commits nothing.

use rusqlite::Connection;

/// A handle on a repository's database, as tasks see it.
#[derive(Clone, Copy)]
pub enum Db<'a> {
    /// A repository that is one SQLite file.
    Sqlite(&'a Connection),
    /// A repository that is one schema of a PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(&'a crate::pg::PgConn),
}

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.store())
    }
}

impl<'a> From<&'a Connection> for Db<'a> {
    fn from(c: &'a Connection) -> Db<'a> {
        Db::Sqlite(c)
    }
}

impl<'a> From<&'a rusqlite::Transaction<'a>> for Db<'a> {
    fn from(c: &'a rusqlite::Transaction<'a>) -> Db<'a> {
        Db::Sqlite(c)
    }
}

/// One value, as a parameter or as a column read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER; PostgreSQL bigint, integer, smallint,
    /// boolean).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes (BLOB; bytea).
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
/// Values above `i64::MAX` saturate (no counter of ours comes near).
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Value {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a number",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// One row read back, its columns in the order of the statement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, DbError> {
        self.0.get(i).ok_or(DbError::Column {
            index: i,
            problem: format!("the row has {} columns", self.0.len()),
        })
    }

    fn wrong(i: usize, want: &str, v: &Value) -> DbError {
        DbError::Column {
            index: i,
            problem: format!("expected {want}, found {}", v.kind()),
        }
    }

    /// Column `i` as an integer (NULL is an error).
    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            v => Err(Self::wrong(i, "an integer", v)),
        }
    }

    /// Column `i` as an integer or NULL.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            v => Err(Self::wrong(i, "an integer", v)),
        }
    }

    /// Column `i` as text (NULL is an error).
    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            v => Err(Self::wrong(i, "text", v)),
        }
    }

    /// Column `i` as text or NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            v => Err(Self::wrong(i, "text", v)),
        }
    }
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no (its message, detail and hint), or the
    /// connection to it failed.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A column read back was not what the caller asked for.
    #[error("column {index}: {problem}")]
    Column {
        /// The column's position.
        index: usize,
        /// What was wrong with it.
        problem: String,
    },
    /// A fenced write was refused: the lease was taken over.
    #[error(
        "fenced: the lease's term is {found}, not this worker's {expected} \
         (another worker took the lease over); nothing was committed"
    )]
    Fenced {
        /// The term this worker's run holds.
        expected: u64,
        /// The term the lease carries now.
        found: u64,
    },
    /// What was asked exists only on the other store.
    #[error("{0}")]
    Unsupported(String),
}

impl DbError {
    /// True if the write was refused because the lease was taken over.
    pub fn is_fenced(&self) -> bool {
        matches!(self, DbError::Fenced { .. })
    }
}

impl From<crate::writes::FenceError> for DbError {
    fn from(e: crate::writes::FenceError) -> DbError {
        match e {
            crate::writes::FenceError::Fenced { expected, found } => {
                DbError::Fenced { expected, found }
            }
            crate::writes::FenceError::Sqlite(e) => DbError::Sqlite(e),
            other => DbError::Unsupported(other.to_string()),
        }
    }
}

impl<'a> Db<'a> {
    /// The store's name, for messages: "SQLite" or "PostgreSQL".
    pub fn store(self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => "PostgreSQL",
        }
    }

    /// The SQLite connection, if this is an SQLite repository.
    pub fn sqlite(self) -> Option<&'a Connection> {
        match self {
            Db::Sqlite(c) => Some(c),
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => None,
        }
    }

    /// The SQLite connection, or an error naming `task` as SQLite-only.
    pub fn sqlite_only(self, task: &str) -> Result<&'a Connection, DbError> {
        self.sqlite().ok_or_else(|| {
            DbError::Unsupported(format!(
                "the {task} task works on SQLite repositories only, not on {}",
                self.store()
            ))
        })
    }

    /// Runs one statement; returns how many rows it changed.
    pub fn execute(self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(c) => {
                let n = c
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params.iter()))?;
                Ok(u64::try_from(n).unwrap_or(u64::MAX))
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => p.execute(sql, params),
        }
    }

    /// Runs one query; returns every row.
    pub fn query(self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    (0..n)
                        .map(|i| r.get_ref(i).map(Value::from_sqlite))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => p.query(sql, params),
        }
    }

    /// Runs one query; returns its first row, if any.
    pub fn query_opt(self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs `f` in a write transaction and commits it; any error rolls it
    /// back. With `Some(term)` (the run's [`crate::Context::term`]) the
    /// commit first checks that the lease still carries that term, and a
    /// worker whose lease was taken over gets [`DbError::Fenced`] and
    /// commits nothing. Inside a transaction already, `f` joins it (and
    /// the check runs at its end, before the caller's COMMIT).
    pub fn write<T, E: From<DbError>>(
        self,
        fence: Option<u64>,
        f: impl FnOnce(Db<'a>) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            Db::Sqlite(c) => {
                let sql = |q: &str| c.execute_batch(q).map_err(|e| E::from(DbError::from(e)));
                let body = || -> Result<T, E> {
                    let v = f(self)?;
                    if let Some(term) = fence {
                        crate::writes::fenced(c, term).map_err(|e| E::from(e.into()))?;
                    }
                    Ok(v)
                };
                if !c.is_autocommit() {
                    return body();
                }
                // As repo::immediate: the write lock up front, and a
                // rollback on every failure, the COMMIT's included.
                sql("BEGIN IMMEDIATE")?;
                let out = body().and_then(|v| sql("COMMIT").map(|()| v));
                if out.is_err() && !c.is_autocommit() {
                    if let Err(e) = c.execute_batch("ROLLBACK") {
                        tracing::error!(error = %e, "cannot roll back a failed write");
                    }
                }
                out
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => p.write(fence, || f(self)),
        }
    }

    /// Reads one `config` value (a setting, or a task's own row).
    pub fn config_get(self, name: &str) -> Result<Option<String>, DbError> {
        match self {
            Db::Sqlite(c) => Ok(crate::repo::config_get(c, name)?),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => p.config_get(name),
        }
    }

    /// Writes one `config` value.
    pub fn config_set(self, name: &str, value: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(c) => Ok(crate::repo::config_set(c, name, value)?),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => p.config_set(name, value),
        }
    }

    /// Checks, inside the caller's write transaction, that the lease still
    /// carries `term` ([`crate::writes::fenced`] on either store).
    pub fn fenced(self, term: u64) -> Result<(), DbError> {
        match self {
            Db::Sqlite(c) => Ok(crate::writes::fenced(c, term)?),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => p.fenced(term),
        }
    }
}

/// True if `s` names a PostgreSQL repository (`postgres://` or
/// `postgresql://`) rather than an SQLite file.
pub fn is_pg_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `s` with the password of its user part, and any `password=` parameter,
/// replaced by `***`: how a repository URL is shown.
pub fn redact_url(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(auth_start + colon + 1..auth_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

/// Rewrites SQLite's `?N` parameters as PostgreSQL's `$N`, leaving string
/// literals, quoted identifiers and comments alone.
pub fn to_postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // A comment runs to the end of the line.
                    out.push(c);
                    for c in chars.by_ref() {
                        out.push(c);
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '?' if chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
                _ => out.push(c),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_rewritten_outside_literals_only() {
        assert_eq!(
            to_postgres_sql("SELECT ?1, '?2', \"a?3\", ?12 -- ?4\n, ?5"),
            "SELECT $1, '?2', \"a?3\", $12 -- ?4\n, $5"
        );
        assert_eq!(to_postgres_sql("a ? b"), "a ? b");
        assert_eq!(to_postgres_sql("'it''s ?1'"), "'it''s ?1'");
    }

    #[test]
    fn portable_calls_work_on_sqlite_and_a_fenced_write_is_refused_after_a_takeover() {
        let (_dir, repo) = crate::repo::temp_repo();
        let db = Db::from(repo.conn());
        db.execute("CREATE TABLE t(a BIGINT, b TEXT)", &[]).unwrap();
        db.write(None, |db| {
            db.execute("INSERT INTO t VALUES (?1, ?2)", &[7i64.into(), "x".into()])
        })
        .unwrap();
        let row = db
            .query_opt("SELECT a, b, NULL FROM t WHERE a = ?1", &[7i64.into()])
            .unwrap()
            .unwrap();
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.text(1).unwrap(), "x");
        assert_eq!(row.opt_text(2).unwrap(), None);
        assert!(row.text(0).is_err());
        assert!(row.int(5).is_err());

        // The lease says term 3; a write fenced on term 2 rolls back.
        crate::repo::config_set(repo.conn(), crate::LEASE_ROW, "0 0 0 0 term=3").unwrap();
        let r: Result<u64, DbError> = db.write(Some(2), |db| {
            db.execute("INSERT INTO t VALUES (8, 'y')", &[])
        });
        assert!(r.unwrap_err().is_fenced());
        let n = db.query("SELECT a FROM t", &[]).unwrap().len();
        assert_eq!(n, 1, "the fenced write was rolled back");
        db.write(Some(3), |db| {
            db.execute("INSERT INTO t VALUES (9, 'z')", &[])
        })
        .unwrap();
        assert_eq!(db.query("SELECT a FROM t", &[]).unwrap().len(), 2);
    }
}
