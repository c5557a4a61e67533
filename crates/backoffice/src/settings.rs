//! Settings: each one defined once, by whoever reads it.
//!
//! Settings live in the repository's `config` table, as Fossil's do. Each
//! is defined once by a [`Def`] — name, type, default, help and, where the
//! type needs one, a validator. The engine's own are [`ENGINE`]; each task
//! declares its own ([`Task::settings`]), and the task list gathers them
//! all into a [`Registry`] ([`Tasks::settings`]). The `setting` command,
//! `status`, the web page and the README check all read that registry, so
//! they cannot drift apart, and a host's own task adds a setting the same
//! way the shipped tasks do.
//!
//! [`Task::settings`]: crate::Task::settings
//! [`Tasks::settings`]: crate::Tasks::settings
//!
//! A stored value that does not parse (someone wrote the row by hand) never
//! stops the engine: it falls back to the default and reports the problem
//! in [`Settings::problems`], which `status` and the run log show.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The type of a setting's value.
#[derive(Clone, Copy, Debug)]
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
    /// Checked by the task that defines it: the function returns the value
    /// normalised, or says what is wrong with it (e.g. an email address, a
    /// time of day in a time zone).
    Custom(fn(&str) -> std::result::Result<String, String>),
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
/// `event-retention-days`
pub const EVENT_RETENTION_DAYS: &str = "event-retention-days";
/// `web-public-summary`
pub const WEB_PUBLIC_SUMMARY: &str = "web-public-summary";
/// `web-session-hours`
pub const WEB_SESSION_HOURS: &str = "web-session-hours";

/// The engine's own settings. Each task adds its own ([`Task::settings`]);
/// [`Tasks::settings`] lists them all.
///
/// [`Task::settings`]: crate::Task::settings
/// [`Tasks::settings`]: crate::Tasks::settings
pub const ENGINE: &[Def] = &[
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
        name: EVENT_RETENTION_DAYS,
        kind: Kind::Int {
            min: 0,
            max: 36_500,
        },
        default: "0",
        help: "Once a day, a worker run deletes the events (`bo_event`) older than this many days that every task is done with: events a hook, a webhook endpoint (dead ones too) or alerts and digests still need are kept, whatever their age, and so is the newest event. 0: keep every event forever.",
        secret: false,
    },
    Def {
        name: WEB_PUBLIC_SUMMARY,
        kind: Kind::Bool,
        default: "off",
        help: "Show a redacted summary to visitors without the token: on the index and the status page, counts, ages, history and which tasks have problems, never the problems' text, addresses, commands, peers or settings. Off: the index shows only the name, and every detail needs the token.",
        secret: false,
    },
    Def {
        name: WEB_SESSION_HOURS,
        kind: Kind::Int { min: 1, max: 720 },
        default: "12",
        help: "Hours a web session (the cookie the token form gives) lasts.",
        secret: false,
    },
];

/// The value of integer setting `name`, defined in `defs`, in this
/// repository: the stored value if it is valid, otherwise the default
/// (`status` reports a bad one).
///
/// A name `defs` does not define (a programming error) reads as 0.
pub fn int(conn: &Connection, defs: &[Def], name: &str) -> i64 {
    let Some(def) = find(defs, name) else {
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

/// The definition of `name` in `defs`, if any.
pub fn find<'a>(defs: &'a [Def], name: &str) -> Option<&'a Def> {
    defs.iter().find(|d| d.name == name)
}

/// Every setting of a task list: the engine's, then each task's, in the
/// order the tasks were added. Built by [`Tasks::settings`].
///
/// [`Tasks::settings`]: crate::Tasks::settings
#[derive(Clone, Debug)]
pub struct Registry {
    defs: Vec<Def>,
}

impl Registry {
    /// A registry of these definitions. A name defined twice keeps its
    /// first definition (the engine's settings come first).
    pub fn new(defs: impl IntoIterator<Item = Def>) -> Registry {
        let mut out: Vec<Def> = Vec::new();
        for d in defs {
            if !out.iter().any(|o| o.name == d.name) {
                out.push(d);
            }
        }
        Registry { defs: out }
    }

