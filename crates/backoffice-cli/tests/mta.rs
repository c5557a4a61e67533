//! Issue 14, part 5: the `relay` send method against a real mail server we
//! did not write, Exim from Debian's packages (`exim4-daemon-light`).
//!
//! Each test runs its own Exim in the foreground (`exim4 -C CONF -bdf`)
//! from `mta_exim.conf`, filled in for a temporary directory: listening on
//! two ports of 127.0.0.1 with STARTTLS (a certificate from a throwaway CA
//! made with `openssl`, which the repository trusts through
//! `email-send-relay-ca`), AUTH PLAIN and LOGIN against a password file of
//! SHA-512 crypt hashes, relaying nothing without authentication, and
//! delivering into a maildir in the same directory. The tests read the
//! messages back from the maildir with Python's `email` package and Exim's
//! own log of how each arrived (`X=TLS…`, `A=plain:alice`).
//!
//! Exim refuses to deliver as root, so the spool, the log, the maildir and
//! the key belong to its user (`Debian-exim`), and the test runs as root to
//! start it from a private configuration. Without `exim4` (or as another
//! user) the tests skip with a message, except under
//! `BACKOFFICE_REQUIRE_EXTERNAL=1`; `scripts/test` installs it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, Cmd, Env, wait_until};
use crate::relay::{make_due, outbox_states, relay_repo, run_worker, test_certificates};

/// Every wait here gives up after this long.
const DEADLINE: Duration = Duration::from_secs(30);

/// The user Exim runs and delivers as (Debian's package creates it).
const EXIM_USER: &str = "Debian-exim";

const USER: &str = "alice";
const PASSWORD: &str = "right-Pw-1 with spaces";

/// Whether the tests can run Exim: `exim4`, `openssl` and `python3`
/// installed, Exim's user present and we are root. Otherwise a "SKIPPED"
/// message (a failure under `BACKOFFICE_REQUIRE_EXTERNAL=1`).
fn can_run_exim() -> bool {
    if !harness::have("exim4") || !harness::have("openssl") || !harness::have("python3") {
        return false;
    }
    let why = if !harness::is_root() {
        Some("must run as root to start Exim from a private configuration".to_owned())
    } else if uid_of(EXIM_USER).is_none() {
        Some(format!("Exim's user {EXIM_USER} does not exist"))
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            if std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!("the Exim tests are required (BACKOFFICE_REQUIRE_EXTERNAL=1) but {why}");
            }
            eprintln!("SKIPPED: the Exim tests: {why}");
            false
        }
    }
}

/// A user's uid and gid, from `id`.
fn uid_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Exim daemon; killed and reaped when dropped.
struct Exim {
    child: Child,
    dir: PathBuf,
    /// Offers AUTH PLAIN and LOGIN.
    plain_port: u16,
    /// Offers AUTH LOGIN only.
    login_port: u16,
}

