//! The `relay` send method against a real SMTP server on 127.0.0.1:
//! `smtp_server.py` (a small asyncio SMTP server of our own), one per test, whose modes
//! refuse, reject or drop. The server writes each message it accepts to a
//! file and logs each connection, so the tests check what arrived and over
//! how many connections.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use backoffice_tasks::notify::send::{Envelope, Transport};
use backoffice_tasks::notify::smtp::{Relay, RelayConfig, Security};

use crate::harness::{self, Env};

/// A running `smtp_server.py`. Dropping it closes the server's stdin, which
/// ends it, and reaps it.
struct SmtpServer {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl SmtpServer {
    /// Starts the server with `args` (e.g. `["--mode", "reject"]`) and waits
    /// until it listens.
    fn start(env: &Env, args: &[&str]) -> SmtpServer {
        SmtpServer::start_in(env.path("received"), env.path("smtp_server.log"), args)
    }

    /// The same, with the messages written to `dir` and stderr to `log`.
    fn start_in(dir: PathBuf, log: PathBuf, args: &[&str]) -> SmtpServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .args(["--max-seconds", "120"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start smtp_server.py");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's port");
        let port = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "smtp_server.py said {line:?}; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        SmtpServer {
            child,
            _stdin: stdin,
            port,
            dir,
            log,
        }
    }

    /// A relay configuration for this server: plain SMTP, a short timeout.
    fn config(&self) -> RelayConfig {
        let mut c = RelayConfig::parse(&format!("127.0.0.1:{}", self.port), Security::None)
            .expect("relay config");
        c.timeout = Duration::from_secs(5);
        c
    }

    /// How many connections the server has accepted.
    fn connections(&self) -> usize {
        std::fs::read_to_string(self.dir.join("connections"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The messages received, in order: (envelope line, message bytes).
    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("received dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).expect("read message");
                let nl = bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .expect("envelope line");
                (
                    String::from_utf8(bytes[..nl].to_vec()).expect("utf-8 envelope"),
                    bytes[nl + 1..].to_vec(),
                )
            })
            .collect()
    }

    /// The numbers of the messages received (from their subjects), in order.
    fn numbers(&self) -> Vec<usize> {
        self.messages()
            .iter()
            .map(|(_, m)| {
                let text = String::from_utf8_lossy(m);
                let at = text.find("Subject: Alert number ").expect("subject") + 22;
                let end = at + text[at..].find('\r').expect("end of subject");
                text[at..end].parse().expect("number")
            })
            .collect()
    }

    /// The server's stderr, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Message `i`: its envelope and its bytes. Every 100th has two recipients;
/// every one has a line starting with a dot (SMTP transparency) and a
/// non-ASCII line (8BITMIME).
fn message(i: usize) -> (Envelope, Vec<u8>) {
    let mut to = vec![format!("user{i}@example.org")];
    if i % 100 == 0 {
        to.push(format!("second{i}@example.net"));
    }
    let raw = format!(
        "From: Alerts <alerts@example.com>\r\n\
         To: {}\r\n\
         Subject: Alert number {i}\r\n\
         Message-ID: <{i}.relay-test@example.com>\r\n\
         \r\n\
         Body of message {i}.\r\n\
         .a line that starts with a dot\r\n\
         .\r\n\
         caf\u{e9} \u{2713}\r\n",
        to.join(", ")
    );
    (
        Envelope {
            from: "alerts@example.com".into(),
            to,
        },
        raw.into_bytes(),
    )
}

/// The envelope line the server writes for `envelope`.
fn envelope_line(envelope: &Envelope) -> String {
    format!("envelope {} {}", envelope.from, envelope.to.join(" "))
}

#[test]
fn relay_delivers_1000_messages_over_one_connection() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &[]);
    let mut relay = Relay::new(server.config());
    for i in 0..1000 {
        let (envelope, raw) = message(i);
        relay
            .send(&envelope, &raw)
            .unwrap_or_else(|e| panic!("message {i}: {e}\nserver log:\n{}", server.log()));
    }
    relay.finish();
    assert_eq!(relay.connections(), 1);
    assert_eq!(server.connections(), 1, "the server saw other connections");

