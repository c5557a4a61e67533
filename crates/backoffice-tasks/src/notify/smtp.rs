//! The `relay` send method: SMTP to a mail submission agent.
//!
//! # The model
//!
//! A [`Relay`] serves one delivery run. It connects on the first
//! [`send`](Transport::send), keeps that one connection for every later
//! message of the run (`MAIL FROM`, `RCPT TO`, `DATA` over and over), and
//! says `QUIT` in [`finish`](Transport::finish). A thousand alerts cost one
//! TCP (and TLS, and AUTH) handshake, not a thousand.
//!
//! lettre's `SmtpTransport` only reuses connections through its `pool`
//! feature, which we do not build; and its [`SmtpConnection::send`] closes
//! the connection on *any* negative reply, so one refused recipient would
//! cost a reconnect. We drive lettre's lower-level [`SmtpConnection`]
//! ourselves instead: a refused transaction is answered with `RSET` and the
//! connection stays.
//!
//! # Outcomes
//!
//! Each message ends in one of three ways, which the delivery loop turns into
//! outbox states ([`SendError::permanent`]):
//!
//! * **sent**: the server answered `250` to the end of the data;
//! * **permanent**: the server answered `5xx` to this message's `MAIL`,
//!   `RCPT` or `DATA`, or an address is malformed — retrying cannot help;
//! * **transient**: anything else — a `4xx` reply, a refused, reset or
//!   dropped connection, a timeout, a TLS failure.
//!
//! Failures while *opening* a session (greeting, `EHLO`, `STARTTLS`,
//! `AUTH`) are transient even when the reply is `5xx`: a wrong password or a
//! relay that does not offer STARTTLS is a configuration problem, not a
//! property of the message, and must delay the queue rather than kill it.
//! After such a failure the relay is not tried again for the rest of the run:
//! every remaining message fails at once with the same error, instead of each
//! waiting out its own connect timeout.
//!
//! A connection that breaks mid-run fails the message in flight (transient:
//! the server may or may not have kept it; the stable `Message-ID` makes a
//! duplicate recognisable) and the next `send` reconnects. One case is
//! retried at once: a reused connection that turns out dead at `MAIL FROM`,
//! before any of the message was sent — typically the server's idle timeout
//! closed it between two messages — so nothing can be delivered twice.
//!
//! Error messages name the relay (`host:port`) and quote the server's reply.
//! The password never appears in them, nor in any `Debug` output: it is
//! masked even if a server echoes it back.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

use super::send::{Envelope, SendError, Transport};

/// How the connection to the relay is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    /// Plain SMTP, as Fossil does it. Messages, and the password if one is
    /// set, cross the network in clear text: meant for a relay on the same
    /// host or a trusted network. Default port 25.
    #[default]
    None,
    /// Plain connection upgraded with `STARTTLS`, which is then required: a
    /// relay that does not offer it is an error, never a silent downgrade.
    /// Default port 587 (submission).
    StartTls,
    /// TLS from the first byte ("SMTPS"). Default port 465.
    Tls,
}

impl Security {
    /// The port used when the relay host names none.
    pub fn default_port(self) -> u16 {
        match self {
            Security::None => 25,
            Security::StartTls => 587,
            Security::Tls => 465,
        }
    }
}

impl FromStr for Security {
    type Err = RelayConfigError;

    /// `none`, `starttls` or `tls` (any case).
    fn from_str(s: &str) -> Result<Security, RelayConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Security::None),
            "starttls" => Ok(Security::StartTls),
            "tls" => Ok(Security::Tls),
            _ => Err(RelayConfigError::new(
                s,
                "unknown connection security (use none, starttls or tls)",
            )),
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::None => "none",
            Security::StartTls => "starttls",
            Security::Tls => "tls",
        })
    }
}

/// A relay setting that does not parse; names the value and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfigError {
    value: String,
    reason: String,
}

impl RelayConfigError {
    fn new(value: &str, reason: impl Into<String>) -> RelayConfigError {
        RelayConfigError {
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RelayConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.value, self.reason)
    }
}

impl std::error::Error for RelayConfigError {}

