//! Send methods: how a composed message leaves the outbox.
//!
//! Every method implements [`Transport`]. The delivery loop (see
//! [`super::deliver`]) opens one transport per run, hands it each due
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

    /// Ends the run: close connections, flush files. Called once, after
    /// the last `send`, whether or not the sends succeeded.
    fn finish(&mut self) {}
}