    let got = server.messages();
    assert_eq!(got.len(), 1000);
    for (i, (envelope, bytes)) in got.iter().enumerate() {
        let (want_envelope, want) = message(i);
        assert_eq!(*envelope, envelope_line(&want_envelope), "message {i}");
        // Byte for byte: headers, dot-stuffed lines, UTF-8, and no extra
        // empty line at the end.
        assert_eq!(
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&want),
            "message {i}"
        );
    }
}

#[test]
fn relay_keeps_non_utf8_bytes_and_mends_bare_line_ends() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &[]);
    let mut relay = Relay::new(server.config());
    let (envelope, _) = message(7);
    // Latin-1 "café", a dot line, and no line end after the last line:
    // sent byte for byte (lettre's own path for non-UTF-8).
    let latin1 = b"Subject: Alert number 7\r\n\r\ncaf\xe9\r\n..\r\nlast line".to_vec();
    relay.send(&envelope, &latin1).expect("send latin-1");
    // Lone LF and CR become CRLF, so "LF . CRLF" cannot end the data early
    // on a server that takes a bare LF for a line end.
    let bare = b"Subject: Alert number 8\n\r\nfirst\n.\r\nsecond\rthird\r\n".to_vec();
    relay.send(&envelope, &bare).expect("send bare line ends");
    let (envelope, normal) = message(9);
    relay.send(&envelope, &normal).expect("send after");
    relay.finish();
    let got: Vec<Vec<u8>> = server.messages().into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        got,
        [
            [latin1.as_slice(), b"\r\n"].concat(),
            b"Subject: Alert number 8\r\n\r\nfirst\r\n.\r\nsecond\r\nthird\r\n".to_vec(),
            normal,
        ]
    );
    assert_eq!(server.connections(), 1);
}

#[test]
fn relay_refused_messages_are_transient_and_the_connection_stays() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &["--mode", "refuse-first", "3"]);
    let mut relay = Relay::new(server.config());
    let address = format!("127.0.0.1:{}", server.port);
    for i in 0..6 {
        let (envelope, raw) = message(i + 1);
        let result = relay.send(&envelope, &raw);
        if i < 3 {
            let e = result.expect_err("refused by the server");
            assert!(!e.permanent, "{e}");
            assert!(e.message.contains(&address), "{e}");
            assert!(e.message.contains("451 4.3.0 try again later"), "{e}");
        } else {
            result.unwrap_or_else(|e| panic!("message {i}: {e}"));
        }
    }
    relay.finish();
    assert_eq!(server.numbers(), [4, 5, 6]);
    assert_eq!(server.connections(), 1);
}

#[test]
fn relay_rejected_recipient_is_permanent() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &["--mode", "reject"]);
    let mut relay = Relay::new(server.config());
    for i in 1..4 {
        let (envelope, raw) = message(i);
        let e = relay.send(&envelope, &raw).expect_err("rejected");
        assert!(e.permanent, "{e}");
        assert!(
            e.message.contains(&format!("127.0.0.1:{}", server.port)),
            "{e}"
        );
        assert!(e.message.contains(&format!("<user{i}@example.org>")), "{e}");
        assert!(e.message.contains("550 5.1.1 no such user here"), "{e}");
    }
    relay.finish();
    assert!(server.messages().is_empty());
    // RSET after each refusal: the one connection served all three.
    assert_eq!(server.connections(), 1);
}

#[test]
fn relay_reconnects_after_a_drop_mid_message() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &["--mode", "drop-after", "2"]);
    let mut relay = Relay::new(server.config());
    let mut failed = Vec::new();
    for i in 0..5 {
        let (envelope, raw) = message(i + 1);
        if let Err(e) = relay.send(&envelope, &raw) {
            assert!(!e.permanent, "{e}");
            assert!(
                e.message.contains(&format!("127.0.0.1:{}", server.port)),
                "{e}"
            );
            assert!(e.message.contains("connection lost"), "{e}");
            failed.push(i);
        }
    }
    relay.finish();
    assert_eq!(failed, [2], "only the message in flight fails");
    assert_eq!(relay.connections(), 2);
    assert_eq!(server.connections(), 2);
    assert_eq!(server.numbers(), [1, 2, 4, 5], "all but the one in flight");
}

