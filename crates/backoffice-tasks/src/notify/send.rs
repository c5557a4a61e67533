//! Send methods: how a composed message leaves the outbox.
//!
//! Every method implements [`Transport`]. The delivery loop (see
//! [`super::outbox::deliver`]) opens one transport per run, hands it each due
//! message as finished RFC 5322 bytes, and records the outcome in the
//! outbox: sent, retried later with backoff ([`SendError::permanent`] false),
//! or dead (true, or too many attempts).
//!
//! Methods, by the `email-send-method` setting (Fossil's names):
//! `off`, `relay` (SMTP, [`super::smtp`]), `pipe` (a command reading the
//! message on stdin), `dir` (one `.eml` file per message, written
//! atomically), `db` (an SQLite file with `email(emailid INTEGER PRIMARY
//! KEY, msg TEXT)`), `stdout`.

/// Who a message is from and to, as the transport (not the headers) sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The recipients (`RCPT TO`).
    pub to: Vec<String>,
}

/// Why a message could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    /// True if retrying cannot help (a 5xx reply, a malformed address):
    /// the message goes straight to the dead letters. False for anything
    /// that may pass later (a 4xx reply, a refused or dropped connection,
    /// a timeout, a full disk).
    pub permanent: bool,
    /// What happened, for the outbox's `last_error` and `status`. Never
    /// contains a password.
    pub message: String,
}

impl SendError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> SendError {
        SendError {
            permanent: false,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            permanent: true,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SendError {}

/// A way to send messages. One value serves one delivery run, so it may
/// keep a connection open between messages.
pub trait Transport {
    /// Sends one message: `raw` is the whole message, headers and body,
    /// with CRLF line ends.
    fn send(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<(), SendError>;

    /// Sends one message known by a stable id (its outbox row), which a
    /// transport may use to make a repeated send idempotent (`dir` names the
    /// file after it). By default the same as [`Transport::send`].
    fn send_with_id(&mut self, id: &str, envelope: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        let _ = id;
        self.send(envelope, raw)
    }

    /// True if the messages `send` accepted are not yet held by the
    /// destination until [`Transport::commit`] (the `db` method's
    /// transaction). False (the default): each `Ok` from `send` means the
    /// destination has the message.
    fn batched(&self) -> bool {
        false
    }

    /// True if a message sent again under the same id leaves the
    /// destination as it was (`dir` never replaces the file a message's id
    /// names), so a re-sent message is no duplicate. False by default.
    fn idempotent(&self) -> bool {
        false
    }

    /// Makes every message accepted since the last commit durable at the
    /// destination. The delivery loop records none of them as sent before
    /// this returns `Ok`; an `Err` turns each into a failed attempt with
    /// that error. By default nothing to do.
    fn commit(&mut self) -> Result<(), SendError> {
        Ok(())
    }

    /// Ends the run: close connections, flush files. Called once, after
    /// the last `send`, whether or not the sends succeeded.
    fn finish(&mut self) {}
}

/// `dir`: one `.eml` file per message, written to a temporary name and
/// moved into place, so a reader never sees half a message. The file is
/// named after the message's unique token (see [`super::outbox`]), and an
/// existing file is never replaced: a file already there under a message's
/// name is that same message from an attempt whose outcome a crash kept
/// from being recorded, so it counts as sent and is left alone.
pub struct Dir {
    dir: std::path::PathBuf,
}

impl Dir {
    /// Opens (creating if needed) the folder.
    pub fn open(dir: &std::path::Path) -> Result<Dir, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create email-send-dir {}: {e}", dir.display()))?;
        Ok(Dir {
            dir: dir.to_owned(),
        })
    }

    /// Sends with a file name derived from the message id.
    pub fn send_named(&mut self, name: &str, raw: &[u8]) -> Result<(), SendError> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-._".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let tmp = self.dir.join(format!(".{safe}.{}.tmp", std::process::id()));
        let dst = self.dir.join(format!("{safe}.eml"));
        let put = std::fs::write(&tmp, raw).and_then(|()| move_no_replace(&tmp, &dst));
        match put {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    // The same message, from an earlier attempt.
                    return Ok(());
                }
                Err(SendError::transient(format!(
                    "cannot write {}: {e}",
                    dst.display()
                )))
            }
        }
    }
}

