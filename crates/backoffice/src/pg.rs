//! PostgreSQL repositories (feature `postgres`): the backoffice for a
//! service that runs on several hosts against one PostgreSQL database.
//!
//! A repository is one **schema** of a PostgreSQL database, named by a URL:
//! `postgres://USER@HOST/DB?schema=NAME` (or `postgresql://`; every other
//! parameter is libpq's, e.g. `host=/run/postgresql` for a Unix socket).
//! Thousands of tenants can share one server, a schema each. The tables
//! are created on first use and migrated in place, versioned by the
//! `schema-version` row of `bo_meta`; a schema newer than this build is
//! refused rather than guessed at. A password in a URL is never printed:
//! every message shows [`PgUrl::redacted`].
//!
//! # The lease across hosts
//!
//! The lease keeps Fossil's semantics — one current holder, one on-deck
//! worker, runs at least `L` apart, no-delay, disable — and the same pure
//! decision as on SQLite. What differs is who can
//! tell whether a holder lives. A pid means nothing on another host, so the
//! lease row (`bo_lease`, one row, typed columns) names a holder by host id
//! (`BACKOFFICE_HOST_ID`, else the host name), pid, process start time and
//! PID namespace, and a holder is alive while its **heartbeat**
//! (`cur_alive_until`) has not expired: the working holder renews it every
//! `backoffice-heartbeat` seconds from a thread with its own connection,
//! and each renewal vouches for four intervals. A holder that stops
//! renewing (killed, paused, cut off) is gone once that runs out, and the
//! next worker on any host takes over; only on its own host and PID
//! namespace does a worker also look at the process itself, which finds a
//! dead holder at once.
//!
//! Every time in the lease is the database's (`clock_timestamp()`), never a
//! host's: hosts whose clocks disagree still agree on who holds the lease.
//! `status` shows how far this host's clock is from the database's.
//!
//! Each takeover adds one to the lease's **fencing term**. Every progress
//! write of a task goes through [`crate::Db::write`] with the run's term:
//! in the same transaction it reads the lease row `FOR SHARE` and refuses
//! to commit when the term moved. The share lock also makes a takeover
//! (which locks the row `FOR UPDATE`) wait until such a write has
//! committed, so a write either lands before the takeover or not at all.
//!
//! # Events in commit order
//!
//! A `bigserial` id is taken when a row is inserted, not when its
//! transaction commits: event 8 can become visible before event 7, and a
//! cursor that followed ids would skip 7 for ever. So `publish` inserts
//! with no position (`eventid` NULL), and the worker, under its fenced
//! lease, stamps the positions — in id order, after those already given —
//! on every event visible to it before its tasks run. An event that
//! commits later is stamped by a later run with a later position: task
//! cursors, which follow positions, never skip. The check treats an
//! unstamped event as work due.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::db::{Db, DbError, Row, Value};
use crate::engine::{self, Decision, Log, Me, Outcome, RunOptions};
use crate::lease::{Lease, Slot};
use crate::process::{self, Identity};
use crate::settings::Settings;
use crate::status::SlotView;
use crate::task::{self, Context, RunReport, RunTotals, Tasks};

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = 1;

/// Version 1 of a repository schema. `config` has SQLite's shape, so
/// settings and the run record read the same on both stores.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS bo_meta(name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS config(name text PRIMARY KEY, value text, mtime bigint);
CREATE TABLE IF NOT EXISTS bo_lease(
  id int PRIMARY KEY CHECK (id = 1),
  term bigint NOT NULL DEFAULT 0,
  handovers bigint NOT NULL DEFAULT 0,
  cur_host text, cur_pid bigint NOT NULL DEFAULT 0, cur_start bigint, cur_ns bigint,
  cur_expires bigint NOT NULL DEFAULT 0, cur_alive_until bigint,
  next_host text, next_pid bigint NOT NULL DEFAULT 0, next_start bigint, next_ns bigint,
  next_expires bigint NOT NULL DEFAULT 0, next_alive_until bigint
);
INSERT INTO bo_lease(id) VALUES (1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bo_event(
  id bigserial PRIMARY KEY,
  eventid bigint UNIQUE,
  kind text NOT NULL,
  title text NOT NULL,
  body text NOT NULL DEFAULT '',
  url text,
  author text,
  mtime bigint NOT NULL,
  uid text
);
CREATE INDEX IF NOT EXISTS bo_event_unstamped ON bo_event(id) WHERE eventid IS NULL;
CREATE INDEX IF NOT EXISTS bo_event_mtime ON bo_event(mtime);
CREATE TABLE IF NOT EXISTS bo_ledger(
  task text NOT NULL,
  target text NOT NULL,
  cursor bigint NOT NULL DEFAULT 0,
  failures bigint NOT NULL DEFAULT 0,
  next_attempt bigint NOT NULL DEFAULT 0,
  last_run bigint,
  last_error text,
  last_output text,
  PRIMARY KEY(task, target)
);
INSERT INTO bo_meta VALUES ('event-seq', '0') ON CONFLICT DO NOTHING;
";

/// True if `s` names a PostgreSQL repository rather than an SQLite file.
pub fn is_url(s: &str) -> bool {
    crate::db::is_pg_url(s)
}

/// True if the URL text names a schema (`schema=` among its parameters),
/// rather than leaving it to the default.
pub fn names_schema(s: &str) -> bool {
    s.split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("schema=")))
}

/// A PostgreSQL repository's address: the connection and the schema.
#[derive(Clone)]
pub struct PgUrl {
    config: postgres::Config,
    schema: String,
    redacted: String,
    full: String,
    /// The URL without its schema: the server and database, which the
    /// schemas of one sweep share a session on.
    server: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_SCHEMA: usize = 63;

/// True if `s` is a schema name we accept: lower-case letters, digits and
/// `_`, not starting with a digit or `pg_`, at most 63 bytes (so it is
/// never folded into another name). It is still always quoted: `order` or
/// `user` are valid names and SQL keywords.
pub fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SCHEMA
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
        && !s.starts_with("pg_")
}