/// Where and how to reach the SMTP relay.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Plain, STARTTLS or TLS.
    pub security: Security,
    /// User name for `AUTH`; no authentication when `None`.
    pub user: Option<String>,
    /// Password for `AUTH`. Never printed: `Debug` masks it, and error
    /// messages have it replaced should a server echo it.
    pub password: Option<String>,
    /// Limit on connecting and on each read or write; a relay that stops
    /// answering costs at most this long per message.
    pub timeout: Duration,
    /// The name we give in `EHLO`; `None` means this machine's host name.
    pub helo: Option<String>,
    /// A PEM file of CA certificates to trust in addition to the built-in
    /// public roots (`email-send-relay-ca`): a private CA, or a test
    /// relay's. Host name checking stays on; nothing is ever trusted
    /// without a chain to a root.
    pub ca_file: Option<std::path::PathBuf>,
}

impl RelayConfig {
    /// The timeout of a parsed configuration.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Parses `email-send-relayhost`: `host`, `host:port`, `[ipv6]` or
    /// `[ipv6]:port` (a bare IPv6 address is accepted too). Without a port,
    /// `security` picks the usual one ([`Security::default_port`]). No user,
    /// no password, no `EHLO` name, [`Self::DEFAULT_TIMEOUT`].
    pub fn parse(relayhost: &str, security: Security) -> Result<RelayConfig, RelayConfigError> {
        let err = |reason: &str| RelayConfigError::new(relayhost, reason);
        let s = relayhost.trim();
        if s.is_empty() {
            return Err(err("the relay host is empty"));
        }
        if s.contains("://") {
            return Err(err(
                "give host or host:port, not a URL (security is a separate setting)",
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| err("`[` without a closing `]`"))?;
            if inside.parse::<Ipv6Addr>().is_err() {
                return Err(err(&format!("{inside:?} is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| err("expected `:port` after `]`"))?,
                ),
            };
            (inside, port)
        } else if s.parse::<Ipv6Addr>().is_ok() {
            (s, None)
        } else if s.matches(':').count() > 1 {
            return Err(err("write an IPv6 address with a port as [address]:port"));
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if !host.contains(':') {
            check_host(host).map_err(|reason| err(&reason))?;
        }
        let port = match port {
            None => security.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(err(&format!("port {p:?} is not a number from 1 to 65535"))),
            },
        };
        Ok(RelayConfig {
            host: host.to_owned(),
            port,
            security,
            user: None,
            password: None,
            timeout: RelayConfig::DEFAULT_TIMEOUT,
            helo: None,
            ca_file: None,
        })
    }

    /// `host:port`, with brackets around an IPv6 address: how messages
    /// name the relay.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A host name is letters, digits, `-`, `_` and dots; anything else (a
/// space, `@`, `/`) is a typo we would rather report than resolve.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host name is empty".into());
    }
    match host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "{host:?} is not a host name ({c:?} is not allowed)"
        )),
        None => Ok(()),
    }
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("timeout", &self.timeout)
            .field("helo", &self.helo)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// What stands in for the password wherever it would otherwise show.
const MASK: &str = "********";

/// The `relay` send method: SMTP over one connection kept for a whole run.
/// See the [module documentation](self) for how failures are classified.
pub struct Relay {
    config: RelayConfig,
    hello: ClientId,
    /// Built on first use (loading the root certificates takes a moment).
    tls: Option<TlsParameters>,
    conn: Option<SmtpConnection>,
    /// Set when opening a session failed: the error every later `send` of
    /// this run returns without trying again.
    down: Option<String>,
    connections: u64,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("connected", &self.conn.is_some())
            .field("down", &self.down)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// The step of a mail transaction that failed, for the error message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Mail(&'a Address),
    Rcpt(&'a Address),
    Data,
    Content,
}

/// A transaction that failed at `step`.
struct Failure<'a> {
    step: Step<'a>,
    error: SmtpError,
}

impl Relay {
    /// A relay transport. Nothing happens on the network until the first
    /// `send`, so a run with nothing to send never connects.
    pub fn new(config: RelayConfig) -> Relay {
        let hello = match config.helo.as_deref() {
            None => ClientId::default(),
            Some(name) => match name.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => ClientId::Ipv4(a),
                Ok(IpAddr::V6(a)) => ClientId::Ipv6(a),
                Err(_) => ClientId::Domain(name.to_owned()),
            },
        };
        Relay {
            config,
            hello,
            tls: None,
            conn: None,
            down: None,
            connections: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// How many connections this relay has opened so far (1 for a run that
    /// went well, however many messages it sent).
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// An error message naming the relay, with the password masked.
    fn describe(&self, what: &str) -> String {
        let mut text = format!("relay {}: {what}", self.config.address());
        if let Some(p) = self.config.password.as_deref().filter(|p| !p.is_empty()) {
            text = text.replace(p, MASK);
        }
        text
    }

    /// Opens a session if there is none: connect (TLS from the start for
    /// [`Security::Tls`]), greeting, `EHLO`, `STARTTLS`, `AUTH`.
    fn connect(&mut self) -> Result<(), SendError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if let Some(down) = &self.down {
            return Err(SendError::transient(down.clone()));
        }
        match self.open() {
            Ok(conn) => {
                self.conn = Some(conn);
                self.connections += 1;
                Ok(())
            }
            Err(what) => {
                let message = self.describe(&what);
                self.down = Some(message.clone());
                Err(SendError::transient(message))
            }
        }
    }

