//! The library's error type.
//!
//! Every variant names the repository (or setting) it is about, so that a
//! message printed by the command-line tool or written to a log file is
//! enough for an operator to act on without reading code.

use std::path::PathBuf;

/// Errors returned by the `backoffice` library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The repository file does not exist. We never create one implicitly:
    /// a typo in a path must not silently produce an empty database.
    #[error("repository {path} does not exist")]
    NotFound {
        /// The path that was asked for.
        path: PathBuf,
    },

    /// The file exists but is not an SQLite database.
    #[error("{path} is not an SQLite database")]
    NotSqlite {
        /// The offending file.
        path: PathBuf,
    },

    /// The repository could not be opened at all (permissions, a directory, …).
    #[error("cannot open repository {path}: {source}")]
    Open {
        /// The repository path.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },

    /// A `config` table exists but does not have Fossil's shape
    /// (`name TEXT PRIMARY KEY, value, mtime`). We refuse to guess what it is.
    #[error(
        "repository {path} has a `config` table of another shape \
         (found columns: {found}; need name TEXT PRIMARY KEY, value, mtime)"
    )]
    ConfigShape {
        /// The repository path.
        path: PathBuf,
        /// The columns we found, as `name type [pk]`.
        found: String,
    },

    /// The repository is read-only, and the operation needs to write.
    #[error("repository {path} is read-only")]
    ReadOnly {
        /// The repository path.
        path: PathBuf,
    },

    /// Another connection held the write lock for longer than the busy timeout.
    #[error("repository {path} is locked by another writer (waited {waited_ms} ms)")]
    Locked {
        /// The repository path.
        path: PathBuf,
        /// How long we waited (the busy timeout).
        waited_ms: u64,
    },

    /// Any other SQLite error, with what we were doing at the time.
    #[error("{what} in {path}: {source}")]
    Sqlite {
        /// What we were doing (e.g. "reading the lease").
        what: &'static str,
        /// The repository path.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },

    /// An unknown setting name.
    #[error("unknown setting `{name}`{hint} (known: {known})")]
    UnknownSetting {
        /// The name given.
        name: String,
        /// "; did you mean `NAME`?" for a near miss, otherwise empty.
        hint: String,
        /// The known names, comma separated.
        known: String,
    },

    /// A setting value that does not parse or is out of range.
    #[error("bad value {value:?} for setting `{name}`: {reason}")]
    BadSetting {
        /// The setting name.
        name: String,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: String,
    },

    /// A worker process could not be started.
    #[error("cannot start a worker ({program}): {source}")]
    Spawn {
        /// The program we tried to run.
        program: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },

    /// The lease was taken over while this worker ran (it was paused past
    /// its heartbeat): its term moved, so the worker's end-of-run write is
    /// refused (see [`crate::writes::fenced`]).
    #[error(
        "not recorded in {path}: the lease's term is {found}, not this run's {expected} \
         (another worker took the lease over)"
    )]
    Fenced {
        /// The repository path.
        path: PathBuf,
        /// The term this run held.
        expected: u64,
        /// The term the lease carries now.
        found: u64,
    },

    /// A repository URL that cannot be used.
    #[error("repository URL {url}: {problem}")]
    BadUrl {
        /// The URL, its password hidden.
        url: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A PostgreSQL repository failed, with what we were doing.
    #[error("{what} in {repo}: {source}")]
    Postgres {
        /// What we were doing (e.g. "taking the lease").
        what: &'static str,
        /// The repository URL, its password hidden.
        repo: String,
        /// What went wrong.
        source: crate::db::DbError,
    },

    /// Writing the run log failed.
    #[error("cannot write log file {path}: {source}")]
    LogFile {
        /// The log file path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True if a worker's write was refused because the lease was taken
    /// over (its fencing term moved).
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            Error::Fenced { .. }
                | Error::Postgres {
                    source: crate::db::DbError::Fenced { .. },
                    ..
                }
        )
    }

    /// Wraps an SQLite error, turning "busy"/"locked" into [`Error::Locked`]
    /// and "not a database" into [`Error::NotSqlite`], because those are the
    /// cases an operator needs to tell apart.
    pub(crate) fn sqlite(
        what: &'static str,
        path: &std::path::Path,
        busy_ms: u64,
        e: rusqlite::Error,
    ) -> Error {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => Error::Locked {
                path: path.to_owned(),
                waited_ms: busy_ms,
            },
            Some(ErrorCode::NotADatabase) => Error::NotSqlite {
                path: path.to_owned(),
            },
            Some(ErrorCode::ReadOnly) => Error::ReadOnly {
                path: path.to_owned(),
            },
            _ => Error::Sqlite {
                what,
                path: path.to_owned(),
                source: e,
            },
        }
    }
}