impl PgUrl {
    /// Parses `postgres://…` or `postgresql://…` with an optional
    /// `schema=NAME` parameter (default `public`).
    pub fn parse(s: &str) -> Result<PgUrl, crate::Error> {
        let bad = |problem: String| crate::Error::BadUrl {
            url: redact(s),
            problem,
        };
        if !is_url(s) {
            return Err(bad("not a postgres:// or postgresql:// URL".into()));
        }
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (s, None),
        };
        let mut schema = None;
        let mut rest = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("schema", v)) => schema = Some(v.to_owned()),
                _ if pair.is_empty() => {}
                _ => rest.push(pair),
            }
        }
        let schema = schema.unwrap_or_else(|| "public".into());
        if !valid_schema(&schema) {
            return Err(bad(format!(
                "schema {schema:?}: use 1 to {MAX_SCHEMA} lower-case letters, digits and _, \
                 not starting with a digit or pg_"
            )));
        }
        let conninfo = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let config: postgres::Config = conninfo.parse().map_err(|e| bad(format!("{e}")))?;
        let mut config = config;
        // As libpq does: a password not in the URL may come from the
        // environment, which keeps it off command lines.
        if config.get_password().is_none() {
            if let Ok(pw) = std::env::var("PGPASSWORD") {
                config.password(pw);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("backoffice");
        }
        // A dead server must not hang a request or a sweep for minutes.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(PgUrl {
            config,
            schema,
            redacted: redact(s),
            full: s.to_owned(),
            server: conninfo,
        })
    }

    /// The schema that is the repository.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The URL with any password replaced by `***`: what messages show.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The URL as given, password included: only for handing to a worker
    /// process (through its environment, never its arguments).
    pub fn secret_full(&self) -> &str {
        &self.full
    }

    /// Connects, sets the schema as the search path, and creates or
    /// migrates the tables when needed.
    pub fn connect(&self) -> Result<PgConn, crate::Error> {
        let err = |what, e| self.err(what, e);
        let client = self
            .config
            .connect(postgres::NoTls)
            .map_err(|e| err("connecting", pg_err(e)))?;
        let conn = PgConn {
            client: RefCell::new(client),
            stmts: RefCell::new(HashMap::new()),
            in_tx: Cell::new(false),
            url: self.clone(),
        };
        conn.batch(&format!(
            "SET search_path TO \"{s}\"; SET lock_timeout = '30s'",
            s = self.schema
        ))
        .map_err(|e| err("selecting the schema", e))?;
        conn.migrate().map_err(|e| err("creating the tables", e))?;
        Ok(conn)
    }

    /// The same server and database, another schema: `schema` replaces
    /// any `schema=` parameter of the URL (the password stays, hidden).
    pub fn with_schema(&self, schema: &str) -> Result<PgUrl, crate::Error> {
        let (base, query) = match self.full.split_once('?') {
            Some((b, q)) => (b, q),
            None => (self.full.as_str(), ""),
        };
        let mut pairs: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("schema="))
            .collect();
        let param = format!("schema={schema}");
        pairs.push(&param);
        PgUrl::parse(&format!("{base}?{}", pairs.join("&")))
    }

    /// The schemas of this URL's database that hold a backoffice
    /// repository (a `bo_meta` table), by name, whatever schema the URL
    /// names. Schemas whose names we would not accept are left out.
    pub fn schemas(&self) -> Result<Vec<String>, crate::Error> {
        let err = |e| self.err("listing the schemas", e);
        let mut client = self
            .config
            .connect(postgres::NoTls)
            .map_err(|e| err(pg_err(e)))?;
        let rows = client
            .query(
                "SELECT n.nspname::text FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relname = 'bo_meta' AND c.relkind IN ('r', 'p')
                  ORDER BY 1",
                &[],
            )
            .map_err(|e| err(pg_err(e)))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter(|n| valid_schema(n))
            .collect())
    }

    /// An [`crate::Error`] about this repository.
    pub fn err(&self, what: &'static str, source: DbError) -> crate::Error {
        crate::Error::Postgres {
            what,
            repo: self.redacted.clone(),
            source,
        }
    }

    /// The key this process's working set knows the repository by.
    fn key(&self) -> PathBuf {
        PathBuf::from(self.key_string())
    }

    fn key_string(&self) -> String {
        format!("{}#{}", self.redacted, self.schema)
    }
}

/// `s` with the password of its user part, and any `password=` parameter,
/// replaced by `***`.
pub fn redact(s: &str) -> String {
    crate::db::redact_url(s)
}

/// A PostgreSQL error as text: the server's message, detail and hint, or
/// the client's reason (with its cause) when the server said nothing.
pub fn pg_err(e: postgres::Error) -> DbError {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut t = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                t.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                t.push_str(&format!("; hint: {h}"));
            }
            t
        }
        None => match e.source() {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    };
    DbError::Postgres(text)
}

/// An open PostgreSQL repository: one client session, its statements
/// prepared once each, and whether a transaction is open.
pub struct PgConn {
    client: RefCell<postgres::Client>,
    stmts: RefCell<HashMap<String, postgres::Statement>>,
    in_tx: Cell<bool>,
    url: PgUrl,
}