    /// Opens a session; on failure, says which step failed and why.
    fn open(&mut self) -> Result<SmtpConnection, String> {
        let timeout = Some(self.config.timeout);
        if self.config.security != Security::None && self.tls.is_none() {
            let mut builder = TlsParameters::builder(self.config.host.clone());
            if let Some(ca) = &self.config.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    format!("cannot read email-send-relay-ca {}: {e}", ca.display())
                })?;
                let cert = Certificate::from_pem(&pem)
                    .ok()
                    .filter(|_| pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"))
                    .ok_or_else(|| {
                        format!(
                            "email-send-relay-ca {}: no PEM certificate in it",
                            ca.display()
                        )
                    })?;
                builder = builder.add_root_certificate(cert);
            }
            let params = builder
                .build()
                .map_err(|e| format!("cannot set up TLS: {}", reason(&e, timeout)))?;
            self.tls = Some(params);
        }
        let wrapper = match self.config.security {
            Security::Tls => self.tls.as_ref(),
            _ => None,
        };
        let mut conn = SmtpConnection::connect(
            (self.config.host.as_str(), self.config.port),
            timeout,
            &self.hello,
            wrapper,
            None,
        )
        .map_err(|e| match e.status() {
            Some(_) => format!("refused the session: {}", reason(&e, timeout)),
            None if self.config.security == Security::Tls => {
                format!("cannot connect with TLS: {}", reason(&e, timeout))
            }
            None => format!("cannot connect: {}", reason(&e, timeout)),
        })?;
        if self.config.security == Security::StartTls {
            let params = self.tls.as_ref().expect("built above");
            if !conn.server_info().supports_feature(Extension::StartTls) {
                conn.abort();
                return Err("does not offer STARTTLS (security is starttls)".into());
            }
            conn.starttls(params, &self.hello)
                .map_err(|e| format!("STARTTLS failed: {}", reason(&e, timeout)))?;
        }
        if let Some(user) = &self.config.user {
            let credentials = Credentials::new(
                user.clone(),
                self.config.password.clone().unwrap_or_default(),
            );
            // PLAIN when offered (one round trip), else LOGIN.
            if let Err(e) = conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials) {
                // A server that answered gets its QUIT; after a network
                // error, QUIT could only wait out the timeout again.
                if e.status().is_some() {
                    conn.abort();
                }
                return Err(format!(
                    "authentication as {user:?} failed: {}",
                    reason(&e, timeout)
                ));
            }
        }
        Ok(conn)
    }

    /// One mail transaction on the open connection.
    fn transaction<'a>(
        conn: &mut SmtpConnection,
        from: Option<&'a Address>,
        to: &'a [Address],
        raw: &[u8],
    ) -> Result<(), Failure<'a>> {
        let fail = |step| move |error| Failure { step, error };
        let mut options = Vec::new();
        if non_ascii(from, to) {
            options.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() {
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let first = from.unwrap_or(&to[0]);
        conn.command(Mail::new(from.cloned(), options))
            .map_err(fail(Step::Mail(first)))?;
        for rcpt in to {
            conn.command(Rcpt::new(rcpt.clone(), Vec::new()))
                .map_err(fail(Step::Rcpt(rcpt)))?;
        }
        conn.command(Data).map_err(fail(Step::Data))?;
        let message = crlf(raw);
        match String::from_utf8(data(&message)) {
            // The message and its final dot in one write. lettre's `message`
            // writes them separately, and since we cannot set TCP_NODELAY on
            // lettre's socket, Nagle holds the small second write until the
            // server's delayed ACK comes: 40 ms per message on Linux (a
            // thousand alerts took 45 s against a local server, not 1 s).
            Ok(wire) => conn.command(Verbatim(&wire)),
            // Not UTF-8 (our messages always are): lettre's path, delay and
            // all. It ends the data with CRLF "." CRLF; RFC 5321 counts that
            // first CRLF as the end of the last line, so a message that
            // already ends with one would gain an empty line.
            Err(_) => conn.message(message.strip_suffix(b"\r\n").unwrap_or(&message)),
        }
        .map_err(fail(Step::Content))?;
        Ok(())
    }

    /// Turns a failed transaction into the message's error, and leaves the
    /// connection ready for the next message or closed.
    fn failed(&mut self, failure: Failure<'_>) -> SendError {
        let timeout = Some(self.config.timeout);
        let code = failure.error.status().map(u16::from);
        let what = match (failure.step, code) {
            (Step::Mail(a), Some(_)) => format!("sender <{a}> refused"),
            (Step::Rcpt(a), Some(_)) => format!("recipient <{a}> refused"),
            (Step::Data, Some(_)) => "DATA refused".to_owned(),
            (Step::Content, Some(_)) => "message refused".to_owned(),
            (Step::Mail(_), None) => "connection lost at MAIL FROM".to_owned(),
            (Step::Rcpt(_), None) => "connection lost at RCPT TO".to_owned(),
            (Step::Data, None) => "connection lost at DATA".to_owned(),
            (Step::Content, None) => "connection lost while sending the message".to_owned(),
        };
        let message = self.describe(&format!("{what}: {}", reason(&failure.error, timeout)));
        match code {
            // A reply in good order: the session goes on. After the end of
            // the data the server has already reset; before it, RSET
            // abandons the half-made transaction (and no recipient gets a
            // message some other recipient was refused).
            Some(code) if code != 421 => {
                if failure.step != Step::Content {
                    let ok = self.conn.as_mut().is_some_and(|c| c.command(Rset).is_ok());
                    if !ok {
                        self.conn = None;
                    }
                }
                if code >= 500 {
                    SendError::permanent(message)
                } else {
                    SendError::transient(message)
                }
            }
            // 421 (the server is closing the session), or no reply at all:
            // the connection is gone. Dropping it closes the socket without
            // a QUIT that could wait out another timeout.
            _ => {
                self.conn = None;
                SendError::transient(message)
            }
        }
    }
}