#[test]
fn relay_resends_at_once_when_an_idle_connection_was_closed() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    // The server hangs up after two messages, as an idle timeout would:
    // the third message finds the connection dead at MAIL FROM, before any
    // of it was sent, so it goes out on a new connection without an error.
    let server = SmtpServer::start(&env, &["--mode", "close-after", "2"]);
    let mut relay = Relay::new(server.config());
    for i in 0..4 {
        let (envelope, raw) = message(i + 1);
        relay
            .send(&envelope, &raw)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    relay.finish();
    assert_eq!(server.numbers(), [1, 2, 3, 4]);
    assert_eq!(server.connections(), 2);
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn relay_down_is_transient_quick_and_not_retried_in_the_run() {
    let port = closed_port();
    let mut config =
        RelayConfig::parse(&format!("127.0.0.1:{port}"), Security::None).expect("config");
    config.timeout = Duration::from_secs(2);
    let mut relay = Relay::new(config);
    let t0 = Instant::now();
    let (envelope, raw) = message(1);
    let first = relay.send(&envelope, &raw).expect_err("nothing listens");
    assert!(!first.permanent, "{first}");
    assert!(
        first.message.contains(&format!("127.0.0.1:{port}")),
        "{first}"
    );
    assert!(first.message.contains("cannot connect"), "{first}");
    // The rest of the run fails at once with the same error.
    for i in 2..50 {
        let (envelope, raw) = message(i);
        let e = relay.send(&envelope, &raw).expect_err("still down");
        assert_eq!(e, first);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(relay.connections(), 0);
    relay.finish();
}

#[test]
fn relay_silent_server_times_out() {
    // A listener that never accepts: the kernel completes the handshake,
    // but no greeting ever comes.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config =
        RelayConfig::parse(&format!("127.0.0.1:{port}"), Security::None).expect("config");
    config.timeout = Duration::from_millis(300);
    let mut relay = Relay::new(config);
    let t0 = Instant::now();
    let (envelope, raw) = message(1);
    let e = relay.send(&envelope, &raw).expect_err("no greeting");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!e.permanent, "{e}");
    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.message.contains("no answer within 300ms"), "{e}");
    drop(listener);
}

#[test]
fn relay_tls_failures_are_transient() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &[]);
    // TLS from the first byte, to a server that speaks plain SMTP.
    let mut config = server.config();
    config.security = Security::Tls;
    let mut relay = Relay::new(config);
    let (envelope, raw) = message(1);
    let e = relay.send(&envelope, &raw).expect_err("not a TLS server");
    assert!(!e.permanent, "{e}");
    assert!(e.message.contains("cannot connect with TLS"), "{e}");
    assert!(
        e.message.contains(&format!("127.0.0.1:{}", server.port)),
        "{e}"
    );

    // STARTTLS required, and the server does not offer it: no silent
    // downgrade to plain text.
    let mut config = server.config();
    config.security = Security::StartTls;
    let mut relay = Relay::new(config);
    let e = relay.send(&envelope, &raw).expect_err("no STARTTLS");
    assert!(!e.permanent, "{e}");
    assert!(e.message.contains("does not offer STARTTLS"), "{e}");
    assert!(server.messages().is_empty());
}

