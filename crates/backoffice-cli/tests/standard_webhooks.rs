//! Issue 14, part 5: webhooks verified by a receiver we did not write the
//! verification of. `standard_webhooks_receiver.py` checks every real
//! delivery from the binary with the `standardwebhooks` package from PyPI
//! (the Standard Webhooks reference library for Python), on SQLite and on
//! PostgreSQL: signatures, a retry keeping its `webhook-id`, a tampered
//! body refused, `whsec_` secrets and plain ones.
//!
//! The package is installed by `scripts/test` into a virtual environment
//! under the user's cache directory (or found in the `python3` on the PATH);
//! without it the tests skip with a message, except under
//! `BACKOFFICE_REQUIRE_EXTERNAL=1`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::harness::{self, AppRepo, Cmd, Env, wait_until};

/// Every wait here gives up after this long.
const DEADLINE: Duration = Duration::from_secs(30);

/// A Python interpreter that can `import standardwebhooks`: the one
/// `scripts/test` names in `BACKOFFICE_TEST_PYTHON`, the virtual
/// environment it makes under the cache directory, or `python3`. `None`
/// (after a "SKIPPED" message) when there is none, except under
/// `BACKOFFICE_REQUIRE_EXTERNAL=1`, where that fails the test.
fn python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BACKOFFICE_TEST_PYTHON") {
        candidates.push(p.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
    if let Some(c) = cache {
        candidates.push(c.join("backoffice-test/venv/bin/python"));
    }
    candidates.push("python3".into());
    for c in candidates {
        let ok = Command::new(&c)
            .args(["-c", "import standardwebhooks"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(c);
        }
    }
    if std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
        panic!(
            "the Python package standardwebhooks is required (BACKOFFICE_REQUIRE_EXTERNAL=1) \
             but not installed; scripts/test installs it"
        );
    }
    eprintln!(
        "SKIPPED: the Python package standardwebhooks is not installed (scripts/test installs it)"
    );
    None
}

/// A running `standard_webhooks_receiver.py`. Dropping it closes its
/// stdin, which ends it, and reaps it.
struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
    log: PathBuf,
    stderr: PathBuf,
}

