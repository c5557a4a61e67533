//! The test harness: a fresh temporary directory per test, real SQLite
//! files, and fluent commands around the real binaries.
//!
//! Two programs are under test:
//! * `backoffice`, the command as shipped (with the five tasks of
//!   `backoffice-tasks`), and
//! * `host`, `examples/host.rs`: the same commands with the host's own tasks
//!   instead (`flaky`, and `outbox` with its setting `host-outdir`), so
//!   workers have real work whose timing we can observe. The task appends
//!   `enter PID NANOS` / `exit PID NANOS` to the file named by the
//!   `host-journal` config row; `host-work-ms` makes the work take that long.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The `backoffice` binary.
pub fn backoffice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backoffice"))
}

/// The example host binary. `cargo test` builds examples before running
/// tests, next to this test binary's `deps` directory.
pub fn host_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let host = dir.join("examples").join("host");
    assert!(
        host.exists(),
        "{} is missing: run the tests with `cargo test` (which builds examples) or `cargo build --examples` first",
        host.display()
    );
    // `cargo test --test integration` does not rebuild examples: a host
    // older than any source file would test old code.
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        let built = std::fs::metadata(&host).and_then(|m| m.modified()).ok();
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // The host's own source and every library it links (the other
        // examples are separate programs).
        let newest = [
            "backoffice/src",
            "backoffice-tasks/src",
            "backoffice-tasks/src/notify",
            "backoffice-cli/src",
            "backoffice-cli/src/commands",
            "backoffice-cli/src/web",
        ]
        .iter()
        .filter_map(|d| std::fs::read_dir(crates.join(d)).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| e.path())
        .chain([crates.join("backoffice-cli/examples/host.rs")])
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
        assert!(
            built >= newest,
            "{} is older than the sources: run `cargo test` without --test, or `cargo build --examples` first",
            host.display()
        );
    });
    host
}

/// Whether an outside program is available. When it is not, the test should
/// return early — unless `BACKOFFICE_REQUIRE_EXTERNAL=1`, under which a
/// missing program fails the test, so CI can never skip silently.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("{program} is required (BACKOFFICE_REQUIRE_EXTERNAL=1) but not installed");
        }
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// True when running as root (file permissions then do not make a file read-only).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A test's private directory.
pub struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A new empty directory.
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("backoffice-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new repository with the host application's table and a `config`
    /// table, a journal file, and the given lease time.
    pub fn repo(&self, name: &str, lease_time: u32) -> TestRepo {
        let path = self.path(name);
        let conn = Connection::open(&path).expect("create repo");
        conn.execute_batch(
            "CREATE TABLE outbox(id INTEGER PRIMARY KEY, body TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX outbox_pending ON outbox(id) WHERE done = 0;
             CREATE TABLE config(name TEXT PRIMARY KEY NOT NULL, value CLOB, mtime DATE);",
        )
        .expect("schema");
        let r = TestRepo {
            path,
            journal: self.path(&format!("{name}.journal")),
        };
        r.set("backoffice-lease-time", &lease_time.to_string());
        r.set("host-journal", &r.journal.display().to_string());
        r
    }
}

/// A repository under test, inspected with its own connections.
pub struct TestRepo {
    /// The file.
    pub path: PathBuf,
    /// The host task's journal file.
    pub journal: PathBuf,
}