impl PgConn {
    /// The repository's address.
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// The same session, moved to another schema of the same database
    /// (whose tables are created or migrated if need be). Statements stay
    /// prepared: PostgreSQL plans them again when the search path changes.
    pub fn into_schema(self, url: &PgUrl) -> Result<PgConn, crate::Error> {
        let conn = PgConn {
            url: url.clone(),
            ..self
        };
        // One round trip when the schema is set up (the usual case): the
        // search path and the version together. When the version cannot be
        // read, the pair was rolled back as one, and the long way follows.
        let both = conn.client.borrow_mut().simple_query(&format!(
            "SET search_path TO \"{}\"; SELECT value FROM bo_meta WHERE name = 'schema-version'",
            url.schema
        ));
        let current = both.ok().is_some_and(|msgs| {
            msgs.iter().any(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => {
                    r.get(0).and_then(|v| v.trim().parse().ok()) == Some(SCHEMA_VERSION)
                }
                _ => false,
            })
        });
        if !current {
            conn.batch(&format!("SET search_path TO \"{}\"", url.schema))
                .map_err(|e| url.err("selecting the schema", e))?;
            conn.migrate()
                .map_err(|e| url.err("creating the tables", e))?;
        }
        Ok(conn)
    }

    /// True if the session can be used again: its connection is open and
    /// no transaction was left open on it.
    pub fn is_usable(&self) -> bool {
        !self.in_tx.get() && !self.client.borrow().is_closed()
    }

    /// The client session, for a host's own SQL (and publishing from its
    /// own transaction, [`publish`]).
    pub fn client(&self) -> std::cell::RefMut<'_, postgres::Client> {
        self.client.borrow_mut()
    }

    /// Runs SQL text with no parameters (several statements allowed).
    pub fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.client.borrow_mut().batch_execute(sql).map_err(pg_err)
    }

    fn prepared(&self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.stmts.borrow().get(sql) {
            return Ok(s.clone());
        }
        let stmt = self
            .client
            .borrow_mut()
            .prepare(&crate::db::to_postgres_sql(sql))
            .map_err(pg_err)?;
        self.stmts.borrow_mut().insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// [`Db::execute`] on PostgreSQL.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let stmt = self.prepared(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.client
            .borrow_mut()
            .execute(&stmt, &refs)
            .map_err(pg_err)
    }

    /// [`Db::query`] on PostgreSQL.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let stmt = self.prepared(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self
            .client
            .borrow_mut()
            .query(&stmt, &refs)
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Value>(i).map_err(pg_err))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }

    /// [`Db::write`] on PostgreSQL.
    pub fn write<T, E: From<DbError>>(
        &self,
        fence: Option<u64>,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if self.in_tx.get() {
            let v = f()?;
            if let Some(term) = fence {
                self.fenced(term)?;
            }
            return Ok(v);
        }
        self.batch("BEGIN")?;
        self.in_tx.set(true);
        let out = f().and_then(|v| {
            if let Some(term) = fence {
                self.fenced(term)?;
            }
            self.batch("COMMIT")?;
            Ok(v)
        });
        self.in_tx.set(false);
        if out.is_err() {
            // After a failed COMMIT there is nothing to roll back, and
            // PostgreSQL only warns; a lost connection fails here too.
            let _ = self.batch("ROLLBACK");
        }
        out
    }

    /// Checks, inside the caller's transaction, that the lease still
    /// carries `term`, and holds a share lock on the lease row until the
    /// transaction ends: a takeover waits for this write to commit.
    pub fn fenced(&self, term: u64) -> Result<(), DbError> {
        if !self.in_tx.get() {
            return Err(DbError::Unsupported(
                "fenced() called outside a transaction: the term check would not cover the write"
                    .into(),
            ));
        }
        let row = self
            .query_opt("SELECT term FROM bo_lease WHERE id = 1 FOR SHARE", &[])?
            .ok_or_else(|| DbError::Postgres("the lease row bo_lease is missing".into()))?;
        let found = u64::try_from(row.int(0)?).unwrap_or(0);
        if found == term {
            Ok(())
        } else {
            Err(DbError::Fenced {
                expected: term,
                found,
            })
        }
    }

    fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The database's clock, Unix seconds.
    pub fn now(&self) -> Result<i64, DbError> {
        self.query_opt(
            "SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)",
            &[],
        )?
        .ok_or_else(|| DbError::Postgres("no answer for the clock".into()))?
        .int(0)
    }

    /// Creates the tables, or migrates them, under a transaction-level
    /// advisory lock so that two first users do not race. One read when
    /// the schema is current.
    fn migrate(&self) -> Result<(), DbError> {
        if self.version().ok().flatten() == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        self.write(None, || {
            self.batch(&format!(
                "SELECT pg_advisory_xact_lock(hashtext('backoffice:{s}'));
                 CREATE SCHEMA IF NOT EXISTS \"{s}\";",
                s = self.url.schema
            ))?;
            let found = self.version()?;
            match found {
                Some(v) if v == SCHEMA_VERSION => Ok(()),
                Some(v) if v > SCHEMA_VERSION => Err(DbError::Unsupported(format!(
                    "schema {} has version {v}, newer than this backoffice knows \
                     ({SCHEMA_VERSION}): upgrade backoffice",
                    self.url.schema
                ))),
                _ => {
                    // Version 1 is the first: created from nothing. Later
                    // versions add their steps here, each from the one
                    // before.
                    self.batch(SCHEMA_V1)?;
                    self.execute(
                        "INSERT INTO bo_meta VALUES ('schema-version', ?1)
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        &[SCHEMA_VERSION.to_string().into()],
                    )?;
                    Ok(())
                }
            }
        })
    }

    fn version(&self) -> Result<Option<i64>, DbError> {
        if !self.in_tx.get() {
            // Outside a transaction a failed statement costs nothing: one
            // round trip when the schema is set up, the usual case.
            let got = self.client.borrow_mut().query_opt(
                "SELECT value FROM bo_meta WHERE name = 'schema-version'",
                &[],
            );
            match got {
                Ok(row) => {
                    return Ok(row
                        .and_then(|r| r.try_get::<_, String>(0).ok())
                        .and_then(|v| v.trim().parse().ok()));
                }
                Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
                    return Ok(None);
                }
                Err(e) => return Err(pg_err(e)),
            }
        }
        // Inside one, look first: a failed statement would abort it.
        let exists = self
            .client
            .borrow_mut()
            .query_opt(
                "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'bo_meta'",
                &[&self.url.schema],
            )
            .map_err(pg_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let row = self.query_opt(
            "SELECT value FROM bo_meta WHERE name = 'schema-version'",
            &[],
        )?;
        Ok(row
            .map(|r| r.text(0))
            .transpose()?
            .and_then(|v| v.trim().parse().ok()))
    }

    /// Reads one `config` value.
    pub fn config_get(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .query_opt("SELECT value FROM config WHERE name = ?1", &[name.into()])?
            .map(|r| r.opt_text(0))
            .transpose()?
            .flatten())
    }

    /// Writes one `config` value.
    pub fn config_set(&self, name: &str, value: &str) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO config(name, value, mtime)
             VALUES (?1, ?2, CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT))
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, mtime = excluded.mtime",
            &[name.into(), value.into()],
        )
        .map(drop)
    }

    /// The engine's settings.
    pub fn settings(&self) -> Result<Settings, DbError> {
        let rows = self.query("SELECT name, value FROM config", &[])?;
        let pairs: Vec<(String, String)> = rows
            .iter()
            .filter_map(|r| Some((r.text(0).ok()?, r.opt_text(1).ok()??)))
            .collect();
        Ok(Settings::from_pairs(
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ))
    }

    /// Gives every visible event without a position one, in id order,
    /// after the last given (see the module docs). Fenced on `term`, so
    /// only the lease holder stamps; returns how many were stamped.
    pub fn stamp_events(&self, term: Option<u64>) -> Result<u64, DbError> {
        self.write(term, || {
            // The counter row first: stampers (a --nolease run beside the
            // holder) take turns on it, so the events read below are
            // stamped by this one alone.
            let base: i64 = self
                .query_opt(
                    "SELECT value FROM bo_meta WHERE name = 'event-seq' FOR UPDATE",
                    &[],
                )?
                .map(|r| r.text(0))
                .transpose()?
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let ids: Vec<i64> = self
                .query(
                    "SELECT id FROM bo_event WHERE eventid IS NULL ORDER BY id LIMIT 10000",
                    &[],
                )?
                .iter()
                .map(|r| r.int(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(0);
            }
            // One statement for the batch: position base + 1, base + 2, …
            // in id order.
            let n = self
                .client
                .borrow_mut()
                .execute(
                    "UPDATE bo_event e SET eventid = $1 + s.n
                       FROM unnest($2::bigint[]) WITH ORDINALITY AS s(id, n)
                      WHERE e.id = s.id",
                    &[&base, &ids],
                )
                .map_err(pg_err)?;
            let next = base.saturating_add(i64::try_from(n).unwrap_or(0));
            self.execute(
                "UPDATE bo_meta SET value = ?1 WHERE name = 'event-seq'",
                &[next.to_string().into()],
            )?;
            Ok(n)
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(format!("cannot send an integer as {ty}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, Box<dyn StdError + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ if <String as FromSql>::accepts(ty) => Value::Text(String::from_sql(ty, raw)?),
            _ => {
                return Err(format!(
                    "a column of type {ty} cannot be read; CAST it AS BIGINT or TEXT"
                )
                .into());
            }
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn StdError + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// This host's id: `BACKOFFICE_HOST_ID` when set (letters, digits, `.`,
/// `-`, `_`, at most 64), else the host name.
pub fn host_id() -> String {
    if let Ok(h) = std::env::var("BACKOFFICE_HOST_ID") {
        let h = h.trim();
        if !h.is_empty()
            && h.len() <= 64
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return h.to_owned();
        }
        tracing::warn!("BACKOFFICE_HOST_ID is not a valid host id; using the host name");
    }
    // The UTS name, as `hostname` prints it (per UTS namespace).
    let n = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let n = n.trim();
    if n.is_empty() {
        "unknown-host".into()
    } else {
        n.chars().take(64).collect()
    }
}

/// This worker as the PostgreSQL lease names it: pid, start time, and a
/// namespace number that folds the host id into the PID namespace, so
/// that the same pid in the same-numbered namespace on another host is
/// never taken for this process.
pub fn identity(host: &str) -> Identity {
    let me = Identity::current();
    Identity {
        ns: Some(host_ns(host, process::pid_namespace())),
        ..me
    }
}

/// FNV-1a over the host id and the PID namespace, kept within `i64`.
fn host_ns(host: &str, ns: Option<u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host
        .bytes()
        .chain([0u8])
        .chain(ns.unwrap_or(0).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & (i64::MAX as u64)
}

/// The lease row as stored: the lease, the host of each slot, and how
/// many takeovers found their holder gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgLease {
    /// The lease (the term is its fencing term).
    pub lease: Lease,
    /// The current holder's host id.
    pub cur_host: Option<String>,
    /// The on-deck worker's host id.
    pub next_host: Option<String>,
    /// Takeovers from a holder whose heartbeat had run out (it died, was
    /// paused or was cut off) rather than one that had released the lease.
    pub handovers: u64,
}

const LEASE_COLUMNS: &str = "term, handovers, cur_host, cur_pid, cur_start, cur_ns, cur_expires, \
     cur_alive_until, next_host, next_pid, next_start, next_ns, next_expires, next_alive_until";

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn lease_from_row(r: &Row) -> Result<PgLease, DbError> {
    let slot = |at: usize| -> Result<Slot, DbError> {
        Ok(Slot {
            pid: r.int(at)?,
            start: to_u64(r.opt_int(at + 1)?),
            ns: to_u64(r.opt_int(at + 2)?),
            expires: r.int(at + 3)?,
            alive_until: r.opt_int(at + 4)?,
        })
    };
    Ok(PgLease {
        lease: Lease {
            current: slot(3)?,
            next: slot(9)?,
            boot: None,
            term: to_u64(Some(r.int(0)?)).unwrap_or(0),
        },
        cur_host: r.opt_text(2)?,
        next_host: r.opt_text(8)?,
        handovers: to_u64(Some(r.int(1)?)).unwrap_or(0),
    })
}

fn slot_values(s: &Slot, host: Option<&str>) -> [Value; 6] {
    let i = |v: Option<u64>| Value::from(v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)));
    [
        if s.is_held() {
            host.into()
        } else {
            Value::Null
        },
        s.pid.into(),
        i(s.start),
        i(s.ns),
        s.expires.into(),
        s.alive_until.into(),
    ]
}

/// Reads the lease row (for `status` and `lease`).
pub fn read_lease(conn: &PgConn) -> Result<PgLease, DbError> {
    lease_row(conn, "")
}

/// Reads the lease row locked (`FOR UPDATE`) until the transaction ends:
/// every read of the lease that leads to a write of it. (Under READ
/// COMMITTED, a write based on an unlocked read would, once a concurrent
/// takeover's lock is gone, put its stale copy over the takeover.)
fn lease_for_update(conn: &PgConn) -> Result<PgLease, DbError> {
    lease_row(conn, " FOR UPDATE")
}

fn lease_row(conn: &PgConn, lock: &str) -> Result<PgLease, DbError> {
    let row = conn
        .query_opt(
            &format!("SELECT {LEASE_COLUMNS} FROM bo_lease WHERE id = 1{lock}"),
            &[],
        )?
        .ok_or_else(|| DbError::Postgres("the lease row bo_lease is missing".into()))?;
    lease_from_row(&row)
}

fn write_lease(conn: &PgConn, l: &PgLease) -> Result<(), DbError> {
    let mut params: Vec<Value> = vec![
        i64::try_from(l.lease.term).unwrap_or(i64::MAX).into(),
        i64::try_from(l.handovers).unwrap_or(i64::MAX).into(),
    ];
    params.extend(slot_values(&l.lease.current, l.cur_host.as_deref()));
    params.extend(slot_values(&l.lease.next, l.next_host.as_deref()));
    conn.execute(
        "UPDATE bo_lease SET term = ?1, handovers = ?2,
           cur_host = ?3, cur_pid = ?4, cur_start = ?5, cur_ns = ?6, cur_expires = ?7,
           cur_alive_until = ?8,
           next_host = ?9, next_pid = ?10, next_start = ?11, next_ns = ?12,
           next_expires = ?13, next_alive_until = ?14
         WHERE id = 1",
        &params,
    )
    .map(drop)
}

/// Empties the lease row (`lease --reset`): nobody holds it, nobody is on
/// deck. The term stays: only a takeover moves it, and a worker paused
/// across a reset must still be fenced out.
pub fn reset_lease(conn: &PgConn) -> Result<(), DbError> {
    conn.write(None, || {
        let mut l = lease_for_update(conn)?;
        l.lease.current = Slot::EMPTY;
        l.lease.next = Slot::EMPTY;
        write_lease(conn, &l)
    })
}

/// The cluster as `status`, `lease` and the status page show it: the
/// term, each slot's host, pid and heartbeat, the hand-overs, and how far
/// this host's clock is from the database's.
pub fn cluster(conn: &PgConn) -> Result<crate::status::Cluster, DbError> {
    let local_before = crate::clock::now();
    let db_now = conn.now()?;
    let local_after = crate::clock::now();
    let s: Settings = conn.settings()?;
    let l = read_lease(conn)?;
    let grace = s
        .heartbeat
        .max(1)
        .saturating_mul(engine::HEARTBEAT_GRACE_BEATS);
    Ok(crate::status::Cluster {
        repository: conn.url().redacted().to_owned(),
        store: "PostgreSQL",
        db_now,
        // Against the middle of the round trip.
        clock_gap: (local_before.saturating_add(local_after) / 2).saturating_sub(db_now),
        host: host_id(),
        term: l.lease.term,
        handovers: l.handovers,
        current: SlotView::new(&l.lease.current, l.cur_host.as_deref(), db_now, grace, true),
        lease_expires: l.lease.current.expires,
        on_deck: SlotView::new(&l.lease.next, l.next_host.as_deref(), db_now, grace, false),
        lease_time: s.lease_time,
        heartbeat: s.heartbeat,
        disabled: s.disable,
    })
}

/// The status of a PostgreSQL repository: the same report as an SQLite
/// file's ([`crate::status::status`]), on the database's clock, with the
/// holders judged by their heartbeats and the [`cluster`] view added.
pub fn status(conn: &PgConn, tasks: &Tasks) -> crate::Result<crate::status::Status> {
    let err = |what: &'static str| move |e: DbError| conn.url().err(what, e);
    let cluster = cluster(conn).map_err(err("reading the lease"))?;
    let now = cluster.db_now;
    let settings = conn.settings().map_err(err("reading settings"))?;
    let l = read_lease(conn).map_err(err("reading the lease"))?;
    let my_ns = identity(&host_id()).ns;
    let holder = |slot: &Slot, host: &Option<String>| {
        let alive = alive(slot, my_ns, settings.lease_time, now);
        crate::status::Holder {
            pid: slot.pid,
            expires: slot.expires,
            start: slot.start,
            ns: slot.ns,
            alive_until: slot.alive_until,
            state: match (slot.is_held(), alive) {
                (false, _) => "nobody".to_owned(),
                (true, true) => format!(
                    "running on {} (its heartbeat is current)",
                    host.as_deref().unwrap_or("?")
                ),
                (true, false) => format!(
                    "gone from {} (its heartbeat stopped)",
                    host.as_deref().unwrap_or("?")
                ),
            },
            alive,
        }
    };
    let current = holder(&l.lease.current, &l.cur_host);
    let next = holder(&l.lease.next, &l.next_host);
    let raw = format!(
        "term {} · current {} · next {}",
        l.lease.term,
        SlotView::words(cluster.current.as_ref(), now),
        SlotView::words(cluster.on_deck.as_ref(), now)
    );
    let parts = crate::status::Parts {
        repo: conn.url().redacted().to_owned(),
        now,
        settings,
        lease: l.lease,
        lease_raw: raw,
        lease_problem: None,
        current,
        next,
        cluster: Some(cluster),
    };
    crate::status::assemble(Db::Postgres(conn), tasks, parts).map_err(err("reading the status"))
}

/// Whether the holder of `slot` is alive, seen from this worker at the
/// database's time `now`: its heartbeat (or, on deck, its slot) has not
/// run out; on this very host and PID namespace, its process also exists.
fn alive(slot: &Slot, my_ns: Option<u64>, lease_time: i64, now: i64) -> bool {
    if !slot.is_held() {
        return false;
    }
    let beat = slot.alive_until.unwrap_or(slot.expires);
    if beat < now {
        return false;
    }
    if slot.ns.is_some() && slot.ns == my_ns {
        // Same host, same namespace: the pid means something here.
        let local = Slot {
            ns: process::pid_namespace(),
            ..*slot
        };
        return process::liveness_at(&local, None, lease_time, now).is_alive();
    }
    true
}

/// Runs one worker on a PostgreSQL repository through the lease (or
/// without it, under `nolease`): the same protocol as [`crate::run`], with
/// the database's clock and heartbeats for liveness.
pub fn run(url: &PgUrl, tasks: &Tasks, opts: &RunOptions) -> crate::Result<Outcome> {
    let conn = url.connect()?;
    let settings = conn
        .settings()
        .map_err(|e| url.err("reading settings", e))?;
    let logfile = opts.logfile.clone().or_else(|| settings.logfile.clone());
    let project = url.redacted().to_owned();
    let repo_key = url.key();
    let log = Log {
        file: logfile.as_deref(),
        project: &project,
        repo: &repo_key,
    };
    for p in &settings.problems {
        log.error(crate::clock::now(), p);
    }
    if opts.nolease {
        let _guard = engine::WorkingGuard::new(repo_key.clone());
        let term = read_lease(&conn)
            .map_err(|e| url.err("reading the lease", e))?
            .lease
            .term;
        let report = work(&conn, tasks, opts, &log, term, None)?;
        return Ok(Outcome::Ran(report));
    }
    let host = host_id();
    let me = identity(&host);
    let nodelay = opts.nodelay || settings.nodelay;
    let beat = engine::Heartbeat::from_settings(&settings);
    let mut next_warning: Option<Instant> = None;
    let mut warn_every = Duration::from_secs(10);
    loop {
        let lease_time = settings.lease_time;
        let pass = conn.write(None, || -> Result<_, DbError> {
            let stored = lease_for_update(&conn)?;
            // After the lock: the time the decision is made at.
            let now = conn.now()?;
            let key = repo_key.clone();
            let mut is_alive = |s: &Slot| {
                if me.holds(s) {
                    engine::is_working(&key)
                } else {
                    alive(s, me.ns, lease_time, now)
                }
            };
            let plan = engine::decide(
                &stored.lease,
                Me {
                    id: me,
                    boot: None,
                    now,
                    lease_time,
                    grace: beat.grace_secs(),
                    nodelay,
                },
                &mut is_alive,
            );
            // Each slot's host: a slot carried over keeps the one stored
            // with it; a new one is this worker's.
            let same = |a: &Slot, b: &Slot| a.pid == b.pid && a.ns == b.ns && a.start == b.start;
            let host_of = |new: &Slot, old: &PgLease| -> Option<String> {
                if !new.is_held() {
                    None
                } else if same(new, &old.lease.current) {
                    old.cur_host.clone()
                } else if same(new, &old.lease.next) {
                    old.next_host.clone()
                } else {
                    Some(host.clone())
                }
            };
            let to_write = match &plan.decision {
                Decision::Take(l) | Decision::Queue { lease: l, .. } => Some(l),
                _ if plan.clamped => Some(&plan.normalized),
                _ => None,
            };
            if let Some(l) = to_write {
                let gone_holder = matches!(plan.decision, Decision::Take(_))
                    && stored.lease.current.is_held()
                    && !me.holds(&stored.lease.current);
                let new = PgLease {
                    lease: l.clone(),
                    cur_host: host_of(&l.current, &stored),
                    next_host: host_of(&l.next, &stored),
                    handovers: stored.handovers.saturating_add(u64::from(gone_holder)),
                };
                write_lease(&conn, &new)?;
            }
            Ok((stored, plan, now))
        });
        let (stored, plan, now) = pass.map_err(|e| url.err("taking the lease", e))?;
        if opts.trace {
            eprintln!(
                "backoffice {}: lease {:?} -> {:?}",
                me.pid, stored.lease, plan.decision
            );
        }
        match plan.decision {
            Decision::OnDeckExists { pid } => return Ok(Outcome::OnDeckExists { pid }),
            Decision::Busy { holder } => return Ok(Outcome::Busy { holder }),
            Decision::Take(taken) => {
                let _guard = engine::WorkingGuard::new(repo_key.clone());
                let report = work(&conn, tasks, opts, &log, taken.term, Some((me, beat)))?;
                return Ok(Outcome::Ran(report));
            }
            Decision::Queue { wake_at, .. } => {
                if let Some(msg) =
                    engine::overrun_message(&plan.normalized.current, now, lease_time)
                {
                    if next_warning.is_none_or(|t| Instant::now() >= t) {
                        log.error(now, &msg);
                        next_warning = Instant::now().checked_add(warn_every);
                        warn_every = warn_every.saturating_mul(2).min(Duration::from_secs(3600));
                    }
                }
                // The database's clock decides; a sleep is bounded anyway.
                let most = u64::try_from(lease_time).unwrap_or(1).saturating_add(1);
                let secs = u64::try_from(wake_at.saturating_sub(now)).unwrap_or(0);
                let nap = Duration::from_secs(secs)
                    .clamp(Duration::from_millis(10), Duration::from_secs(most));
                std::thread::sleep(nap);
            }
        }
    }
}

/// The working holder's heartbeat thread: its own connection, a renewal
/// every interval while the lease still names this worker with its term.
struct Beating {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Beating {
    fn start(
        url: &PgUrl,
        me: Identity,
        term: u64,
        beat: engine::Heartbeat,
        log: &Log<'_>,
    ) -> Beating {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let url = url.clone();
        let file = log.file.map(Path::to_owned);
        let project = log.project.to_owned();
        let repo = log.repo.to_owned();
        let spawned = std::thread::Builder::new()
            .name("backoffice-heartbeat".into())
            .spawn(move || {
                let log = Log {
                    file: file.as_deref(),
                    project: &project,
                    repo: &repo,
                };
                let mut conn: Option<PgConn> = None;
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(beat.every)
                {
                    let renewed = match &conn {
                        Some(c) => renew(c, me, term, beat),
                        None => match url.connect() {
                            Ok(c) => renew(conn.insert(c), me, term, beat),
                            Err(e) => Err(DbError::Postgres(e.to_string())),
                        },
                    };
                    match renewed {
                        Ok(true) => {
                            if failing {
                                log.error(crate::clock::now(), "heartbeat renewed again");
                                failing = false;
                            }
                        }
                        Ok(false) => {
                            log.error(
                                crate::clock::now(),
                                &format!(
                                    "the lease no longer names this worker with term {term} \
                                     (taken over or released); heartbeat stopped"
                                ),
                            );
                            return;
                        }
                        Err(e) => {
                            conn = None;
                            failing = true;
                            log.error(
                                crate::clock::now(),
                                &format!("cannot renew the heartbeat: {e}"),
                            );
                        }
                    }
                }
            });
        match spawned {
            Ok(t) => Beating {
                stop: Some(tx),
                thread: Some(t),
            },
            Err(e) => {
                log.error(
                    crate::clock::now(),
                    &format!("cannot start the heartbeat thread ({e}); the lease will lapse"),
                );
                Beating {
                    stop: None,
                    thread: None,
                }
            }
        }
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One renewal: pushes `cur_alive_until` to the database's now plus the
/// grace, if the lease still names `me` with `term`.
fn renew(c: &PgConn, me: Identity, term: u64, beat: engine::Heartbeat) -> Result<bool, DbError> {
    let n = c.execute(
        "UPDATE bo_lease
            SET cur_alive_until = CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT) + ?1
          WHERE id = 1 AND term = ?2 AND cur_pid = ?3 AND cur_ns = ?4",
        &[
            beat.grace_secs().into(),
            term.into(),
            me.pid.into(),
            me.ns.into(),
        ],
    )?;
    Ok(n == 1)
}

/// Stamps the new events, runs the tasks under the heartbeat, then records
/// the run and releases the lease (fenced on `term` for a holder).
fn work(
    conn: &PgConn,
    tasks: &Tasks,
    opts: &RunOptions,
    log: &Log<'_>,
    term: u64,
    holder: Option<(Identity, engine::Heartbeat)>,
) -> crate::Result<RunReport> {
    let url = conn.url().clone();
    let started = conn.now().unwrap_or_else(|_| crate::clock::now());
    let t0 = Instant::now();
    let results = {
        let _beating = holder.map(|(me, beat)| Beating::start(&url, me, term, beat, log));
        if let Err(e) = conn.stamp_events(holder.map(|_| term)) {
            log.error(
                started,
                &format!("cannot give new events their positions: {e}"),
            );
        }
        let ctx = Context {
            db: Db::Postgres(conn),
            repo: Path::new(url.redacted()),
            now: started,
            debug: opts.debug,
            term,
        };
        tasks.run_all(&ctx)
    };
    let me = Identity::current();
    let report = RunReport {
        started,
        elapsed_us: u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
        pid: me.pid,
        tasks: results,
    };
    let release = holder.map(|(me, _)| me);
    let mut tries = 0;
    // After a failure the session may be gone (the server restarted, or an
    // administrator terminated it): each retry has a new one, so the run
    // is recorded and the lease released rather than left to lapse.
    let mut fresh: Option<PgConn> = None;
    loop {
        tries += 1;
        match finish(fresh.as_ref().unwrap_or(conn), &report, release, term) {
            Ok(()) => break,
            Err(e) if e.is_fenced() => {
                log.error(crate::clock::now(), &format!("run not recorded: {e}"));
                break;
            }
            Err(e) if tries < engine::FINISH_TRIES => {
                log.error(
                    crate::clock::now(),
                    &format!(
                        "cannot record the run (try {tries} of {}): {e}",
                        engine::FINISH_TRIES
                    ),
                );
                std::thread::sleep(Duration::from_millis(100u64 << tries));
                fresh = url.connect().ok();
            }
            Err(e) => {
                log.error(
                    crate::clock::now(),
                    &format!(
                        "cannot record the run: {e}; the lease lapses when its heartbeat runs out"
                    ),
                );
                break;
            }
        }
    }
    if !report.is_noop() || opts.debug {
        let line = report.log_line(log.project);
        tracing::info!(repo = %url, "{line}");
        if let Some(f) = log.file {
            if let Err(e) = task::append_log(f, &line) {
                tracing::error!("{e}");
            }
        }
    }
    Ok(report)
}

/// Records the run and its totals and, for a holder, releases the lease,
/// in one transaction fenced on `term`.
fn finish(
    conn: &PgConn,
    report: &RunReport,
    holder: Option<Identity>,
    term: u64,
) -> Result<(), DbError> {
    conn.write(holder.map(|_| term), || {
        // The lease first, locked: a takeover either committed before (and
        // this holder sees the new term and records nothing) or waits
        // until this transaction ends.
        let mut l = lease_for_update(conn)?;
        if holder.is_some() && l.lease.term != term {
            return Err(DbError::Fenced {
                expected: term,
                found: l.lease.term,
            });
        }
        let json = serde_json::to_string(report).unwrap_or_default();
        conn.config_set(task::LAST_RUN_ROW, &json)?;
        let mut totals: RunTotals = conn
            .config_get(task::TOTALS_ROW)?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        totals.add(report);
        conn.config_set(
            task::TOTALS_ROW,
            &serde_json::to_string(&totals).unwrap_or_default(),
        )?;
        let mut history = crate::history::History::load(Db::Postgres(conn));
        history.add(report);
        conn.config_set(crate::history::HISTORY_ROW, &history.to_json())?;
        if let Some(me) = holder {
            if me.holds(&l.lease.current) {
                l.lease.current = Slot {
                    expires: l.lease.current.expires,
                    ..Slot::EMPTY
                };
                l.cur_host = None;
                write_lease(conn, &l)?;
            }
        }
        Ok(())
    })
}

/// What the after-request check needs to know, in one statement: the
/// lease, the database's time, the two settings it reads, and whether any
/// event awaits its position.
#[derive(Clone, Debug)]
pub struct CheckRow {
    /// The lease row.
    pub lease: PgLease,
    /// The database's time, Unix seconds.
    pub now: i64,
    /// True if an event has no position yet (a worker must stamp it).
    pub unstamped: bool,
    /// `backoffice-disable` is on.
    pub disabled: bool,
    /// `backoffice-lease-time`, seconds.
    pub lease_time: i64,
}

/// Reads [`CheckRow`].
pub fn check_row(conn: &PgConn) -> Result<CheckRow, DbError> {
    let row = conn
        .query_opt(
            &format!(
                "SELECT {LEASE_COLUMNS},
                        CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT),
                        EXISTS (SELECT 1 FROM bo_event WHERE eventid IS NULL),
                        (SELECT value FROM config WHERE name = 'backoffice-disable'),
                        (SELECT value FROM config WHERE name = 'backoffice-lease-time')
                   FROM bo_lease WHERE id = 1"
            ),
            &[],
        )?
        .ok_or_else(|| DbError::Postgres("the lease row bo_lease is missing".into()))?;
    Ok(CheckRow {
        lease: lease_from_row(&row)?,
        now: row.int(14)?,
        unstamped: row.int(15)? != 0,
        disabled: row
            .opt_text(16)?
            .as_deref()
            .and_then(crate::settings::parse_bool)
            == Some(true),
        lease_time: Settings::from_pairs(
            row.opt_text(17)?
                .as_deref()
                .map(|v| (crate::settings::LEASE_TIME, v)),
        )
        .lease_time,
    })
}

/// Publishes an event on a PostgreSQL repository, normally inside the
/// application's own transaction: pass its `postgres::Transaction` (or a
/// `Client` for a transaction of its own), so the event commits or rolls
/// back with the data it is about. The event is inserted without a
/// position; the next worker gives it one (see the module docs). Returns
/// its row id. Never `NOTIFY`s: a `NOTIFY` in the application's
/// transaction would serialise every commit on the server.
///
/// The schema must have been set up (any `backoffice` command on the URL,
/// or [`PgUrl::connect`]). The plain-SQL form, for hosts in other
/// languages, is the same statement:
///
/// ```sql
/// INSERT INTO "SCHEMA".bo_event(kind, title, body, url, author, mtime)
/// VALUES ($1, $2, $3, $4, $5, CAST(extract(epoch FROM now()) AS BIGINT));
/// ```
pub fn publish(
    client: &mut impl postgres::GenericClient,
    schema: &str,
    ev: &crate::events::Event,
) -> Result<i64, crate::events::PublishError> {
    let (title, url, author) = crate::events::checked(ev)?;
    if !valid_schema(schema) {
        return Err(crate::events::PublishError::Store(format!(
            "schema {schema:?} is not a valid schema name"
        )));
    }
    let sql = format!(
        "INSERT INTO \"{schema}\".bo_event(kind, title, body, url, author, mtime)
         VALUES ($1, $2, $3, $4, $5,
                 COALESCE($6, CAST(floor(extract(epoch FROM now())) AS BIGINT)))
         RETURNING id"
    );
    let row = client
        .query_one(&sql, &[&ev.kind, &title, &ev.body, &url, &author, &ev.time])
        .map_err(|e| crate::events::PublishError::Store(pg_err(e).to_string()))?;
    Ok(row.get(0))
}

/// The after-request check on a PostgreSQL repository: the lease, the
/// database's clock, `backoffice-disable` and unstamped events in one
/// statement, then the tasks' own `due`. Never fails: problems come back
/// as [`crate::Check::Unavailable`].
pub fn check(conn: &PgConn, tasks: &Tasks) -> crate::Check {
    use crate::Check;
    let unavailable = |e: DbError| Check::Unavailable {
        reason: e.to_string(),
    };
    let row = match check_row(conn) {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    if row.disabled {
        return Check::Disabled;
    }
    let now = row.now;
    let next = &row.lease.lease.next;
    let lease_time = row.lease_time;
    let my_ns = identity(&host_id()).ns;
    if next.is_held() && next.expires >= now && alive(next, my_ns, lease_time, now) {
        return Check::OnDeck { pid: next.pid };
    }
    if row.unstamped {
        return Check::Needed;
    }
    match tasks.due(Db::Postgres(conn), now) {
        d if d.is_due(now) => Check::Needed,
        task::Due::At(t) => Check::NothingDue { next: Some(t) },
        _ => Check::NothingDue { next: None },
    }
}

/// The after-request check for a host on PostgreSQL, with no round trip
/// on most requests.
///
/// Asking the database after every request would cost each request a round
/// trip. So the answer is kept in the process, per repository: "a worker is
/// on deck", "nothing is due until T", "a worker was just started". It is
/// asked again at most once a second ([`PgTrigger::REFRESH`]) — so work made
/// by another host is found within a second plus a request — or at once
/// after this process published ([`PgTrigger::published`]): a host that
/// published starts a worker on its next check, without waiting.
///
/// One per process, shared by the request handlers (it is `Sync`).
pub struct PgTrigger {
    tasks: Tasks,
    worker: Option<process::WorkerCommand>,
    reap: bool,
    cache: std::sync::Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for PgTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTrigger")
            .field("tasks", &self.tasks)
            .field("reap", &self.reap)
            .finish_non_exhaustive()
    }
}

/// One repository's kept answer.
#[derive(Clone, Debug)]
struct Cached {
    /// The answer, [`crate::Check`] as last seen.
    check: crate::Check,
    /// Until when it may be given without asking again.
    until: Instant,
    /// This process published since a worker it started was kept as
    /// "starting" (see [`PgTrigger::published`]).
    published: bool,
    /// For "starting": the lease's term when that worker was started.
    /// Every take of the lease adds one, so a term beyond it means the
    /// worker (or another) has taken the lease since — and may have left
    /// it again, done, before seeing a later event.
    term: Option<u64>,
}

impl PgTrigger {
    /// How long an answer is kept at most.
    pub const REFRESH: Duration = Duration::from_secs(1);

    /// How long a just-started worker keeps further starts off, at most
    /// (it takes its place in the lease within milliseconds).
    pub const STARTING: Duration = Duration::from_secs(10);

    /// A trigger for these tasks, starting workers as `CURRENT_EXE worker`.
    pub fn new(tasks: Tasks) -> PgTrigger {
        PgTrigger {
            tasks,
            worker: None,
            reap: true,
            cache: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Starts workers with this command instead.
    pub fn with_worker_command(mut self, cmd: process::WorkerCommand) -> PgTrigger {
        self.worker = Some(cmd);
        self
    }

    /// Whether started workers are reaped by a thread of this process (the
    /// default; a short-lived process turns it off and lets init reap).
    pub fn reap_children(mut self, reap: bool) -> PgTrigger {
        self.reap = reap;
        self
    }

    /// Forget the kept answer for `url`: this process just published, so
    /// the next check asks the database (and starts a worker at once). A
    /// worker this process just started is not forgotten yet: if it has
    /// not reached the lease, it gives the new event its position when it
    /// does. So the answer "starting" is only marked: the next check asks
    /// the lease whether that worker holds it already (it may have given
    /// positions before this event committed), and if so the database
    /// decides — a worker on deck, or a new one started.
    pub fn published(&self, url: &PgUrl) {
        let mut cache = self.lock();
        let key = url.key_string();
        match cache.get_mut(&key) {
            Some(c)
                if matches!(c.check, crate::Check::Starting { .. }) && c.until > Instant::now() =>
            {
                c.published = true;
            }
            _ => {
                cache.remove(&key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept answer for `conn`'s repository, if still good (and not a
    /// "starting" this process has published after, which needs a look at
    /// the lease).
    pub fn cached(&self, url: &PgUrl) -> Option<crate::Check> {
        let now = Instant::now();
        self.lock()
            .get(&url.key_string())
            .filter(|c| c.until > now && !c.published)
            .map(|c| c.check.clone())
    }

    /// The check, from the kept answer when it is fresh, else from the
    /// database (one statement, then the tasks' own `due`).
    pub fn check(&self, conn: &PgConn) -> crate::Check {
        if let Some(c) = self.cached(conn.url()) {
            return c;
        }
        if let Some(starting) = self.started_before_publish(conn) {
            return starting;
        }
        let t0 = Instant::now();
        let check = check(conn, &self.tasks);
        // Keep it: "nothing due until T" until T (within the refresh), and
        // everything else for the refresh. "Needed" is not kept: the caller
        // starts a worker and keeps "starting" instead.
        let keep = match &check {
            crate::Check::Needed => None,
            crate::Check::NothingDue { next: Some(t) } => {
                let db_now = crate::clock::now();
                let secs = u64::try_from(t.saturating_sub(db_now)).unwrap_or(0);
                Some(Duration::from_secs(secs).min(Self::REFRESH))
            }
            _ => Some(Self::REFRESH),
        };
        match keep {
            Some(d) => {
                self.lock().insert(
                    conn.url().key_string(),
                    Cached {
                        check: check.clone(),
                        until: t0 + d,
                        published: false,
                        term: None,
                    },
                );
            }
            None => {
                self.lock().remove(&conn.url().key_string());
            }
        }
        check
    }

    /// A worker this process started before it published, still on its
    /// way to the lease: it will give the new event its position, so the
    /// answer stays "starting". `None` once it has taken the lease (it is
    /// in a slot, or the term moved since it was started: it may even have
    /// finished, before this event committed), or is gone, or the lease
    /// cannot be read: then the database decides.
    fn started_before_publish(&self, conn: &PgConn) -> Option<crate::Check> {
        let key = conn.url().key_string();
        let (pid, term) = match self.lock().get(&key) {
            Some(Cached {
                check: crate::Check::Starting { pid },
                until,
                published: true,
                term,
            }) if *until > Instant::now() => (*pid, (*term)?),
            _ => return None,
        };
        let host = host_id();
        let l = read_lease(conn).ok()?;
        let holds = |slot: &Slot, h: &Option<String>| {
            slot.pid == pid && h.as_deref() == Some(host.as_str())
        };
        let reached = l.lease.term != term
            || holds(&l.lease.current, &l.cur_host)
            || holds(&l.lease.next, &l.next_host);
        let alive = process::exists(pid);
        (!reached && alive).then_some(crate::Check::Starting { pid })
    }

    /// After each request: the check and, when work is due, a detached
    /// worker. Never fails the request: problems come back in the answer.
    pub fn after_request(&self, conn: &PgConn) -> crate::Started {
        let check = self.check(conn);
        if !check.is_needed() {
            return crate::Started::NotNeeded(check);
        }
        let cmd = match &self.worker {
            Some(c) => Ok(c.clone()),
            None => process::WorkerCommand::current_exe(),
        };
        let logfile = conn.settings().ok().and_then(|s| s.logfile);
        // The term before the worker can take the lease (see `Cached::term`).
        let term = read_lease(conn).ok().map(|l| l.lease.term);
        match cmd.and_then(|c| spawn_worker(&c, conn.url(), logfile.as_deref())) {
            Ok(child) => {
                let pid = child.id();
                self.lock().insert(
                    conn.url().key_string(),
                    Cached {
                        check: crate::Check::Starting { pid: pid.into() },
                        until: Instant::now() + Self::STARTING.min(Self::REFRESH),
                        published: false,
                        term,
                    },
                );
                if self.reap {
                    process::reap(child);
                }
                crate::Started::Worker { pid }
            }
            Err(e) => crate::Started::Failed(format!("cannot start a worker: {e}")),
        }
    }
}

/// Sessions a sweep keeps open, one or more per database, each moved from
/// schema to schema of that database ([`PgConn::into_schema`]), so that
/// visiting a thousand schemas costs no thousand connections.
#[derive(Default)]
pub struct Sessions {
    idle: std::sync::Mutex<HashMap<String, Vec<PgConn>>>,
}

impl Sessions {
    fn take(&self, url: &PgUrl) -> Result<PgConn, crate::Error> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&url.server)
            .and_then(Vec::pop);
        match idle {
            Some(c) => c.into_schema(url),
            None => url.connect(),
        }
    }

    fn give_back(&self, conn: PgConn) {
        let server = conn.url.server.clone();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(server)
            .or_default()
            .push(conn);
    }
}

/// One sweep's visit to a PostgreSQL repository: the check on a session
/// shared with the other schemas of the same database, and a worker run in
/// this process when work is due. Returns the worker's outcome, or `None`
/// when nothing was due (or the lease is disabled, or a worker waits on
/// deck).
pub fn visit(
    url: &PgUrl,
    tasks: &Tasks,
    opts: &RunOptions,
    sessions: &Sessions,
) -> crate::Result<Option<Outcome>> {
    let conn = sessions.take(url)?;
    let check = check(&conn, tasks);
    if let crate::Check::Unavailable { reason } = &check {
        // The session may be broken: not kept.
        return Err(url.err("checking", DbError::Postgres(reason.clone())));
    }
    sessions.give_back(conn);
    if !check.is_needed() {
        return Ok(None);
    }
    run(url, tasks, opts).map(Some)
}

/// The name of the environment variable that hands a worker its
/// repository's full URL (a password never goes on a command line, where
/// `ps` would show it).
pub const URL_ENV: &str = "BACKOFFICE_PG_URL";

/// Starts a detached worker for a PostgreSQL repository: `cmd` with the
/// redacted URL as its argument and the full one in [`URL_ENV`].
pub fn spawn_worker(
    cmd: &process::WorkerCommand,
    url: &PgUrl,
    logfile: Option<&Path>,
) -> std::io::Result<std::process::Child> {
    cmd.spawn_with(
        url.redacted().as_ref(),
        logfile,
        &[(URL_ENV, url.secret_full())],
    )
}

/// The URL a worker was started for: the full one from [`URL_ENV`] when it
/// matches `arg` once redacted, else `arg` itself.
pub fn worker_url(arg: &str) -> Result<PgUrl, crate::Error> {
    match std::env::var(URL_ENV) {
        Ok(full) if redact(&full) == arg => PgUrl::parse(&full),
        _ => PgUrl::parse(arg),
    }
}

/// The body of a detached worker process for a PostgreSQL repository: as
/// [`crate::worker_main`]. Returns the exit status.
pub fn worker_main(arg: &str, logfile: Option<&Path>, tasks: &Tasks) -> i32 {
    process::detach();
    let result = worker_url(arg).and_then(|url| {
        let opts = RunOptions {
            logfile: logfile.map(Path::to_owned),
            ..RunOptions::default()
        };
        run(&url, tasks, &opts)
    });
    match result {
        Ok(outcome) => {
            tracing::debug!(repo = %redact(arg), ?outcome, "worker done");
            0
        }
        Err(e) => {
            let msg = format!("worker {}: {e}", std::process::id());
            tracing::error!(repo = %redact(arg), "{msg}");
            if let Some(log) = logfile {
                let _ = task::append_log(
                    log,
                    &task::error_line(crate::clock::now(), &redact(arg), &msg),
                );
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_a_schema_and_never_show_a_password() {
        let u = PgUrl::parse(
            "postgres://app:s3cret@db.example:5433/prod?schema=tenant_7&sslmode=disable",
        )
        .unwrap();
        assert_eq!(u.schema(), "tenant_7");
        assert_eq!(
            u.redacted(),
            "postgres://app:***@db.example:5433/prod?schema=tenant_7&sslmode=disable"
        );
        assert!(!format!("{u} {u:?}").contains("s3cret"));
        let u =
            PgUrl::parse("postgresql://app@%2Ftmp%2Fpg/db?password=hunter2&host=/tmp/x").unwrap();
        assert_eq!(u.schema(), "public");
        assert!(!u.redacted().contains("hunter2"), "{}", u.redacted());

        for bad in [
            "postgres://h/db?schema=Bad",
            "postgres://h/db?schema=1x",
            "postgres://h/db?schema=pg_catalog",
            "postgres://h/db?schema=a;drop",
            "mysql://h/db",
        ] {
            let e = PgUrl::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("schema") || e.contains("postgres://"),
                "{bad}: {e}"
            );
        }
        let e = PgUrl::parse("postgres://u:pw@h/db?schema=x&nonsense=1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains(":pw@"), "{e}");
    }

    #[test]
    fn the_host_is_part_of_the_identity() {
        let a = host_ns("host-a", Some(4026531836));
        let b = host_ns("host-b", Some(4026531836));
        assert_ne!(a, b);
        assert_eq!(a, host_ns("host-a", Some(4026531836)));
        assert!(i64::try_from(a).is_ok());
    }
}