#[test]
fn relay_authenticates_and_never_shows_the_password() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &["--auth", "alice:right-Pw-1"]);
    let (envelope, raw) = message(1);

    // A wrong password: the server echoes it in its 535 reply; we must not.
    let mut config = server.config();
    config.user = Some("alice".into());
    config.password = Some("wrong-Pw-2".into());
    let mut relay = Relay::new(config.clone());
    let e = relay.send(&envelope, &raw).expect_err("bad password");
    assert!(
        !e.permanent,
        "a configuration problem delays, it does not kill: {e}"
    );
    assert!(
        e.message
            .contains("authentication as \"alice\" failed: 535"),
        "{e}"
    );
    assert!(e.message.contains("alice:********"), "{e}");
    let shown = format!("{e} {e:?} {config:?} {relay:?} {relay:#?}");
    assert!(!shown.contains("wrong-Pw-2"), "{shown}");

    // The right one: the message goes through, over one authenticated
    // connection.
    config.password = Some("right-Pw-1".into());
    let mut relay = Relay::new(config.clone());
    relay.send(&envelope, &raw).expect("authenticated");
    let (envelope2, raw2) = message(2);
    relay.send(&envelope2, &raw2).expect("same connection");
    let shown = format!("{config:?} {relay:?}");
    assert!(!shown.contains("right-Pw-1"), "{shown}");
    relay.finish();
    assert_eq!(server.messages().len(), 2);
    assert_eq!(
        server.connections(),
        2,
        "one refused, one for both messages"
    );
}

/// Messages per second over one connection, into the server writing its
/// files on the test's disk, then on tmpfs (`/dev/shm`, if there is one).
/// Prints the rates and the CPU time each side used. Run with
/// `cargo test --release --test integration relay_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn relay_throughput() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    throughput("disk", env.path("received"), env.path("smtp_server.log"));
    if Path::new("/dev/shm").is_dir() {
        let shm = tempfile::Builder::new()
            .prefix("backoffice-relay-")
            .tempdir_in("/dev/shm")
            .expect("tempdir in /dev/shm");
        throughput(
            "tmpfs",
            shm.path().join("received"),
            env.path("smtp_server.log"),
        );
    }
}

fn throughput(label: &str, dir: PathBuf, log: PathBuf) {
    const N: usize = 10_000;
    let server = SmtpServer::start_in(dir, log, &[]);
    let messages: Vec<_> = (0..N).map(message).collect();
    let mut relay = Relay::new(server.config());
    let server_cpu0 = cpu_seconds(server.child.id());
    let our_cpu0 = cpu_seconds(std::process::id());
    let t0 = Instant::now();
    for (envelope, raw) in &messages {
        relay.send(envelope, raw).expect("send");
    }
    relay.finish();
    let elapsed = t0.elapsed();
    let server_cpu = cpu_seconds(server.child.id()) - server_cpu0;
    let our_cpu = cpu_seconds(std::process::id()) - our_cpu0;
    assert_eq!(server.connections(), 1);
    assert_eq!(server.messages().len(), N);
    // Where the time went: the server's CPU time against ours (the whole
    // test process, so an upper bound on the relay's).
    eprintln!(
        "relay_throughput ({label}): {N} messages over 1 connection in {:.2} s: \
         {:.0} messages/s (CPU: Python server {server_cpu:.2} s, this process {our_cpu:.2} s)",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
}

/// A process's user + system CPU time so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15, counted from 1 with pid and comm.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = rustix::param::clock_ticks_per_second();
    ticks as f64 / hz as f64
}

// ---------------------------------------------------------------------------
// End to end: the `backoffice` binary's alerts task, its outbox and the relay.

/// A repository sending alerts through the relay at `port`, one message
/// per event to one verified subscriber, with `n` events published.
pub(crate) fn relay_repo(env: &Env, port: u16, n: usize) -> PathBuf {
    let repo = env.path("app.db");
    let conn = rusqlite::Connection::open(&repo).expect("create repo");
    conn.execute_batch("CREATE TABLE app(x)").unwrap();
    drop(conn);
    let r = repo.to_str().unwrap();
    for (k, v) in [
        ("email-send-method", "relay".to_owned()),
        ("email-send-relayhost", format!("127.0.0.1:{port}")),
        ("email-self", "bo@example.org".into()),
        ("email-url", "https://example.org/r/app".into()),
        ("email-subname", "[app]".into()),
        ("email-alert-mode", "each".into()),
    ] {
        harness::Cmd::backoffice()
            .args(["setting", "-R", r, k, &v])
            .output()
            .success();
    }
    harness::Cmd::backoffice()
        .args([
            "subscriber",
            "-R",
            r,
            "add",
            "ann@example.org",
            "--verified",
        ])
        .output()
        .success();
    let mut conn = rusqlite::Connection::open(&repo).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..n {
        backoffice::events::publish(
            &tx,
            &backoffice::events::Event {
                kind: "wiki".into(),
                title: format!("Event {i} — ünïcödé"),
                body: format!("Line one of {i}.\n.A line starting with a dot\n"),
                ..Default::default()
            },
        )
        .unwrap();
    }
    tx.commit().unwrap();
    repo
}