impl Exim {
    /// Sets up `env`'s directory (certificates, password file, spool, log,
    /// maildir) and starts Exim; waits until both ports accept connections.
    fn start(env: &Env) -> Exim {
        let dir = env.dir().to_path_buf();
        let (uid, gid) = uid_of(EXIM_USER).expect("Exim's user");
        // Exim's user must reach the directory (and nothing more).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        test_certificates(&dir);
        let hash = Command::new("openssl")
            .args(["passwd", "-6", PASSWORD])
            .output()
            .expect("openssl passwd");
        assert!(hash.status.success());
        std::fs::write(
            dir.join("passwd"),
            format!("{USER}: {}", String::from_utf8_lossy(&hash.stdout).trim()),
        )
        .unwrap();
        for d in ["spool", "log", "Maildir"] {
            std::fs::create_dir(dir.join(d)).unwrap();
            std::os::unix::fs::chown(dir.join(d), Some(uid), Some(gid)).unwrap();
        }
        for f in ["server.key", "passwd"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).unwrap();
        }
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mta_exim.conf"),
        )
        .unwrap();
        // Another test may take a port between our look and Exim's bind:
        // then Exim exits, and we try other ports (at most 3 times).
        let mut last_log = String::new();
        for _ in 0..3 {
            let (plain_port, login_port) = (free_port(), free_port());
            if plain_port == login_port {
                continue;
            }
            let conf = dir.join("exim.conf");
            std::fs::write(
                &conf,
                template
                    .replace("@DIR@", dir.to_str().unwrap())
                    .replace("@PLAIN_PORT@", &plain_port.to_string())
                    .replace("@LOGIN_PORT@", &login_port.to_string())
                    .replace("@USER@", EXIM_USER),
            )
            .unwrap();
            let child = Command::new("exim4")
                .arg("-C")
                .arg(&conf)
                .arg("-bdf")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("exim.out")).unwrap())
                .stderr(std::fs::File::create(dir.join("exim.err")).unwrap())
                .spawn()
                .expect("start exim4");
            let mut exim = Exim {
                child,
                dir: dir.clone(),
                plain_port,
                login_port,
            };
            let t0 = Instant::now();
            while t0.elapsed() < DEADLINE {
                if matches!(exim.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
                if up(plain_port) && up(login_port) {
                    return exim;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last_log = exim.log();
        }
        panic!("Exim did not start; its output and log:\n{last_log}");
    }

    /// Exim's stderr and main log, for failure messages.
    fn log(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.dir.join(p)).unwrap_or_default();
        format!(
            "{}{}{}",
            read("exim.err"),
            read("log/mainlog"),
            read("log/paniclog")
        )
    }

    /// The main log's lines for messages received (`<=`).
    fn arrivals(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log/mainlog"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" <= "))
            .map(str::to_owned)
            .collect()
    }

    /// The messages delivered to the maildir (in no particular order), once
    /// there are `n` of them (delivery follows acceptance in another process).
    fn maildir(&self, n: usize) -> Vec<Vec<u8>> {
        let new = self.dir.join("Maildir/new");
        let files = || -> Vec<PathBuf> {
            std::fs::read_dir(&new)
                .map(|d| d.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default()
        };
        wait_until(DEADLINE, || files().len() >= n);
        let got = files();
        assert_eq!(
            got.len(),
            n,
            "messages in the maildir; log:\n{}",
            self.log()
        );
        got.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message as a mail reader sees it, parsed by Python's `email` package:
/// its headers (decoded), `Date-Unix` (the Date header in Unix seconds),
/// and `Text` (the decoded text body).
fn parsed(raw: &[u8]) -> std::collections::BTreeMap<String, String> {
    const PY: &str = r#"
import email, email.policy, email.utils, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
out = {k: str(v) for k, v in m.items()}
out["Date-Unix"] = str(int(email.utils.parsedate_to_datetime(m["Date"]).timestamp()))
out["Text"] = m.get_body(preferencelist=("plain",)).get_content()
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
    assert!(
        out.status.success(),
        "python3 could not parse the message:\n{}",
        String::from_utf8_lossy(raw)
    );
    serde_json::from_slice(&out.stdout).expect("headers as JSON")
}

fn setting(repo: &Path, name: &str, value: &str) {
    Cmd::backoffice()
        .args(["setting", "-R", repo.to_str().unwrap(), name, value])
        .output()
        .success();
}

/// Points `repo` (made by `relay_repo`) at `port` with STARTTLS, the test
/// CA (ca.pem next to the repository) and the login `USER`/`password`.
fn relay_settings(repo: &Path, port: u16, password: &str) {
    for (k, v) in [
        ("email-send-relayhost", format!("127.0.0.1:{port}").as_str()),
        ("email-send-relay-security", "starttls"),
        ("email-send-relay-user", USER),
        ("email-send-relay-password", password),
        ("email-send-relay-ca", "ca.pem"),
    ] {
        setting(repo, k, v);
    }
}

fn publish(repo: &Path, titles: &[&str]) {
    for t in titles {
        Cmd::backoffice()
            .args(["publish", "-R", repo.to_str().unwrap(), "--no-trigger"])
            .args(["--kind", "wiki", "--title", t, "--body"])
            .arg(format!("Body of {t}.\n.A line starting with a dot\n"))
            .output()
            .success();
    }
}

/// The outbox's tokens, in message order.
fn tokens(repo: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(repo).unwrap();
    let mut s = c
        .prepare("SELECT token FROM bo_outbox ORDER BY msgid")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Alerts reach Exim's maildir over STARTTLS with AUTH PLAIN, then LOGIN,
/// with their headers intact as a mail reader parses them.
#[test]
fn alerts_reach_exims_maildir_over_starttls_with_auth_plain_and_login() {
    if !can_run_exim() {
        return;
    }
    let env = Env::new();
    let exim = Exim::start(&env);
    // Three events, one verified subscriber (ann@example.org).
    let repo = relay_repo(&env, exim.plain_port, 3);
    relay_settings(&repo, exim.plain_port, PASSWORD);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (0, 3, 0), "log:\n{}", exim.log());
    let arrivals = exim.arrivals();
    assert_eq!(arrivals.len(), 3, "{arrivals:#?}");
    for a in &arrivals {
        // Exim's own record: received over TLS, authenticated by PLAIN as
        // alice, sent by the repository's address.
        assert!(a.contains(" X=TLS"), "not over TLS: {a}");
        assert!(a.contains(" A=plain:alice "), "not AUTH PLAIN: {a}");
        assert!(a.contains("<= bo@example.org "), "{a}");
    }

    // The same through the port that offers LOGIN only.
    relay_settings(&repo, exim.login_port, PASSWORD);
    publish(&repo, &["Fourth — ünïcödé", "Fifth"]);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (0, 5, 0), "log:\n{}", exim.log());
    let arrivals = exim.arrivals();
    assert_eq!(arrivals.len(), 5, "{arrivals:#?}");
    for a in &arrivals[3..] {
        assert!(a.contains(" X=TLS"), "not over TLS: {a}");
        assert!(a.contains(" A=login:alice "), "not AUTH LOGIN: {a}");
    }

    // Read back from the maildir: every header as sent.
    let code: String = rusqlite::Connection::open(&repo)
        .unwrap()
        .query_row("SELECT code FROM bo_subscriber", [], |r| r.get(0))
        .unwrap();
    // Exim delivers each message in a process of its own: the maildir's
    // order need not be the sending order, so they are matched by
    // Message-ID, in the outbox's order.
    let mut mail: std::collections::BTreeMap<String, (Vec<u8>, _)> = exim
        .maildir(5)
        .into_iter()
        .map(|raw| {
            let m = parsed(&raw);
            (m["Message-ID"].clone(), (raw, m))
        })
        .collect();
    let mut subjects = Vec::new();
    for token in tokens(&repo) {
        let (raw, m) = mail
            .remove(&format!("<bo.{token}@example.org>"))
            .unwrap_or_else(|| panic!("message {token} not in the maildir"));
        let raw = &raw;
        let h = |k: &str| {
            m.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("no {k} in {}", String::from_utf8_lossy(raw)))
        };
        assert_eq!(
            h("List-Unsubscribe"),
            format!("<https://example.org/r/app/unsubscribe/{code}>")
        );
        assert_eq!(h("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        assert_eq!(h("From"), "bo@example.org");
        assert_eq!(h("To"), "ann@example.org");
        // Exim's own delivery headers, above ours.
        assert_eq!(h("Envelope-to"), "ann@example.org");
        assert!(h("Received").contains("with esmtpsa"), "{}", h("Received"));
        let date: i64 = h("Date-Unix").parse().unwrap();
        assert!((harness::now() - date).abs() < 600, "Date {}", h("Date"));
        // The body, decoded, names the event and ends with how to leave.
        let subject = h("Subject");
        let title = subject.strip_prefix("[app] ").unwrap_or(&subject);
        assert!(
            h("Text").contains(&format!("== wiki: {title}\n")),
            "{}",
            h("Text")
        );
        assert!(
            h("Text").contains(&format!(
                "To stop them: https://example.org/r/app/unsubscribe/{code}"
            )),
            "{}",
            h("Text")
        );
        subjects.push(subject);
    }
    assert_eq!(
        subjects,
        [
            "[app] Event 0 — ünïcödé",
            "[app] Event 1 — ünïcödé",
            "[app] Event 2 — ünïcödé",
            "[app] Fourth — ünïcödé",
            "[app] Fifth",
        ]
    );
}

/// A wrong password: Exim refuses it (535), the run says so without the
/// password, nothing is delivered and nothing is lost; with the right one
/// every message arrives once.
#[test]
fn a_wrong_password_at_exim_fails_clearly_and_loses_nothing() {
    if !can_run_exim() {
        return;
    }
    let env = Env::new();
    let exim = Exim::start(&env);
    let repo = relay_repo(&env, exim.plain_port, 2);
    let wrong = "wrong-Pw-2 secret";
    relay_settings(&repo, exim.plain_port, wrong);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (2, 0, 0), "log:\n{}", exim.log());
    let status = Cmd::backoffice()
        .args(["status", "-R", repo.to_str().unwrap()])
        .output()
        .success();
    assert!(
        status.contains("authentication as \"alice\" failed: 535"),
        "{status}"
    );
    assert!(!status.contains(wrong), "the password was shown: {status}");
    let outbox = Cmd::backoffice()
        .args(["outbox", "-R", repo.to_str().unwrap(), "list"])
        .output()
        .success();
    assert!(!outbox.contains(wrong), "the password was shown: {outbox}");
    assert!(
        exim.log()
            .contains("plain authenticator failed for (example.org) [127.0.0.1]: 535"),
        "{}",
        exim.log()
    );
    assert!(exim.arrivals().is_empty(), "{:#?}", exim.arrivals());

    setting(&repo, "email-send-relay-password", PASSWORD);
    make_due(&repo);
    run_worker(&repo);
    assert_eq!(outbox_states(&repo), (0, 2, 0), "log:\n{}", exim.log());
    // Each message once (Exim delivers them in any order).
    let mut ids: Vec<String> = exim
        .maildir(2)
        .iter()
        .map(|raw| parsed(raw)["Message-ID"].clone())
        .collect();
    ids.sort();
    let mut want: Vec<String> = tokens(&repo)
        .iter()
        .map(|t| format!("<bo.{t}@example.org>"))
        .collect();
    want.sort();
    assert_eq!(ids, want);
}
