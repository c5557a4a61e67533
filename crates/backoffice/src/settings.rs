//! Every setting the engine reads, defined once.
//!
//! Settings live in the repository's `config` table, as Fossil's do. The
//! [`SETTINGS`] table is the single definition of each one — name, type,
//! default and help — and the `setting` command, `status` and the README all
//! read it, so they cannot drift apart. Later features (email, hooks) add
//! their rows here.
//!
//! A stored value that does not parse (someone wrote the row by hand) never
//! stops the engine: it falls back to the default and reports the problem
//! in [`Settings::problems`], which `status` and the run log show.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The type of a setting's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// on/off; accepts on, off, yes, no, true, false, 1, 0.
    Bool,
    /// A whole number within bounds.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// A file path; empty means unset.
    Path,
    /// One line of text (no control characters); empty means unset.
    Text,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// An email address; empty means unset.
    Email,
    /// A time of day and a time zone, e.g. `07:00 Europe/Paris`.
    DigestTime,
}

/// One setting's definition.
#[derive(Clone, Copy, Debug)]
pub struct Def {
    /// The `config` row name.
    pub name: &'static str,
    /// The value type.
    pub kind: Kind,
    /// The value used when the row is absent (as stored text).
    pub default: &'static str,
    /// One line for `--help`, `setting` and the README.
    pub help: &'static str,
    /// True if the value must never be printed back (passwords, tokens).
    pub secret: bool,
}

/// `backoffice-disable`
pub const DISABLE: &str = "backoffice-disable";
/// `backoffice-nodelay`
pub const NODELAY: &str = "backoffice-nodelay";
/// `backoffice-logfile`
pub const LOGFILE: &str = "backoffice-logfile";
/// `backoffice-lease-time`
pub const LEASE_TIME: &str = "backoffice-lease-time";

/// `backoffice-heartbeat`
pub const HEARTBEAT: &str = "backoffice-heartbeat";

/// `email-send-method`
pub const EMAIL_SEND_METHOD: &str = "email-send-method";