pub(crate) fn run_worker(repo: &Path) {
    harness::Cmd::backoffice()
        .args(["run", "--nolease"])
        .arg(repo)
        .output()
        .success();
}

pub(crate) fn outbox_states(repo: &Path) -> (i64, i64, i64) {
    rusqlite::Connection::open(repo)
        .unwrap()
        .query_row(
            "SELECT count(*) FILTER (WHERE state='queued'), count(*) FILTER (WHERE state='sent'),
                    count(*) FILTER (WHERE state='dead') FROM bo_outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

/// "Time passes": every queued message becomes due.
pub(crate) fn make_due(repo: &Path) {
    rusqlite::Connection::open(repo)
        .unwrap()
        .execute(
            "UPDATE bo_outbox SET next_attempt = 0 WHERE state = 'queued'",
            [],
        )
        .unwrap();
}

/// Message-IDs received, with how often each came.
fn ids(server: &SmtpServer) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, raw) in server.messages() {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .expect("Message-ID")
            .to_owned();
        *m.entry(id).or_default() += 1;
    }
    m
}

#[test]
fn alerts_through_the_relay_end_to_end() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &[]);
    let repo = relay_repo(&env, server.port, 1000);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (0, 1000, 0), "log:\n{}", server.log());
    let got = server.messages();
    assert_eq!(got.len(), 1000);
    assert_eq!(server.connections(), 1, "one connection for the whole run");
    let ids = ids(&server);
    assert_eq!(ids.len(), 1000, "every Message-ID distinct");
    let (envelope, raw) = &got[0];
    assert!(
        envelope.contains("bo@example.org") && envelope.contains("ann@example.org"),
        "{envelope}"
    );
    // The headers as a mail reader sees them: parsed and decoded by
    // Python's `email` package (RFC 2047 words, folded lines), not matched
    // as raw text (every subject here is encoded, being non-ASCII).
    let h = parsed_headers(raw);
    let h = |k: &str| {
        h.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} header in {h:?}"))
    };
    assert_eq!(
        h("Subject"),
        "[app] Event 0 — ünïcödé",
        "{}",
        String::from_utf8_lossy(raw)
    );
    let code: String = rusqlite::Connection::open(&repo)
        .unwrap()
        .query_row("SELECT code FROM bo_subscriber", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        h("List-Unsubscribe"),
        format!("<https://example.org/r/app/unsubscribe/{code}>"),
        "{}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        h("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click",
        "{}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        h("List-Id"),
        "<app.example.org>",
        "{}",
        String::from_utf8_lossy(raw)
    );
    let date: i64 = h("Date-Unix").parse().expect("a valid Date");
    assert!(
        (harness::now() - date).abs() < 600,
        "Date {} is not about now",
        h("Date")
    );
    let token: String = rusqlite::Connection::open(&repo)
        .unwrap()
        .query_row(
            "SELECT token FROM bo_outbox ORDER BY msgid LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        h("Message-ID"),
        format!("<bo.{token}@example.org>"),
        "{}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        h("To"),
        "ann@example.org",
        "{}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        h("From"),
        "bo@example.org",
        "{}",
        String::from_utf8_lossy(raw)
    );
}

/// The headers of a message, decoded by Python's `email` package, plus
/// `Date-Unix` (the Date header in Unix seconds, "" if it does not parse).
fn parsed_headers(raw: &[u8]) -> std::collections::BTreeMap<String, String> {
    const PY: &str = r#"
import email, email.policy, email.utils, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
out = {k: str(v) for k, v in m.items()}
try:
    out["Date-Unix"] = str(int(email.utils.parsedate_to_datetime(m["Date"]).timestamp()))
except Exception:
    out["Date-Unix"] = ""
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 could not parse the message");
    serde_json::from_slice(&out.stdout).expect("headers as JSON")
}

