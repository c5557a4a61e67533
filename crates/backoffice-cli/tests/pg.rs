//! The tests' own PostgreSQL server (issue 12: several hosts).
//!
//! Nothing outside the test run is touched: `initdb` makes a cluster in a
//! temporary directory and `postgres` serves it on a Unix socket in that
//! same directory, with no TCP listener at all (`listen_addresses=''`).
//! Durability is switched off (`fsync=off`, no synchronous commit): a crash
//! of the machine loses a throw-away cluster, nothing more, and tests run
//! faster.
//!
//! * **Root.** `initdb` and `postgres` refuse to run as root, and CI runs as
//!   root with no `sudo`; both then run as `nobody` through
//!   `setpriv --reuid --regid --clear-groups`, in a directory chowned to
//!   that user. Root still connects to the socket (permissions do not stop
//!   it).
//! * **One server per run, one database per test.** `initdb` costs one to
//!   two seconds on a loaded machine, so the tests that run at the same time
//!   share one server ([`database`] hands each its own fresh database). The
//!   server lives as long as some test holds it: the last [`PgDb`] dropped
//!   stops it (fast shutdown, then SIGKILL after a bounded wait) and removes
//!   its directory; a later test starts a new one.
//! * **A killed test binary.** Statics are never dropped, and a run can be
//!   SIGKILLed; the postmaster gets SIGINT (fast shutdown) when the thread
//!   that spawned it dies (`setpriv --pdeathsig`), and that thread lives
//!   exactly as long as the server, so no server outlives the run (its
//!   directory in the temporary directory does, in that case only).
//! * **Missing binaries.** Looked for on the PATH, then in
//!   `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package puts them
//!   there); when absent the test skips with a message, except under
//!   `BACKOFFICE_REQUIRE_EXTERNAL=1` (see [`crate::harness::have`]).
//!   `scripts/test` installs the package when it can.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{have, is_root};

/// How long a server may take to accept connections before the test fails
/// (generous: two cores shared with compilers).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is SIGKILLed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// The superuser `initdb` creates (`-U`); trust authentication on the socket.
pub const SUPERUSER: &str = "postgres";

/// The password in the URLs the tests hand to `backoffice`: never sent
/// (the cluster trusts local connections), never to be printed.
pub const PASSWORD: &str = "s3cret-never-shown";

/// The server the running tests share, if one is up.
static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());

/// A fresh database on the shared server, or `None` (after a "SKIPPED"
/// message) when PostgreSQL is not installed. Panics when it is installed
/// but does not start, with the server's log.
pub fn database() -> Option<PgDb> {
    let server = {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        match shared.upgrade() {
            Some(s) => s,
            None => {
                // Started under the lock: concurrent tests wait for this
                // one server instead of starting one each.
                let s = Arc::new(PgServer::start()?);
                *shared = Arc::downgrade(&s);
                s
            }
        }
    };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = server.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    Some(PgDb { server, name })
}

/// Where `initdb` and `postgres` are: the PATH first, then the newest
/// Debian cluster version under /usr/lib/postgresql.
pub fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    {
        return Some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    debian.sort();
    debian.pop().map(|(_, bin)| bin)
}

/// A running PostgreSQL server in a temporary directory; stopped and
/// removed on drop.
pub struct PgServer {
    /// The cluster (`data/`), the socket and the log (`server.log`).
    dir: tempfile::TempDir,
    /// The postmaster (`setpriv` executes it in place, so this is its pid).
    child: Child,
    /// Dropped after the server stopped: ends the thread that spawned it,
    /// which `--pdeathsig` ties the server's life to.
    keep_alive: Option<mpsc::Sender<()>>,
    spawner: Option<JoinHandle<()>>,
    /// How long the start took, `initdb` included (reported by tests).
    pub started_in: Duration,
    /// How to start the postmaster again ([`PgServer::restart`]).
    launch: Launch,
}

/// What starting the postmaster takes.
#[derive(Clone)]
struct Launch {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    setpriv: bool,
    as_user: Vec<String>,
    /// Extra `-c name=value` settings.
    extra: Vec<String>,
}

impl Launch {
    /// Spawns the postmaster from a thread that lives as long as it does
    /// (its `--pdeathsig` parent); returns it and that thread's handles.
    fn spawn(&self) -> (Child, mpsc::Sender<()>, JoinHandle<()>) {
        let log_path = self.socket_dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log");
        let mut server = wrap(
            self.setpriv,
            &self.as_user,
            &["--pdeathsig=INT"],
            &self.bin.join("postgres"),
        );
        server
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"]);
        if !self
            .extra
            .iter()
            .any(|e| e.starts_with("listen_addresses="))
        {
            server.args(["-c", "listen_addresses="]);
        }
        for e in &self.extra {
            server.args(["-c", e]);
        }
        server
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let (keep_alive, alive) = mpsc::channel::<()>();
        let (send_child, child) = mpsc::channel();
        let spawner = std::thread::spawn(move || {
            let _ = send_child.send(server.spawn());
            // Returns when the sender is dropped, after the server stopped.
            let _ = alive.recv();
        });
        let child = child
            .recv()
            .expect("spawner thread")
            .expect("spawn postgres");
        (child, keep_alive, spawner)
    }
}

impl PgServer {
    /// Makes a cluster and starts a server on it; `None` when PostgreSQL
    /// (or, as root, `setpriv`) is missing and the test should skip.
    pub fn start() -> Option<PgServer> {
        Self::start_with(&[])
    }