/// The definition of every setting.
pub const SETTINGS: &[Def] = &[
    Def {
        name: DISABLE,
        kind: Kind::Bool,
        default: "off",
        help: "Never start a worker after a request. Manual and cron runs (`backoffice run`) still work.",
        secret: false,
    },
    Def {
        name: NODELAY,
        kind: Kind::Bool,
        default: "off",
        help: "Never queue a worker on deck: if the lease is held, a new worker exits at once.",
        secret: false,
    },
    Def {
        name: LOGFILE,
        kind: Kind::Path,
        default: "",
        help: "Append one line per run that did work (and every failure to start or run) to this file. A relative path is relative to the repository's folder.",
        secret: false,
    },
    Def {
        name: LEASE_TIME,
        kind: Kind::Int {
            min: 1,
            max: 86_400,
        },
        default: "60",
        help: "Lease length in seconds: runs are at least this far apart, and new work waits at most this long.",
        secret: false,
    },
    Def {
        name: HEARTBEAT,
        kind: Kind::Int { min: 1, max: 3600 },
        default: "5",
        help: "Seconds between a working worker's heartbeats. A holder whose last heartbeat is 4 intervals old counts as gone, even where its pid cannot be checked (another PID namespace).",
        secret: false,
    },
    Def {
        name: EMAIL_SEND_METHOD,
        kind: Kind::Choice(&["off", "relay", "pipe", "dir", "db", "stdout"]),
        default: "off",
        help: "How alerts and digests leave: off, relay (SMTP), pipe (a command), dir (.eml files), db (an SQLite file), stdout.",
        secret: false,
    },
    Def {
        name: "email-self",
        kind: Kind::Email,
        default: "",
        help: "The From address of every message (required to send).",
        secret: false,
    },
    Def {
        name: "email-url",
        kind: Kind::Text,
        default: "",
        help: "The service's base URL, for links and the one-click unsubscribe target (required to send).",
        secret: false,
    },
    Def {
        name: "email-subname",
        kind: Kind::Text,
        default: "",
        help: "Subject prefix, e.g. [my-project] (required to send).",
        secret: false,
    },
    Def {
        name: "email-listid",
        kind: Kind::Text,
        default: "",
        help: "The List-Id header, e.g. \"My project <project.example.org>\"; empty: derived from email-self.",
        secret: false,
    },
    Def {
        name: "email-send-relayhost",
        kind: Kind::Text,
        default: "127.0.0.1",
        help: "relay: the SMTP server, host or host:port.",
        secret: false,
    },
    Def {
        name: "email-send-relay-security",
        kind: Kind::Choice(&["none", "starttls", "tls"]),
        default: "none",
        help: "relay: none (port 25), starttls (port 587) or tls (port 465).",
        secret: false,
    },
    Def {
        name: "email-send-relay-user",
        kind: Kind::Text,
        default: "",
        help: "relay: the user name to log in with; empty: no login.",
        secret: false,
    },
    Def {
        name: "email-send-relay-password",
        kind: Kind::Text,
        default: "",
        help: "relay: the password to log in with. Never printed back.",
        secret: true,
    },
    Def {
        name: "email-send-relay-ca",
        kind: Kind::Path,
        default: "",
        help: "relay: a PEM file of CA certificates to trust besides the built-in public roots (a private CA's); host names are still checked. A relative path is relative to the repository's folder.",
        secret: false,
    },
    Def {
        name: "email-send-command",
        kind: Kind::Text,
        default: "sendmail -ti",
        help: "pipe: the command (run with /bin/sh -c) that reads each message on stdin.",
        secret: false,
    },
    Def {
        name: "email-send-command-timeout",
        kind: Kind::Int { min: 1, max: 3600 },
        default: "60",
        help: "pipe: seconds the command may take per message; then it is killed with everything it started and the message stays queued, with the error recorded.",
        secret: false,
    },
    Def {
        name: "email-send-dir",
        kind: Kind::Path,
        default: "",
        help: "dir: the folder that gets one .eml file per message (never overwriting one). A relative path is relative to the repository's folder.",
        secret: false,
    },
    Def {
        name: "email-send-db",
        kind: Kind::Path,
        default: "",
        help: "db: the SQLite file that gets one row per message in table email(emailid, msg). A relative path is relative to the repository's folder.",
        secret: false,
    },
    Def {
        name: "email-alert-mode",
        kind: Kind::Choice(&["batch", "each"]),
        default: "batch",
        help: "batch: one message per subscriber per run, listing the new events; each: one message per event.",
        secret: false,
    },
    Def {
        name: "email-digest-time",
        kind: Kind::DigestTime,
        default: "12:00 UTC",
        help: "When daily digests go out: HH:MM and a time zone, e.g. 07:00 Europe/Paris.",
        secret: false,
    },
    Def {
        name: "email-max-attempts",
        kind: Kind::Int { min: 1, max: 100 },
        default: "10",
        help: "Delivery attempts before a message is dead (retries back off from 1 minute to 6 hours).",
        secret: false,
    },
    Def {
        name: crate::hooks::TIMEOUT,
        kind: Kind::Int {
            min: 1,
            max: 86_400,
        },
        default: "60",
        help: "Seconds a hook command may run; then everything it started is killed and the run counts as failed.",
        secret: false,
    },
    Def {
        name: crate::hooks::MAX_FAILURES,
        kind: Kind::Int { min: 1, max: 1000 },
        default: "10",
        help: "Failures in a row after which `status` and the run log report a hook as failing (it is still retried hourly).",
        secret: false,
    },
    Def {
        name: crate::webhooks::TIMEOUT,
        kind: Kind::Int { min: 1, max: 300 },
        default: "10",
        help: "Seconds a webhook endpoint has to connect and answer before the attempt counts as failed.",
        secret: false,
    },
    Def {
        name: crate::webhooks::MAX_ATTEMPTS,
        kind: Kind::Int { min: 1, max: 100 },
        default: "10",
        help: "Failed attempts in a row before a webhook endpoint is dead (retries back off from 1 minute to 6 hours).",
        secret: false,
    },
    Def {
        name: crate::webhooks::FOLLOW_REDIRECTS,
        kind: Kind::Bool,
        default: "off",
        help: "Follow 3xx answers from webhook endpoints (at most 5); off: a redirect is a failed attempt.",
        secret: false,
    },
    Def {
        name: crate::replicate::INTERVAL,
        kind: Kind::Int {
            min: 10,
            max: 31_536_000,
        },
        default: "3600",
        help: "Seconds between copies to each replication peer; a copy is made only if the application wrote since the last one.",
        secret: false,
    },
    Def {
        name: crate::replicate::KEEP,
        kind: Kind::Int { min: 1, max: 100 },
        default: "3",
        help: "Replica generations kept on each peer: the target and older copies TARGET.1, TARGET.2, ...",
        secret: false,
    },
    Def {
        name: crate::replicate::STEP_PAGES,
        kind: Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        default: "256",
        help: "Database pages copied per step of a replication (256 pages of 4 KiB: 1 MiB).",
        secret: false,
    },
    Def {
        name: crate::replicate::STEP_PAUSE_MS,
        kind: Kind::Int { min: 0, max: 1000 },
        default: "1",
        help: "Milliseconds a replication pauses between steps, leaving the disk to the application.",
        secret: false,
    },
    Def {
        name: crate::maintain::EMAIL_ADMIN,
        kind: Kind::Email,
        default: "",
        help: "The administrator's address: a failed database check is mailed here (through the outbox). Empty: only reported by `status`.",
        secret: false,
    },
    Def {
        name: crate::maintain::OPTIMIZE_INTERVAL,
        kind: Kind::Int {
            min: 0,
            max: 31_622_400,
        },
        default: "86400",
        help: "Seconds between runs of `PRAGMA optimize`; 0: never.",
        secret: false,
    },
    Def {
        name: crate::maintain::WAL_LIMIT,
        kind: Kind::Int {
            min: 0,
            max: 1 << 40,
        },
        default: "67108864",
        help: "In WAL mode, checkpoint and truncate the WAL (`wal_checkpoint(TRUNCATE)`) when its file is larger than this many bytes (looked at every 10 minutes); 0: never.",
        secret: false,
    },
    Def {
        name: crate::maintain::VACUUM_SHARE,
        kind: Kind::Int { min: 0, max: 100 },
        default: "25",
        help: "With auto_vacuum=INCREMENTAL, run `PRAGMA incremental_vacuum` (in bounded steps) when free pages are more than this percentage of the file; 0: never.",
        secret: false,
    },
    Def {
        name: crate::maintain::CHECK_INTERVAL,
        kind: Kind::Int {
            min: 0,
            max: 31_622_400,
        },
        default: "604800",
        help: "Seconds between runs of `PRAGMA quick_check`; a failure is reported by `status` and mailed to email-admin; 0: never.",
        secret: false,
    },
    Def {
        name: crate::maintain::RETENTION_DAYS,
        kind: Kind::Int {
            min: 0,
            max: 36_500,
        },
        default: "30",
        help: "Sent outbox messages older than this many days are deleted once a day (queued and dead ones are kept); 0: never.",
        secret: false,
    },
];

