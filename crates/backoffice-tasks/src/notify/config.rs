//! The email settings, read and checked together.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use backoffice::repo::config_get;
use backoffice::settings::{self, Def, Kind};

use super::schedule::DigestTime;

/// `email-send-method`
pub const EMAIL_SEND_METHOD: &str = "email-send-method";

/// The settings this task reads (see [`backoffice::settings`]).
pub const SETTINGS: &[Def] = &[
    Def {
        name: EMAIL_SEND_METHOD,
        kind: Kind::Choice(&["off", "relay", "pipe", "dir", "db", "stdout"]),
        default: "off",
        help: "How alerts and digests leave: off, relay (SMTP), pipe (a command), dir (.eml files), db (an SQLite file), stdout.",
        secret: false,
    },
    Def {
        name: "email-self",
        kind: Kind::Custom(crate::notify::address::setting),
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
        help: "relay: a PEM file of CA certificates to trust besides the built-in public roots (a private CA's); host names are still checked. A relative path is relative to the repository's folder (on PostgreSQL: to the worker's current directory).",
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
        help: "dir: the folder that gets one .eml file per message (never overwriting one). A relative path is relative to the repository's folder (on PostgreSQL: to the worker's current directory).",
        secret: false,
    },
    Def {
        name: "email-send-db",
        kind: Kind::Path,
        default: "",
        help: "db: the SQLite file that gets one row per message in table email(emailid, msg). A relative path is relative to the repository's folder (on PostgreSQL: to the worker's current directory).",
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
        kind: Kind::Custom(crate::notify::schedule::DigestTime::setting),
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
        name: "email-signup",
        kind: Kind::Bool,
        default: "off",
        help: "Self-service sign-up on the web: the /r/NAME/subscribe form, the emailed confirmation link (double opt-in) and the /r/NAME/alerts/CODE page where a subscriber changes or leaves. Off: those pages answer 404. SQLite repositories only.",
        secret: false,
    },
    Def {
        name: "email-signup-link-lifetime",
        kind: Kind::Int { min: 1, max: 720 },
        default: "24",
        help: "Hours a sign-up confirmation link works; after that the visitor signs up again.",
        secret: false,
    },
    Def {
        name: "email-signup-per-client",
        kind: Kind::Int {
            min: 1,
            max: 100000,
        },
        default: "5",
        help: "Sign-ups a repository accepts per hour from one client address (behind a proxy every client has the proxy's address); more are answered 429.",
        secret: false,
    },
    Def {
        name: "email-signup-per-repository",
        kind: Kind::Int {
            min: 1,
            max: 1000000,
        },
        default: "100",
        help: "Sign-ups a repository accepts per hour from all clients together; more are answered 429.",
        secret: false,
    },
];

/// How messages leave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// Nothing is sent.
    Off,
    /// SMTP to `email-send-relayhost`.
    Relay,
    /// A command reading the message on stdin, and its time limit in seconds.
    Pipe(String, u64),
    /// `.eml` files in a folder.
    Dir(PathBuf),
    /// Rows in an SQLite file.
    Db(PathBuf),
    /// Printed on stdout.
    Stdout,
}

/// The email settings of one repository. Its `Debug` masks the password.
#[derive(Clone)]
pub struct EmailConfig {
    /// `email-send-method` and its target.
    pub method: Method,
    /// `email-self`.
    pub from: String,
    /// `email-url`.
    pub url: String,
    /// `email-subname`.
    pub subname: String,
    /// `email-listid`, or one derived from `email-self`.
    pub list_id: String,
    /// `email-alert-mode` is `each`.
    pub one_per_event: bool,
    /// `email-digest-time`.
    pub digest_time: DigestTime,
    /// `email-max-attempts`.
    pub max_attempts: i64,
    /// `email-send-relayhost`.
    pub relay_host: String,
    /// `email-send-relay-security`.
    pub relay_security: String,
    /// `email-send-relay-user`.
    pub relay_user: String,
    /// `email-send-relay-password` (never printed).
    pub relay_password: String,
    /// `email-send-relay-ca`, resolved against the repository's folder.
    pub relay_ca: Option<PathBuf>,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("method", &self.method)
            .field("from", &self.from)
            .field("url", &self.url)
            .field("subname", &self.subname)
            .field("relay_host", &self.relay_host)
            .field("relay_user", &self.relay_user)
            .field(
                "relay_password",
                &if self.relay_password.is_empty() {
                    ""
                } else {
                    "********"
                },
            )
            .finish_non_exhaustive()
    }
}

/// Reads one setting, validated; a bad stored value is an error naming it.
fn get<E: std::fmt::Display>(
    read: &dyn Fn(&str) -> Result<Option<String>, E>,
    name: &str,
) -> Result<String, String> {
    let def = settings::find(SETTINGS, name).ok_or_else(|| format!("unknown setting {name}"))?;
    match read(name).map_err(|e| format!("reading {name}: {e}"))? {
        None => Ok(def.default.to_owned()),
        Some(v) => def.validate(&v).map_err(|e| e.to_string()),
    }
}