    /// [`PgServer::start`] with extra `-c name=value` settings (for
    /// instance `listen_addresses=…` and `port=…` for a server reached
    /// over TCP).
    pub fn start_with(extra: &[&str]) -> Option<PgServer> {
        let t0 = Instant::now();
        let Some(bin) = find_bin_dir() else {
            if std::env::var("BACKOFFICE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!(
                    "PostgreSQL (initdb, postgres) is required (BACKOFFICE_REQUIRE_EXTERNAL=1) but not installed"
                );
            }
            eprintln!(
                "SKIPPED: PostgreSQL (initdb, postgres) is not installed (neither on the PATH nor in /usr/lib/postgresql/*/bin)"
            );
            return None;
        };
        // As root the server must run as someone else; elsewhere setpriv
        // only ties the server's life to ours, and is optional.
        let setpriv = if is_root() {
            if !have("setpriv") {
                return None;
            }
            true
        } else {
            Command::new("setpriv")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let dir = tempfile::Builder::new()
            .prefix("backoffice-pg-")
            .tempdir()
            .expect("tempdir");
        let as_user = if is_root() {
            let (uid, gid) = (id_of("-u"), id_of("-g"));
            chown(dir.path(), uid, gid);
            vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_string(),
            ]
        } else {
            vec![]
        };
        let data = dir.path().join("data");
        let out = wrap(setpriv, &as_user, &[], &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-A", "trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let launch = Launch {
            bin,
            data,
            socket_dir: dir.path().to_owned(),
            setpriv,
            as_user,
            extra: extra.iter().map(|e| e.to_string()).collect(),
        };
        let (child, keep_alive, spawner) = launch.spawn();
        let mut server = PgServer {
            dir,
            child,
            keep_alive: Some(keep_alive),
            spawner: Some(spawner),
            started_in: Duration::ZERO,
            launch,
        };
        server.wait_ready(t0 + START_DEADLINE);
        server.started_in = t0.elapsed();
        eprintln!(
            "PostgreSQL server started in {:?} (initdb included) at {}",
            server.started_in,
            server.socket_dir().display()
        );
        Some(server)
    }

    /// Waits until a connection succeeds; panics with the log when the
    /// server exits or the deadline passes.
    fn wait_ready(&mut self, deadline: Instant) {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "postgres exited ({status}) before accepting connections:\n{}",
                    self.log()
                );
            }
            let last_error = match self.config("postgres").connect(postgres::NoTls) {
                Ok(_) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "postgres did not accept connections within {START_DEADLINE:?} (last error: {last_error}):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory of the server's socket (a libpq `host=`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The connection settings for a database, as the superuser.
    pub fn config(&self, dbname: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(self.socket_dir())
            .port(self.port())
            .user(SUPERUSER)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A new session on a database.
    pub fn connect(&self, dbname: &str) -> postgres::Client {
        self.config(dbname)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname}: {e}\n{}", self.log()))
    }
}

impl PgServer {
    /// Stops the server (fast shutdown: sessions are ended) and starts it
    /// again on the same cluster; returns when it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let (child, keep_alive, spawner) = self.launch.spawn();
        self.child = child;
        self.keep_alive = Some(keep_alive);
        self.spawner = Some(spawner);
        self.wait_ready(Instant::now() + START_DEADLINE);
    }

    /// The server's port (5432 unless a `port=` setting said otherwise;
    /// the socket's name carries it too).
    pub fn port(&self) -> u16 {
        self.launch
            .extra
            .iter()
            .find_map(|e| e.strip_prefix("port=")?.parse().ok())
            .unwrap_or(5432)
    }

    /// Where the cluster's `pg_hba.conf` is (to let TCP clients in).
    pub fn data_dir(&self) -> &Path {
        &self.launch.data
    }

    fn stop(&mut self) {
        // Fast shutdown: sessions are ended, nothing waits on clients.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("postgres did not stop within {STOP_DEADLINE:?}: SIGKILL");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        drop(self.keep_alive.take());
        if let Some(t) = self.spawner.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        // The TempDir removes the cluster when this struct's fields drop.
    }
}

/// One test's own database on the shared server (dropped with the test).
pub struct PgDb {
    pub server: Arc<PgServer>,
    pub name: String,
}

impl PgDb {
    /// A new session on this database.
    pub fn connect(&self) -> postgres::Client {
        self.server.connect(&self.name)
    }

    /// The connection settings (for `postgres::Config::connect`).
    pub fn config(&self) -> postgres::Config {
        self.server.config(&self.name)
    }

    /// A repository URL for `schema` of this database, with a password
    /// the server ignores (trust authentication) that no output may show.
    pub fn url(&self, schema: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}:{PASSWORD}@localhost/{}?host={}&schema={schema}",
            self.name,
            self.server.socket_dir().display(),
        )
    }

    /// A libpq key/value connection string for this database (a socket
    /// directory path as `host`).
    pub fn conn_string(&self) -> String {
        format!(
            "host={} user={SUPERUSER} dbname={}",
            self.server.socket_dir().display(),
            self.name
        )
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Keeps a long-shared server small; a failure here only leaves a
        // database behind in a throw-away cluster.
        if let Ok(mut admin) = self.server.config("postgres").connect(postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `program` as a command, through `setpriv` when asked (with the user
/// switch, if any, and extra options).
fn wrap(setpriv: bool, as_user: &[String], extra: &[&str], program: &Path) -> Command {
    if setpriv {
        let mut c = Command::new("setpriv");
        c.args(as_user).args(extra).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// `id -u nobody` or `id -g nobody`: the unprivileged user the server runs
/// as when we are root (looked up, since the numbers differ between systems).
fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "nobody"])
        .output()
        .expect("run id");
    assert!(
        out.status.success(),
        "id {flag} nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("id {flag} nobody: {e}"))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}