/// The value of integer setting `name` in this repository: the stored value
/// if it is valid, otherwise the default (`status` reports a bad one).
///
/// An unknown name (a programming error) reads as 0.
pub fn int(conn: &Connection, name: &str) -> i64 {
    let Ok(def) = def(name) else {
        debug_assert!(false, "unknown setting {name}");
        return 0;
    };
    crate::repo::config_get(conn, name)
        .ok()
        .flatten()
        .and_then(|v| def.validate(&v).ok())
        .unwrap_or_else(|| def.default.to_owned())
        .parse()
        .unwrap_or(0)
}

/// Looks up a setting's definition by name.
pub fn def(name: &str) -> Result<&'static Def> {
    SETTINGS
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| Error::UnknownSetting {
            name: name.to_owned(),
            known: SETTINGS
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Parses a boolean the way Fossil does (and a little more forgivingly
/// about case). `None` if it is not a boolean.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Some(true),
        "off" | "no" | "false" | "0" | "" => Some(false),
        _ => None,
    }
}

impl Def {
    /// Checks and normalises a value given by a user, or says why not.
    pub fn validate(&self, value: &str) -> Result<String> {
        let bad = |reason: String| Error::BadSetting {
            name: self.name.to_owned(),
            value: value.to_owned(),
            reason,
        };
        match self.kind {
            Kind::Bool => match parse_bool(value) {
                Some(true) => Ok("on".into()),
                Some(false) => Ok("off".into()),
                None => Err(bad("expected on or off".into())),
            },
            Kind::Int { min, max } => {
                let n: i64 = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("expected a whole number".into()))?;
                if n < min || n > max {
                    return Err(bad(format!("must be between {min} and {max}")));
                }
                Ok(n.to_string())
            }
            Kind::Path => {
                if value.contains('\0') || value.contains('\n') {
                    return Err(bad("a path cannot contain NUL or newline".into()));
                }
                Ok(value.to_owned())
            }
            Kind::Text => {
                if value.chars().any(char::is_control) {
                    return Err(bad("must be one line without control characters".into()));
                }
                Ok(value.trim().to_owned())
            }
            Kind::Choice(words) => {
                let v = value.trim().to_ascii_lowercase();
                if words.contains(&v.as_str()) {
                    Ok(v)
                } else {
                    Err(bad(format!("expected one of: {}", words.join(", "))))
                }
            }
            Kind::Email => {
                let v = value.trim();
                if v.is_empty() {
                    return Ok(String::new());
                }
                crate::notify::address::check(v).map_err(bad)?;
                Ok(v.to_owned())
            }
            Kind::DigestTime => Ok(crate::notify::schedule::DigestTime::parse(value)
                .map_err(bad)?
                .to_string()),
        }
    }
}