/// The relay is down: nothing is lost, the error is reported, and every
/// message goes out once it is back.
#[test]
fn relay_down_delays_but_loses_nothing() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let repo = relay_repo(&env, closed_port(), 20);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (20, 0, 0));
    let st = harness::Cmd::backoffice()
        .args(["status", "-R", repo.to_str().unwrap()])
        .output()
        .success();
    assert!(
        st.contains("last delivery failure: relay 127.0.0.1:"),
        "{st}"
    );
    // Three failures in a row end the run: those three wait a minute, the
    // other seventeen were not tried and are still due.
    assert!(st.contains("outbox: 20 queued"), "{st}");
    assert!(st.contains("failed: alerts"), "{st}");

    let server = SmtpServer::start(&env, &[]);
    harness::Cmd::backoffice()
        .args([
            "setting",
            "-R",
            repo.to_str().unwrap(),
            "email-send-relayhost",
        ])
        .arg(format!("127.0.0.1:{}", server.port))
        .output()
        .success();
    make_due(&repo);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (0, 20, 0));
    assert_eq!(ids(&server).len(), 20);
}

/// A relay that refuses (451) or drops the connection mid-message: those
/// messages are retried and everything arrives exactly once.
#[test]
fn refused_and_dropped_messages_arrive_in_the_end() {
    if !harness::have("python3") {
        return;
    }
    for mode in [
        ["--mode", "refuse-first", "3"],
        ["--mode", "drop-after", "5"],
    ] {
        let env = Env::new();
        let server = SmtpServer::start(&env, &mode);
        let repo = relay_repo(&env, server.port, 30);
        for _ in 0..4 {
            run_worker(&repo);
            if outbox_states(&repo).1 == 30 {
                break;
            }
            make_due(&repo);
        }
        assert_eq!(
            outbox_states(&repo),
            (0, 30, 0),
            "{mode:?}; log:\n{}",
            server.log()
        );
        let ids = ids(&server);
        assert_eq!(ids.len(), 30, "{mode:?}");
        assert!(
            ids.values().all(|&n| n == 1),
            "{mode:?}: duplicates {ids:?}"
        );
    }
}