impl EmailConfig {
    /// Reads the settings. `Err` lists every problem: settings that are
    /// missing for the chosen method, or malformed — Fossil silently sends
    /// nothing in that case; we say exactly what to set.
    pub fn load(conn: &Connection) -> Result<EmailConfig, Vec<String>> {
        Self::load_with(&|name| config_get(conn, name), &|p| {
            settings::resolve_path(conn, p)
        })
    }

    /// [`EmailConfig::load`] on either store. On PostgreSQL a relative
    /// path (`email-send-dir`, `email-send-db`, `email-send-relay-ca`) is
    /// relative to the worker's current directory: a schema has no folder.
    pub fn load_db(db: backoffice::Db<'_>) -> Result<EmailConfig, Vec<String>> {
        match db.sqlite() {
            Some(conn) => Self::load(conn),
            None => Self::load_with(&|name| db.config_get(name), &Path::to_path_buf),
        }
    }

    fn load_with<E: std::fmt::Display>(
        read: &dyn Fn(&str) -> Result<Option<String>, E>,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<EmailConfig, Vec<String>> {
        let mut problems = Vec::new();
        let mut take = |name: &str| {
            get(read, name).unwrap_or_else(|e| {
                problems.push(e);
                String::new()
            })
        };
        let method = take(EMAIL_SEND_METHOD);
        let from = take("email-self");
        let url = take("email-url");
        let subname = take("email-subname");
        let list_id = take("email-listid");
        let mode = take("email-alert-mode");
        let digest = take("email-digest-time");
        let attempts = take("email-max-attempts");
        let relay_host = take("email-send-relayhost");
        let relay_security = take("email-send-relay-security");
        let relay_user = take("email-send-relay-user");
        let relay_password = take("email-send-relay-password");
        let relay_ca = take("email-send-relay-ca");
        let command = take("email-send-command");
        let command_timeout = take("email-send-command-timeout");
        let dir = take("email-send-dir");
        let db = take("email-send-db");
        let method = match method.as_str() {
            "relay" => Method::Relay,
            "pipe" => Method::Pipe(command, command_timeout.parse().unwrap_or(60)),
            // Relative to the repository's folder (see settings::resolve_path).
            "dir" => Method::Dir(resolve(Path::new(&dir))),
            "db" => Method::Db(resolve(Path::new(&db))),
            "stdout" => Method::Stdout,
            _ => Method::Off,
        };
        if method != Method::Off {
            for (name, v) in [
                ("email-self", &from),
                ("email-url", &url),
                ("email-subname", &subname),
            ] {
                if v.is_empty() {
                    problems.push(format!("{name} is not set (needed to send email)"));
                }
            }
            match &method {
                Method::Dir(p) if p.as_os_str().is_empty() => problems
                    .push("email-send-dir is not set (needed by email-send-method dir)".into()),
                Method::Db(p) if p.as_os_str().is_empty() => problems
                    .push("email-send-db is not set (needed by email-send-method db)".into()),
                Method::Pipe(c, _) if c.is_empty() => problems.push(
                    "email-send-command is not set (needed by email-send-method pipe)".into(),
                ),
                Method::Relay if relay_host.is_empty() => problems.push(
                    "email-send-relayhost is not set (needed by email-send-method relay)".into(),
                ),
                _ => {}
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
        let list_id = if list_id.is_empty() {
            format!(
                "<{}.{domain}>",
                subname.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            )
        } else {
            list_id
        };
        Ok(EmailConfig {
            method,
            from,
            url,
            subname,
            list_id,
            one_per_event: mode == "each",
            digest_time: DigestTime::parse(&digest).unwrap_or_default(),
            max_attempts: attempts.parse().unwrap_or(10),
            relay_host,
            relay_security,
            relay_user,
            relay_password,
            relay_ca: (!relay_ca.is_empty()).then(|| resolve(Path::new(&relay_ca))),
        })
    }

    /// The domain part of `email-self`, for Message-IDs.
    pub fn domain(&self) -> &str {
        self.from
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("localhost")
    }

    /// The one-click unsubscribe target for a subscriber's code.
    pub fn unsubscribe_url(&self, code: &str) -> Option<String> {
        (!self.url.is_empty() && !code.is_empty())
            .then(|| format!("{}/unsubscribe/{code}", self.url.trim_end_matches('/')))
    }

    /// Opens the transport for one delivery run.
    pub fn transport(&self) -> Result<Box<dyn super::send::Transport>, String> {
        use super::send;
        Ok(match &self.method {
            Method::Off => return Err("email-send-method is off".into()),
            Method::Relay => super::smtp::open(self)?,
            Method::Pipe(c, secs) => {
                Box::new(send::Pipe::new(c, std::time::Duration::from_secs(*secs)))
            }
            Method::Dir(d) => Box::new(send::Dir::open(d)?),
            Method::Db(p) => Box::new(send::Db::open(p)?),
            Method::Stdout => Box::new(send::Stdout),
        })
    }
}