/// The engine's settings, read from one repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `backoffice-disable`
    pub disable: bool,
    /// `backoffice-nodelay`
    pub nodelay: bool,
    /// `backoffice-logfile`, if set.
    pub logfile: Option<std::path::PathBuf>,
    /// `backoffice-lease-time`, seconds.
    pub lease_time: i64,
    /// `backoffice-heartbeat`, seconds.
    pub heartbeat: i64,
    /// Stored values that did not parse, each as "name: problem"; the
    /// default was used instead.
    pub problems: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            disable: false,
            nodelay: false,
            logfile: None,
            lease_time: 60,
            heartbeat: 5,
            problems: Vec::new(),
        }
    }
}

impl Settings {
    /// Builds settings from stored `(name, value)` pairs; names not listed
    /// keep their defaults.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        let mut s = Settings::default();
        for (name, value) in pairs {
            let Ok(def) = def(name) else { continue };
            match def.validate(value) {
                Ok(v) => match name {
                    DISABLE => s.disable = v == "on",
                    NODELAY => s.nodelay = v == "on",
                    LOGFILE => s.logfile = (!v.is_empty()).then(|| v.into()),
                    LEASE_TIME => s.lease_time = v.parse().unwrap_or(60),
                    HEARTBEAT => s.heartbeat = v.parse().unwrap_or(5),
                    _ => {}
                },
                Err(e) => s
                    .problems
                    .push(format!("{e}; using the default ({})", def.default)),
            }
        }
        s
    }

    /// Reads the engine's settings from a repository connection. A missing
    /// `config` table means all defaults. A relative `backoffice-logfile`
    /// is resolved against the repository's folder ([`resolve_path`]).
    pub fn load(conn: &Connection) -> rusqlite::Result<Settings> {
        let pairs = crate::repo::config_get_many(
            conn,
            &[DISABLE, NODELAY, LOGFILE, LEASE_TIME, HEARTBEAT],
        )?;
        let mut s = Settings::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        s.logfile = s.logfile.map(|p| resolve_path(conn, &p));
        Ok(s)
    }
}

/// A path from a setting, made absolute: a relative one is relative to the
/// repository's folder (the folder of `conn`'s main database file), never
/// to the working directory, which is `/` for a detached worker and
/// anything at all for a command or an application. An absolute path, or
/// a connection without a file, leaves it as it is.
pub fn resolve_path(conn: &Connection, value: &std::path::Path) -> std::path::PathBuf {
    if value.is_absolute() || value.as_os_str().is_empty() {
        return value.to_owned();
    }
    // SQLite keeps the database's full path name (made absolute when it
    // was opened).
    match conn
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::Path::new)
        .and_then(std::path::Path::parent)
    {
        Some(folder) => folder.join(value),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let e = def(LEASE_TIME)
            .unwrap()
            .validate("0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("between 1 and 86400"), "{e}");
        let e = def(DISABLE)
            .unwrap()
            .validate("maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on or off"), "{e}");
        assert_eq!(def(DISABLE).unwrap().validate("YES").unwrap(), "on");
        assert!(
            def("backoffice-bogus")
                .unwrap_err()
                .to_string()
                .contains("unknown setting")
        );
    }

    /// The README's settings table is this table: same names, defaults, help.
    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../../README.md");
        for d in SETTINGS {
            let row = format!("| `{}` | `{}` | {} |", d.name, d.default, d.help);
            assert!(readme.contains(&row), "README.md lacks the row:\n{row}");
        }
    }

    #[test]
    fn malformed_stored_values_fall_back_and_are_reported() {
        let s = Settings::from_pairs([(LEASE_TIME, "soon"), (DISABLE, "1")]);
        assert_eq!(s.lease_time, 60);
        assert!(s.disable);
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0].contains("backoffice-lease-time"));
    }
}