/// The message with every line end CRLF: a lone LF or CR becomes CRLF.
///
/// A lone line end has no place in mail (RFC 5322), and servers disagree on
/// what it means: one that takes a bare LF for a line end would read
/// `LF . CRLF` inside a message as the end of the data, and the rest as
/// commands ("SMTP smuggling"). After this, the only line ends are CRLF and
/// dot-stuffing covers them all.
fn crlf(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let lone = |i: usize| match raw[i] {
        b'\n' => i == 0 || raw[i - 1] != b'\r',
        b'\r' => raw.get(i + 1) != Some(&b'\n'),
        _ => false,
    };
    if !(0..raw.len()).any(lone) {
        return raw.into();
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    for (i, &b) in raw.iter().enumerate() {
        if lone(i) {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(b);
        }
    }
    out.into()
}

/// The content of `DATA` as it goes on the wire: dot-stuffed (a line that
/// starts with `.` gets another), its last line ended, then `.` CRLF.
fn data(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Text that lettre's `command` sends as it is.
struct Verbatim<'a>(&'a str);

impl fmt::Display for Verbatim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Whether lettre gave up waiting: a read or write timeout shows as
/// `WouldBlock` on Linux (`SO_RCVTIMEO`), which lettre's own
/// `is_timeout` does not recognise, or as `TimedOut` (connecting).
fn timed_out(e: &SmtpError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
        }
        source = err.source();
    }
    false
}

/// Why lettre failed, in words: the server's reply (`550 5.1.1 no such
/// user`), or the network's.
fn reason(e: &SmtpError, timeout: Option<Duration>) -> String {
    let source = std::error::Error::source(e).map(ToString::to_string);
    if let Some(code) = e.status() {
        return match source {
            Some(text) if !text.is_empty() => format!("{code} {text}"),
            _ => code.to_string(),
        };
    }
    if timed_out(e) {
        return match timeout {
            Some(t) => format!("no answer within {t:?}"),
            None => "timed out".to_owned(),
        };
    }
    match source.as_deref() {
        // lettre's words for end-of-file where a reply should be.
        Some("incomplete response") => "the server closed the connection".to_owned(),
        Some(text) => text.to_owned(),
        None => e.to_string(),
    }
}

/// Whether a failure at `MAIL FROM` means the (reused) connection was dead
/// before this message began: no reply at all, or 421 "closing".
fn dead_before_start(failure: &Failure<'_>) -> bool {
    matches!(failure.step, Step::Mail(_))
        && failure.error.status().is_none_or(|c| u16::from(c) == 421)
}