    /// Looks up a setting's definition by name; an unknown name is an
    /// error that lists the known ones.
    pub fn def(&self, name: &str) -> Result<&Def> {
        find(&self.defs, name).ok_or_else(|| Error::UnknownSetting {
            name: name.to_owned(),
            hint: self
                .nearest(name)
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default(),
            known: self
                .defs
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The known name closest to a mistyped one, if it is close enough to
    /// be a typo: at most a third of its letters edited (at least one), so
    /// `backoffice-disabled` suggests `backoffice-disable` and `colour`
    /// suggests nothing. A tie goes to the first defined.
    pub fn nearest(&self, name: &str) -> Option<&'static str> {
        let limit = (name.chars().count() / 3).max(1);
        self.defs
            .iter()
            .map(|d| (edit_distance(name, d.name), d.name))
            .filter(|&(n, _)| n <= limit)
            .min_by_key(|&(n, _)| n)
            .map(|(_, d)| d)
    }

    /// Every definition, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Def> {
        self.defs.iter()
    }
}

/// The Levenshtein distance between two names (insertions, deletions and
/// substitutions of one character), on two rows: names are short, and a
/// typo hint needs no crate.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
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
            // A refused password is still a password: never print it back.
            value: if self.secret {
                "********".to_owned()
            } else {
                value.to_owned()
            },
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
            Kind::Custom(check) => check(value).map_err(bad),
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
    /// `event-retention-days`; 0: events are kept forever.
    pub event_retention_days: i64,
    /// Not a setting: when the event log was last purged (the
    /// [`PURGE_ROW`](crate::events::PURGE_ROW) row), read in the same go as
    /// the settings so that a run where no purge is due costs nothing more.
    pub last_event_purge: Option<i64>,
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
            event_retention_days: 0,
            last_event_purge: None,
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
            if name == crate::events::PURGE_ROW {
                // A damaged mark reads as "never": one purge too many,
                // never one too few.
                s.last_event_purge = value.trim().parse().ok();
                continue;
            }
            let Some(def) = find(ENGINE, name) else {
                continue;
            };
            match def.validate(value) {
                Ok(v) => match name {
                    DISABLE => s.disable = v == "on",
                    NODELAY => s.nodelay = v == "on",
                    LOGFILE => s.logfile = (!v.is_empty()).then(|| v.into()),
                    LEASE_TIME => s.lease_time = v.parse().unwrap_or(60),
                    HEARTBEAT => s.heartbeat = v.parse().unwrap_or(5),
                    EVENT_RETENTION_DAYS => s.event_retention_days = v.parse().unwrap_or(0),
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
            &[
                DISABLE,
                NODELAY,
                LOGFILE,
                LEASE_TIME,
                HEARTBEAT,
                EVENT_RETENTION_DAYS,
                crate::events::PURGE_ROW,
            ],
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
        let reg = Registry::new(ENGINE.iter().copied());
        let e = reg
            .def(LEASE_TIME)
            .unwrap()
            .validate("0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("between 1 and 86400"), "{e}");
        let e = reg
            .def(DISABLE)
            .unwrap()
            .validate("maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on or off"), "{e}");
        assert_eq!(reg.def(DISABLE).unwrap().validate("YES").unwrap(), "on");
        assert!(
            reg.def("backoffice-bogus")
                .unwrap_err()
                .to_string()
                .contains("unknown setting")
        );
    }

    #[test]
    fn a_refused_secret_value_is_not_printed_back() {
        let def = Def {
            name: "some-password",
            kind: Kind::Text,
            default: "",
            help: "",
            secret: true,
        };
        let e = def.validate("hunter2\nmore").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("some-password") && e.contains("one line"), "{e}");
    }

    #[test]
    fn a_near_miss_suggests_the_setting_meant() {
        let reg = Registry::new(ENGINE.iter().cloned());
        let e = reg.def("backoffice-disabled").unwrap_err().to_string();
        assert!(
            e.contains("unknown setting `backoffice-disabled`; did you mean `backoffice-disable`?"),
            "{e}"
        );
        let e = reg.def("backofice-lease-tme").unwrap_err().to_string();
        assert!(e.contains("did you mean `backoffice-lease-time`?"), "{e}");
        // Nothing close: no guess, only the list.
        let e = reg.def("colour").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert!(e.contains("known: backoffice-"), "{e}");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    /// The README's settings table documents the engine's settings: same
    /// names, defaults, help. (Each task's crate checks its own.)
    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../../README.md");
        for d in ENGINE {
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