/// Item 7 of issue 10: a worker SIGKILLed in the middle of a long relay
/// run. Every message arrives, and the kill causes at most one duplicate
/// (the message in flight on the one connection), with the same Message-ID.
#[test]
fn killed_relay_worker_causes_at_most_one_duplicate() {
    if !harness::have("python3") {
        return;
    }
    let env = Env::new();
    let server = SmtpServer::start(&env, &[]);
    let n = 1500;
    let repo = relay_repo(&env, server.port, n);
    let received = || {
        std::fs::read_dir(env.path("received"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut worker = harness::Cmd::backoffice()
        .args(["run", "--nolease"])
        .arg(&repo)
        .spawn();
    // Past the first batch of outcomes (200), so a batch-only record would
    // re-send up to 200.
    assert!(
        harness::wait_until(Duration::from_secs(60), || received() > 330),
        "the worker did not get going"
    );
    worker.kill().unwrap();
    harness::wait_child(&mut worker, Duration::from_secs(10), "the killed worker");
    let before = server.messages().len();
    assert!(before < n, "the worker finished before it was killed");
    run_worker(&repo);
    assert_eq!(
        outbox_states(&repo),
        (0, n as i64, 0),
        "log:\n{}",
        server.log()
    );
    let ids = ids(&server);
    assert_eq!(ids.len(), n, "every message arrived");
    let duplicates: usize = ids.values().map(|c| c - 1).sum();
    eprintln!("killed after {before} messages: {duplicates} duplicate(s)");
    assert!(
        duplicates <= 1,
        "{duplicates} duplicates from one kill on one connection"
    );
}

// ---------------------------------------------------------------------------
// TLS and AUTH success paths, with a test CA made by the `openssl` command.

/// A throwaway CA and a server certificate it signed for 127.0.0.1 only:
/// (ca.pem, server.pem, server.key) in `dir`.
pub(crate) fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &PathBuf| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=backoffice test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    (ca, cert, key)
}

/// STARTTLS and AUTH succeed against a relay whose certificate chains to
/// the CA given in `ca_file`; without that CA, or under a host name the
/// certificate does not name, the handshake fails (nothing is trusted
/// blindly); SMTPS (TLS from the first byte) succeeds the same way.
#[test]
fn relay_starttls_smtps_and_auth_succeed_with_a_trusted_ca() {
    if !harness::have("python3") || !harness::have("openssl") {
        return;
    }
    let env = Env::new();
    let (ca, cert, key) = test_certificates(env.dir());
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = SmtpServer::start(
        &env,
        &[
            "--tls-cert",
            c,
            "--tls-key",
            k,
            "--auth",
            "alice:right-Pw-1",
        ],
    );
    let (envelope, raw) = message(1);
    let mut config = server.config();
    config.security = Security::StartTls;
    config.user = Some("alice".into());
    config.password = Some("right-Pw-1".into());

    // The built-in roots do not know the test CA.
    let e = Relay::new(config.clone())
        .send(&envelope, &raw)
        .expect_err("an unknown CA must not be trusted");
    assert!(e.message.contains("STARTTLS failed"), "{e}");

    config.ca_file = Some(ca.clone());
    let mut relay = Relay::new(config.clone());
    relay.send(&envelope, &raw).expect("STARTTLS + AUTH");
    let (envelope2, raw2) = message(2);
    relay.send(&envelope2, &raw2).expect("same connection");
    relay.finish();
    assert_eq!(server.numbers(), vec![1, 2], "log:\n{}", server.log());

    // The certificate names 127.0.0.1, not "localhost".
    let mut other = config.clone();
    other.host = "localhost".into();
    let e = Relay::new(other)
        .send(&envelope, &raw)
        .expect_err("a certificate for another name");
    assert!(e.message.contains("STARTTLS failed"), "{e}");
    drop(server);

    let env2 = Env::new();
    let smtps = SmtpServer::start(
        &env2,
        &[
            "--tls-cert",
            c,
            "--tls-key",
            k,
            "--smtps",
            "--auth",
            "alice:right-Pw-1",
        ],
    );
    let mut config = smtps.config();
    config.security = Security::Tls;
    config.user = Some("alice".into());
    config.password = Some("right-Pw-1".into());
    config.ca_file = Some(ca);
    let mut relay = Relay::new(config);
    relay.send(&envelope, &raw).expect("SMTPS + AUTH");
    relay.finish();
    assert_eq!(smtps.numbers(), vec![1], "log:\n{}", smtps.log());
}

/// The same through the binary's settings: `email-send-relay-security
/// starttls`, a login, and `email-send-relay-ca` as a path relative to the
/// repository's folder.
#[test]
fn alerts_through_starttls_with_a_login_end_to_end() {
    if !harness::have("python3") || !harness::have("openssl") {
        return;
    }
    let env = Env::new();
    let (_, cert, key) = test_certificates(env.dir());
    let server = SmtpServer::start(
        &env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--auth",
            "alice:right-Pw-1",
        ],
    );
    let repo = relay_repo(&env, server.port, 3);
    let r = repo.to_str().unwrap();
    for (k, v) in [
        ("email-send-relay-security", "starttls"),
        ("email-send-relay-user", "alice"),
        ("email-send-relay-password", "right-Pw-1"),
        // ca.pem sits next to app.db.
        ("email-send-relay-ca", "ca.pem"),
    ] {
        harness::Cmd::backoffice()
            .args(["setting", "-R", r, k, v])
            .output()
            .success();
    }
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (0, 3, 0), "log:\n{}", server.log());
    assert_eq!(ids(&server).len(), 3);
    assert_eq!(server.connections(), 1);
}