/// Whether any address needs SMTPUTF8.
fn non_ascii(from: Option<&Address>, to: &[Address]) -> bool {
    from.into_iter()
        .chain(to)
        .any(|a| !AsRef::<str>::as_ref(a).is_ascii())
}

/// Parses the envelope's addresses; a malformed one is a permanent error.
fn addresses(
    relay: &Relay,
    envelope: &Envelope,
) -> Result<(Option<Address>, Vec<Address>), SendError> {
    let parse = |role: &str, a: &str| {
        a.parse::<Address>().map_err(|e| {
            SendError::permanent(relay.describe(&format!("malformed {role} address {a:?}: {e}")))
        })
    };
    // An empty sender is the null reverse-path `<>` (as for bounces).
    let from = match envelope.from.as_str() {
        "" => None,
        a => Some(parse("sender", a)?),
    };
    let to = envelope
        .to
        .iter()
        .map(|a| parse("recipient", a))
        .collect::<Result<Vec<_>, _>>()?;
    if to.is_empty() {
        return Err(SendError::permanent(
            relay.describe("message has no recipients"),
        ));
    }
    Ok((from, to))
}

impl Transport for Relay {
    fn send(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<(), SendError> {
        let (from, to) = addresses(self, envelope)?;
        let reused = self.conn.is_some();
        self.connect()?;
        if let Some(conn) = &self.conn {
            let smtputf8 = conn.server_info().supports_feature(Extension::SmtpUtfEight);
            let eightbit = conn.server_info().supports_feature(Extension::EightBitMime);
            if !smtputf8 && non_ascii(from.as_ref(), &to) {
                return Err(SendError::permanent(self.describe(
                    "an address is not ASCII and the server does not support SMTPUTF8",
                )));
            }
            if !eightbit && !raw.is_ascii() {
                return Err(SendError::permanent(self.describe(
                    "the message is not ASCII and the server does not support 8BITMIME",
                )));
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        match Relay::transaction(conn, from.as_ref(), &to, raw) {
            Ok(()) => Ok(()),
            Err(f) if reused && dead_before_start(&f) => {
                // Nothing of this message reached the server: try it once
                // more on a fresh connection.
                self.conn = None;
                self.connect()?;
                let conn = self.conn.as_mut().expect("connected above");
                Relay::transaction(conn, from.as_ref(), &to, raw).map_err(|f| self.failed(f))
            }
            Err(f) => Err(self.failed(f)),
        }
    }

    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Best effort: the messages are sent; a server that does not
            // answer QUIT loses nothing.
            let _ = conn.command(Quit);
        }
        self.down = None;
    }
}

/// Opens the relay transport for a run, from the `email-send-relay*` settings.
pub fn open(cfg: &super::config::EmailConfig) -> Result<Box<dyn Transport>, String> {
    let security: Security = cfg
        .relay_security
        .parse()
        .map_err(|e| format!("email-send-relay-security: {e}"))?;
    let mut rc = RelayConfig::parse(&cfg.relay_host, security)
        .map_err(|e| format!("email-send-relayhost {e}"))?;
    if !cfg.relay_user.is_empty() {
        rc.user = Some(cfg.relay_user.clone());
        rc.password = Some(cfg.relay_password.clone());
    }
    rc.ca_file = cfg.relay_ca.clone();
    // The HELO name is the domain we send from, not the whole address
    // (a Fossil bug fixed after 2.21).
    rc.helo = Some(cfg.domain().to_owned());
    Ok(Box::new(Relay::new(rc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(String, u16), String> {
        RelayConfig::parse(s, Security::None)
            .map(|c| (c.host, c.port))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn host_forms() {
        assert_eq!(
            parse("mail.example.com"),
            Ok(("mail.example.com".into(), 25))
        );
        assert_eq!(
            parse(" mail.example.com:2525 "),
            Ok(("mail.example.com".into(), 2525))
        );
        assert_eq!(parse("127.0.0.1:1025"), Ok(("127.0.0.1".into(), 1025)));
        assert_eq!(parse("[::1]:1025"), Ok(("::1".into(), 1025)));
        assert_eq!(parse("[2001:db8::5]"), Ok(("2001:db8::5".into(), 25)));
        assert_eq!(parse("::1"), Ok(("::1".into(), 25)));
        assert_eq!(parse("localhost"), Ok(("localhost".into(), 25)));
    }

    #[test]
    fn default_ports_follow_security() {
        let port = |s| RelayConfig::parse("h", s).unwrap().port;
        assert_eq!(port(Security::None), 25);
        assert_eq!(port(Security::StartTls), 587);
        assert_eq!(port(Security::Tls), 465);
        // An explicit port wins.
        assert_eq!(
            RelayConfig::parse("h:2465", Security::Tls).unwrap().port,
            2465
        );
    }

    #[test]
    fn errors_name_the_value() {
        for (bad, says) in [
            ("", "empty"),
            ("   ", "empty"),
            ("mail.example.com:abc", "port \"abc\""),
            ("mail.example.com:0", "port \"0\""),
            ("mail.example.com:70000", "port \"70000\""),
            ("mail.example.com:", "port \"\""),
            (":25", "host name is empty"),
            ("[::1", "closing"),
            ("[::1]25", "`:port`"),
            ("[mail.example.com]:25", "not an IPv6"),
            ("2001:db8::5:25x", "[address]:port"),
            ("smtp://mail.example.com", "not a URL"),
            ("user@mail.example.com", "'@'"),
            ("mail example.com", "' '"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e} should quote {bad:?}");
            assert!(e.contains(says), "{e} should say {says}");
        }
    }

    #[test]
    fn security_names() {
        assert_eq!("none".parse(), Ok(Security::None));
        assert_eq!("STARTTLS".parse(), Ok(Security::StartTls));
        assert_eq!(" tls".parse(), Ok(Security::Tls));
        let e = "ssl".parse::<Security>().unwrap_err().to_string();
        assert!(e.contains("\"ssl\"") && e.contains("starttls"), "{e}");
        for s in [Security::None, Security::StartTls, Security::Tls] {
            assert_eq!(s.to_string().parse(), Ok(s));
        }
    }

    #[test]
    fn address_brackets_ipv6() {
        let c = RelayConfig::parse("[::1]:2525", Security::None).unwrap();
        assert_eq!(c.address(), "[::1]:2525");
        let c = RelayConfig::parse("mx:2525", Security::None).unwrap();
        assert_eq!(c.address(), "mx:2525");
    }

    #[test]
    fn debug_masks_the_password() {
        let mut c = RelayConfig::parse("mx", Security::StartTls).unwrap();
        c.user = Some("alice".into());
        c.password = Some("s3cret-pw".into());
        let shown = format!(
            "{c:?} {:?} {:#?}",
            Relay::new(c.clone()),
            Relay::new(c.clone())
        );
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("alice") && shown.contains(MASK), "{shown}");
    }

    #[test]
    fn line_ends_become_crlf() {
        let c = |s: &str| String::from_utf8(crlf(s.as_bytes()).into_owned()).unwrap();
        assert_eq!(c("a\r\nb\r\n"), "a\r\nb\r\n");
        assert!(matches!(crlf(b"a\r\n"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(c("a\nb\rc\r\n"), "a\r\nb\r\nc\r\n");
        assert_eq!(c("\n.\r\n\r"), "\r\n.\r\n\r\n");
        assert_eq!(c("\r\r\n\n"), "\r\n\r\n\r\n");
    }

    #[test]
    fn data_is_dot_stuffed_and_terminated() {
        let d = |s: &str| String::from_utf8(data(s.as_bytes())).unwrap();
        assert_eq!(d(""), ".\r\n");
        assert_eq!(d("a\r\n"), "a\r\n.\r\n");
        assert_eq!(d("a"), "a\r\n.\r\n");
        assert_eq!(
            d(".a\r\n.\r\nb.\r\n..\r\n."),
            "..a\r\n..\r\nb.\r\n...\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn bad_addresses_are_permanent_and_need_no_network() {
        // Port 9 on a documentation address: never reached, because the
        // envelope is checked first.
        let mut relay = Relay::new(RelayConfig::parse("192.0.2.1:9", Security::None).unwrap());
        let env = |from: &str, to: &[&str]| Envelope {
            from: from.into(),
            to: to.iter().map(|s| (*s).to_owned()).collect(),
        };
        for e in [
            env("not an address", &["a@example.com"]),
            env("a@example.com", &["bad"]),
            env("a@example.com", &[]),
        ] {
            let err = relay.send(&e, b"x\r\n").unwrap_err();
            assert!(err.permanent, "{err}");
            assert!(err.message.contains("192.0.2.1:9"), "{err}");
        }
        assert_eq!(relay.connections(), 0);
    }
}