/// Moves `from` to `to` unless `to` exists (`AlreadyExists` then):
/// `renameat2(RENAME_NOREPLACE)`, or a hard link and an unlink where the
/// file system lacks it.
fn move_no_replace(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

impl Transport for Dir {
    fn send_with_id(&mut self, id: &str, _: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        self.send_named(id, raw)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn send(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        // Without a message id (not the outbox's path): the time, the
        // recipient and random bits, so no two messages share a name.
        let mut b = [0u8; 8];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        let name = format!(
            "{}-{}-{}",
            backoffice::clock::now(),
            envelope.to.first().map(String::as_str).unwrap_or("x"),
            u64::from_le_bytes(b)
        );
        self.send_named(&name, raw)
    }
}

/// `db`: one row per message in `email(emailid INTEGER PRIMARY KEY, msg
/// TEXT)` of an SQLite file, as Fossil's `db` method writes; the table is
/// created if missing. One transaction per batch of the delivery loop: its
/// messages count as sent only once [`Transport::commit`] has committed it
/// (a reader holding the mail database past the busy timeout makes the
/// commit fail, and the whole batch stays queued with that error).
pub struct Db {
    conn: rusqlite::Connection,
    path: std::path::PathBuf,
    open_tx: bool,
}

impl Db {
    /// Opens (creating if needed) the database and its table.
    pub fn open(path: &std::path::Path) -> Result<Db, String> {
        let err = |e: rusqlite::Error| format!("email-send-db {}: {e}", path.display());
        let conn = rusqlite::Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS email(emailid INTEGER PRIMARY KEY, msg TEXT)",
        )
        .map_err(err)?;
        Ok(Db {
            conn,
            path: path.to_owned(),
            open_tx: false,
        })
    }
}

impl Transport for Db {
    fn send(&mut self, _: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        let err = |e: rusqlite::Error| {
            SendError::transient(format!("email-send-db {}: {e}", self.path.display()))
        };
        if !self.open_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
            self.open_tx = true;
        }
        self.conn
            .prepare_cached("INSERT INTO email(msg) VALUES (?1)")
            .and_then(|mut s| s.execute([String::from_utf8_lossy(raw)]))
            .map(drop)
            .map_err(err)
    }

    fn batched(&self) -> bool {
        true
    }

    fn commit(&mut self) -> Result<(), SendError> {
        if !self.open_tx {
            return Ok(());
        }
        self.open_tx = false;
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(e) => {
                // A failed COMMIT may leave the transaction open: end it,
                // so the next batch starts clean.
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(SendError::transient(format!(
                    "email-send-db {}: cannot commit: {e}",
                    self.path.display()
                )))
            }
        }
    }

    fn finish(&mut self) {
        // Everything that counted was committed by `commit`; anything left
        // (a send after the last commit cannot happen) is not claimed sent.
        if self.open_tx {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.open_tx = false;
        }
    }
}

/// `pipe`: runs a command (with `/bin/sh -c`; the command comes from the
/// `email-send-command` setting, never from event data) once per message
/// and gives it the message on stdin, e.g. `sendmail -ti`.
///
/// The message is written whole to a memory file before the command
/// starts, and the command reads that: it can never see a cut-off message
/// that ends in EOF because this worker died mid-write (`sendmail -ti` sends
/// whatever it read by then). The command runs under [`backoffice::child`]: its
/// whole process tree is killed if this worker dies, and when it runs past
/// `email-send-command-timeout`; the message then stays queued.
pub struct Pipe {
    command: String,
    timeout: std::time::Duration,
}

impl Pipe {
    /// A pipe to `command`, each run at most `timeout`.
    pub fn new(command: &str, timeout: std::time::Duration) -> Pipe {
        Pipe {
            command: command.to_owned(),
            timeout,
        }
    }
}

/// Most bytes of a failed command's stderr kept for its error.
const PIPE_STDERR_MAX: usize = 4096;

impl Transport for Pipe {
    fn send(&mut self, _: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        // The message uses CRLF; sendmail-style programs expect LF.
        let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
        let mut stderr = Vec::new();
        let ran = backoffice::child::run(
            &backoffice::child::Spec {
                command: &self.command,
                dir: None,
                env: Vec::new(),
                input: text.as_bytes(),
                stdout: false,
                timeout: self.timeout,
            },
            &mut |b| {
                let room = PIPE_STDERR_MAX.saturating_sub(stderr.len());
                stderr.extend_from_slice(&b[..b.len().min(room)]);
            },
        )
        .map_err(|e| SendError::transient(format!("cannot run email-send-command: {e}")))?;
        let Some(status) = ran.status else {
            return Err(SendError::transient(format!(
                "email-send-command timed out after {} s (killed; see email-send-command-timeout)",
                self.timeout.as_secs()
            )));
        };
        // A command that failed says more (its exit status and stderr) than
        // how much of the message it read, so that comes first.
        if status.success() {
            let len = text.len() as u64;
            if ran.input_read < len {
                return Err(SendError::transient(format!(
                    "email-send-command did not read the message (read {} of {len} bytes)",
                    ran.input_read
                )));
            }
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&stderr);
            let err: String = super::one_line(&err).chars().take(200).collect();
            let said = if err.is_empty() {
                " and printed nothing".to_owned()
            } else {
                format!(": {err}")
            };
            Err(SendError::transient(format!(
                "email-send-command failed ({status}){said}"
            )))
        }
    }
}

/// `stdout`: prints each message (for trying things out).
pub struct Stdout;

impl Transport for Stdout {
    fn send(&mut self, _: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(
            &raw.iter()
                .copied()
                .filter(|&b| b != b'\r')
                .collect::<Vec<u8>>(),
        )
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| SendError::transient(format!("stdout: {e}")))
    }
}