impl TestRepo {
    /// A fresh connection with a busy timeout.
    pub fn conn(&self) -> Connection {
        let c = Connection::open(&self.path).expect("open repo");
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    /// Sets a config row.
    pub fn set(&self, name: &str, value: &str) {
        self.conn()
            .execute(
                "REPLACE INTO config(name, value, mtime) VALUES (?1, ?2, 0)",
                [name, value],
            )
            .expect("set config");
    }

    /// Reads a config row.
    pub fn get(&self, name: &str) -> Option<String> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row("SELECT value FROM config WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .expect("get config")
    }

    /// The decoded lease.
    pub fn lease(&self) -> backoffice::Lease {
        backoffice::Lease::parse(&self.get("backoffice").unwrap_or_default())
    }

    /// Queues `n` items of work for the host's outbox task.
    pub fn publish(&self, n: usize) {
        let c = self.conn();
        for i in 0..n {
            c.execute(
                "INSERT INTO outbox(body) VALUES (?1)",
                [format!("item {i}")],
            )
            .expect("publish");
        }
    }

    /// Items not yet handled.
    pub fn pending(&self) -> i64 {
        self.conn()
            .query_row("SELECT count(*) FROM outbox WHERE done = 0", [], |r| {
                r.get(0)
            })
            .expect("pending")
    }

    /// The journal: (kind, pid, nanos) in file order.
    pub fn journal(&self) -> Vec<(String, u32, u128)> {
        let text = std::fs::read_to_string(&self.journal).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut f = l.split(' ');
                (
                    f.next().unwrap().to_owned(),
                    f.next().unwrap().parse().unwrap(),
                    f.next().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// The journal as (pid, enter, exit) intervals, checking that every
    /// enter has its exit.
    pub fn runs(&self) -> Vec<(u32, u128, u128)> {
        let mut open: Vec<(u32, u128)> = Vec::new();
        let mut runs = Vec::new();
        for (kind, pid, t) in self.journal() {
            match kind.as_str() {
                "enter" => open.push((pid, t)),
                "exit" => {
                    let i = open
                        .iter()
                        .position(|(p, _)| *p == pid)
                        .unwrap_or_else(|| panic!("exit without enter for {pid}"));
                    let (_, t0) = open.remove(i);
                    runs.push((pid, t0, t));
                }
                k => panic!("bad journal line kind {k}"),
            }
        }
        assert!(open.is_empty(), "runs that never exited: {open:?}");
        runs.sort_by_key(|r| r.1);
        runs
    }
}

/// A command under test, built fluently.
pub struct Cmd {
    cmd: Command,
    label: String,
}

impl Cmd {
    /// The `backoffice` binary.
    pub fn backoffice() -> Cmd {
        Cmd::new(backoffice_bin())
    }

    /// The example host.
    pub fn host() -> Cmd {
        Cmd::new(host_bin())
    }

    /// Any program.
    pub fn new(program: impl AsRef<std::ffi::OsStr>) -> Cmd {
        let mut cmd = Command::new(program.as_ref());
        cmd.env_remove("RUST_LOG");
        Cmd {
            label: program.as_ref().to_string_lossy().into_owned(),
            cmd,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.label.push(' ');
        self.label.push_str(&a.as_ref().to_string_lossy());
        self.cmd.arg(a);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.cmd.env(k, v);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, k: &str) -> Cmd {
        self.cmd.env_remove(k);
        self
    }

    /// Runs to completion (bounded: a hung command fails the test after 120 s).
    pub fn output(mut self) -> Done {
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.label));
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(100));
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return;
                }
            }
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        });
        let t0 = Instant::now();
        let out = child.wait_with_output().expect("wait");
        drop(watchdog);
        Done {
            out,
            label: self.label,
            elapsed: t0.elapsed(),
        }
    }

    /// Starts it in the background with output discarded.
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.label))
    }

    /// Starts it in the background with stdin piped and the given stdout
    /// and stderr.
    pub fn spawn_with(mut self, stdout: Stdio, stderr: Stdio) -> Child {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.label))
    }

    /// Runs it in this directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cmd.current_dir(dir);
        self
    }

    /// Starts it in the background with stdout piped.
    pub fn spawn_piped(mut self) -> Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.label))
    }
}

/// A finished command.
pub struct Done {
    /// Its output.
    pub out: Output,
    /// What ran, for messages.
    pub label: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Done {
    /// Asserts exit status 0; returns stdout.
    pub fn success(self) -> String {
        assert!(
            self.out.status.success(),
            "`{}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.label,
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts a non-zero exit; returns stderr.
    pub fn failure(self) -> String {
        assert!(
            !self.out.status.success(),
            "`{}` should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.label,
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }

    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

/// Polls `f` every 10 ms until it is true or `limit` passes; returns the last value.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    backoffice::clock::now()
}

/// Our boot id, for hand-written leases.
pub fn boot() -> String {
    backoffice::process::boot_id().expect("boot id").to_owned()
}

/// A process's state letter and start time, from /proc.
pub fn proc_stat(pid: u32) -> Option<backoffice::process::ProcStat> {
    backoffice::process::proc_stat(i64::from(pid))
}

/// Children of `parent` that are zombies right now.
pub fn zombie_children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let ppid: Option<u32> = f.next().and_then(|p| p.parse().ok());
        if state == Some("Z") && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Kills a child process and reaps it (for cleanup).
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child to exit, failing the test if it takes longer than
/// `limit` (the child is then killed, so no test leaves a process behind).
pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if t0.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An application's database, used through the `backoffice` binary: the
/// common ground of the notification, hook and webhook tests.
pub struct AppRepo {
    /// The file.
    pub path: PathBuf,
}

impl AppRepo {
    /// A new SQLite file with one application table.
    pub fn new(env: &Env, name: &str) -> AppRepo {
        let path = env.path(name);
        Connection::open(&path)
            .expect("create the repository")
            .execute_batch("CREATE TABLE app(x)")
            .expect("application table");
        AppRepo { path }
    }

    /// The path as text.
    pub fn r(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// Runs `backoffice ARGS -R REPO`, asserting success; returns stdout.
    pub fn bo(&self, args: &[&str]) -> String {
        Cmd::backoffice()
            .args(args)
            .args(["-R", self.r()])
            .output()
            .success()
    }
}

/// One HTTP/1.1 request as a test's own server reads it off a keep-alive
/// connection (the webhook receivers).
pub struct HttpRequest {
    /// The request line, e.g. `POST /hook/0 HTTP/1.1` (with its line end).
    pub line: String,
    headers: Vec<(String, String)>,
    /// `Content-Length` bytes of body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A header's value (the name in lower case), or "" when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// Reads one request: its line, its headers and a body of `Content-Length`
/// bytes. `None` when the connection closes (or its read times out) first.
pub fn read_http_request(r: &mut impl std::io::BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut req = HttpRequest {
        line,
        headers,
        body: Vec::new(),
    };
    let len: usize = req.header("content-length").parse().unwrap_or(0);
    req.body = vec![0; len];
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}

/// Hex HMAC-SHA256 of `msg` under `secret`, as webhook signatures carry it.
pub fn hmac_hex(secret: &str, msg: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(msg);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