impl Receiver {
    fn start(python: &Path, env: &Env, name: &str, secret: &str, args: &[&str]) -> Receiver {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standard_webhooks_receiver.py");
        let log = env.path(&format!("{name}.jsonl"));
        let stderr = env.path(&format!("{name}.stderr"));
        let mut child = Command::new(python)
            .arg(&script)
            .arg(&log)
            .args(["--secret", secret, "--max-seconds", "120"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start standard_webhooks_receiver.py");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the receiver's port");
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the receiver said {line:?}; its stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Receiver {
            child,
            stdin,
            url: format!("http://127.0.0.1:{port}/hook"),
            log,
            stderr,
        }
    }

    /// The requests logged so far, in order.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits (bounded) until `n` requests are logged; returns them.
    fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(DEADLINE, || self.requests().len() >= n);
        let got = self.requests();
        assert_eq!(
            got.len(),
            n,
            "requests logged: {got:#?}\nreceiver stderr:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        got
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if !harness::wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Asserts that the library verified request `r` and refused its tampered
/// copy, and that its `webhook-id` is the delivery id of our own header
/// and of the body.
fn verified(r: &serde_json::Value) {
    assert_eq!(r["verified"], true, "the library refused: {r:#}");
    assert_eq!(r["tampered_rejected"], true, "a changed body passed: {r:#}");
    assert_eq!(r["webhook-id"], r["x-backoffice-delivery"], "{r:#}");
    assert_eq!(r["webhook-id"], r["json"]["delivery"], "{r:#}");
    let sig = r["webhook-signature"].as_str().unwrap();
    assert!(sig.starts_with("v1,"), "{sig}");
}

/// Where a test's repository is: an SQLite file or a PostgreSQL URL, with
/// how a worker runs on it and how time passes for its endpoints.
trait Target {
    fn r(&self) -> String;
    fn run(&self);
    fn time_passes(&self);
}

impl Target for AppRepo {
    fn r(&self) -> String {
        self.r().to_owned()
    }
    fn run(&self) {
        // Either exit status: a run whose endpoint failed reports the
        // task as failed.
        Cmd::backoffice()
            .args(["run", "--nolease", self.r()])
            .output();
    }
    fn time_passes(&self) {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .execute_batch("UPDATE bo_ledger SET next_attempt = 0 WHERE task = 'webhooks'")
            .unwrap();
    }
}

struct PgTarget {
    _db: crate::pg::PgDb,
    url: String,
}

impl Target for PgTarget {
    fn r(&self) -> String {
        self.url.clone()
    }
    fn run(&self) {
        // Runs are at least a lease time (1 s here) apart.
        std::thread::sleep(Duration::from_millis(1100));
        Cmd::backoffice().args(["run", &self.url]).output();
    }
    fn time_passes(&self) {
        backoffice::pg::PgUrl::parse(&self.url)
            .unwrap()
            .connect()
            .unwrap()
            .execute(
                "UPDATE bo_ledger SET next_attempt = 0 WHERE task = 'webhooks'",
                &[],
            )
            .unwrap();
    }
}

/// Runs `backoffice ARGS -R target` to success; returns stdout and stderr.
fn bo(target: &dyn Target, args: &[&str]) -> String {
    let out = Cmd::backoffice()
        .args(args)
        .args(["-R", &target.r()])
        .output();
    let said = format!("{}{}", out.stdout(), out.stderr());
    out.success();
    said
}

/// The whole story on one repository: a `whsec_` secret made by `webhook
/// secret`, three events of which the first delivery is answered 500 and
/// retried with the same `webhook-id`, every request verified by the
/// library and its tampered copy refused, then `webhook test`.
fn deliveries_verified_by_the_library(python: &Path, env: &Env, target: &dyn Target) {
    let secret = Cmd::backoffice()
        .args(["webhook", "secret"])
        .output()
        .success()
        .trim()
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let receiver = Receiver::start(python, env, "whsec", &secret, &["--fail-first", "1"]);
    let added = bo(
        target,
        &["webhook", "add", &receiver.url, "--secret", &secret],
    );
    let listed = bo(target, &["webhook", "list"]);
    let key = secret.strip_prefix("whsec_").unwrap();
    for said in [&added, &listed] {
        assert!(!said.contains(key), "the secret was printed: {said}");
    }
    let id = added
        .trim_start_matches("added:")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        bo(
            target,
            &[
                "publish",
                "--no-trigger",
                "--kind",
                "wiki",
                "--title",
                &format!("Page {i} — ünïcödé \"quoted\""),
            ],
        );
    }
    // The first attempt is answered 500: the endpoint backs off.
    target.run();
    let first = receiver.wait_for(1);
    assert_eq!(first[0]["status"], 500);
    verified(&first[0]);
    target.time_passes();
    target.run();
    let got = receiver.wait_for(4);
    for r in &got {
        verified(r);
    }
    // The retry carries the same webhook-id (a new timestamp, signed anew).
    assert_eq!(got[0]["webhook-id"], got[1]["webhook-id"], "{got:#?}");
    let ids: std::collections::BTreeSet<&str> = got[1..]
        .iter()
        .map(|r| r["webhook-id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "one id per event: {got:#?}");
    let titles: Vec<&str> = got[1..]
        .iter()
        .map(|r| r["json"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [0, 1, 2].map(|i| format!("Page {i} — ünïcödé \"quoted\"")),
        "in order, the body as the library parsed it"
    );
    bo(target, &["webhook", "test", &id]);
    let got = receiver.wait_for(5);
    verified(&got[4]);
    assert_eq!(got[4]["json"]["kind"], "test");
}

#[test]
fn standard_webhooks_library_verifies_real_deliveries_and_retries() {
    let Some(python) = python() else { return };
    let env = Env::new();
    let repo = AppRepo::new(&env, "app.db");
    deliveries_verified_by_the_library(&python, &env, &repo);
}

#[test]
fn standard_webhooks_library_verifies_deliveries_from_postgresql() {
    let Some(python) = python() else { return };
    let Some(db) = crate::pg::database() else {
        return;
    };
    let url = db.url("stdhooks");
    let target = PgTarget { _db: db, url };
    for (k, v) in [
        ("backoffice-lease-time", "1"),
        ("backoffice-heartbeat", "1"),
    ] {
        bo(&target, &["setting", k, v]);
    }
    let env = Env::new();
    deliveries_verified_by_the_library(&python, &env, &target);
}

/// A secret that is not `whsec_…` (every endpoint made before) is its own
/// key: the library verifies with it given as bytes, and refuses the same
/// deliveries when it reads the text as base64, as it does a `whsec_` one.
#[test]
fn a_plain_secret_is_the_key_as_bytes() {
    let Some(python) = python() else { return };
    let env = Env::new();
    let repo = AppRepo::new(&env, "app.db");
    let secret = "plain-secret-0123456789abcdef";
    let raw = Receiver::start(&python, &env, "raw", secret, &["--raw-key"]);
    let decoded = Receiver::start(&python, &env, "decoded", secret, &[]);
    repo.bo(&["webhook", "add", &raw.url, "--secret", secret]);
    repo.bo(&["webhook", "add", &decoded.url, "--secret", secret]);
    repo.bo(&["publish", "--no-trigger", "--kind", "wiki", "--title", "x"]);
    Target::run(&repo);
    verified(&raw.wait_for(1)[0]);
    let wrong = &decoded.wait_for(1)[0];
    assert_eq!(wrong["verified"], false, "{wrong:#}");
}

/// `webhook add` refuses a `whsec_` secret the libraries would read
/// otherwise than we do, naming the problem, and adds nothing.
#[test]
fn a_malformed_whsec_secret_is_refused_clearly() {
    let env = Env::new();
    let repo = AppRepo::new(&env, "app.db");
    for (secret, why) in [
        // Unpadded: some libraries pad it, some refuse it.
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwx", "standard base64"),
        // 12 bytes.
        ("whsec_MTIzNDU2Nzg5MDEy", "at least 16 random bytes"),
    ] {
        let out = Cmd::backoffice()
            .args(["webhook", "add", "http://127.0.0.1:9/h", "--secret", secret])
            .args(["-R", repo.r()])
            .output();
        let err = out.failure();
        assert!(err.contains(why), "{secret}: {err}");
        assert!(!err.contains(&secret[6..]), "the secret was printed: {err}");
    }
    assert!(repo.bo(&["webhook", "list"]).contains("0 webhooks"));
}
