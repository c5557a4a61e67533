//! What every request handler shares: the [`App`] (the served site, the
//! engine, the request limits) and its per-process counters and write
//! gates. It knows nothing of routes or replies, so every other file of the
//! web front may use it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backoffice::pg::PgTrigger;
use backoffice::{Backoffice, Started};

use super::clients::RateTable;
use super::site::{Site, Target};
use super::store::Store;

/// Request limits. The defaults suit a status page and a small JSON API.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Longest time to receive a request's headers, and longest a
    /// keep-alive connection may sit idle between requests.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), bytes.
    pub max_header: usize,
    /// Most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Most connections from one client address at once; more are refused
    /// (closed at once), so one client cannot take every connection.
    pub max_per_client: usize,
    /// Header (and idle) timeout for connections accepted while the server
    /// is near its connection cap, when idle connections are also shed.
    pub busy_header_timeout: Duration,
    /// Longest a connection may live, however busy (bounds a client that
    /// never reads its replies).
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 1 << 20,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(15),
            max_header: 16 * 1024,
            max_connections: 1024,
            max_per_client: 256,
            busy_header_timeout: Duration::from_secs(2),
            connection_lifetime: Duration::from_secs(600),
        }
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    /// The served repositories.
    pub site: Site,
    /// The engine: tasks and how to start workers.
    pub bo: Backoffice,
    /// The after-request check for PostgreSQL repositories, whose answers
    /// it keeps in this process (no round trip on most requests).
    pg: PgTrigger,
    /// Request limits.
    pub limits: Limits,
    /// Whether replies run the after-request check (off: pages only, for
    /// cron-driven setups).
    pub trigger: bool,
    started: Mutex<HashMap<String, u64>>,
    checks: Mutex<HashMap<String, u64>>,
    read_checks: Mutex<HashMap<String, Instant>>,
    /// Where copies pushed by peers go (`serve --replica-dir`), if anywhere.
    pub replicas: Option<ReplicaSink>,
    write_gates: Vec<Mutex<()>>,
    /// Sign-ups counted per client and per repository, in memory (`serve`);
    /// `None` in a process that lives for one request (`cgi`), which
    /// counts in the repository instead.
    pub signup_rates: Option<RateTable>,
    index: IndexCache,
}

/// How long the index's rows are served before they are read again. The
/// index over 10,000 repositories must not open every one on every
/// request; a stale row is at most this old (plus one rebuild), and the
/// status page of a repository is always current.
pub const INDEX_TTL: Duration = Duration::from_secs(10);

/// One repository as the index shows it: counts and ages only, never a
/// problem's text (the index is public; see `session.rs`).
#[derive(Clone, Debug, Default)]
pub struct IndexRow {
    /// The name it is served under.
    pub name: String,
    /// False if its status could not be read.
    pub readable: bool,
    /// `web-public-summary` is on: the counts below may be shown.
    pub public: bool,
    /// Problems now.
    pub problems: usize,
    /// Where they come from (task names, `backoffice`), each once.
    pub sources: Vec<String>,
    /// Seconds since the last run started.
    pub last_run_age: Option<i64>,
    /// Items of the last run.
    pub last_items: Option<u64>,
    /// A worker holds the lease now.
    pub running: bool,
}

/// The index's rows, read again in the background once older than
/// [`INDEX_TTL`] (see [`App::index_rows`]).
#[derive(Debug, Default)]
struct IndexCache {
    rows: Mutex<Option<(Instant, Arc<Vec<IndexRow>>)>>,
    building: Mutex<()>,
    rebuilding: AtomicBool,
}

/// Stripes of the in-process write gate ([`App::write_gate`]): a fixed
/// number, so the gate costs the same for one repository or 10,000.
const WRITE_GATES: usize = 64;

/// Copies of other servers' repositories this server takes: `PUT
/// /replica/NAME` with the token stores `DIR/NAME.db`.
#[derive(Debug)]
pub struct ReplicaSink {
    /// The folder.
    pub dir: std::path::PathBuf,
    /// The token peers send.
    pub token: String,
    /// Generations kept.
    pub keep: u32,
    /// Largest copy taken, bytes.
    pub max_bytes: u64,
}

/// After a read-only request (GET, HEAD) the check runs at most this often
/// per repository. Such a request changed nothing, so all it can bring to
/// light is work that became due with the clock — and `due` times are whole
/// seconds — or work another process left without running its own check.
/// Requests that change something always run the check. Without this, a
/// server answering thousands of reads a second spends a sixth of its time
/// re-asking a question whose answer cannot have changed (measured:
/// `bench/web.sh`, part a).
pub const READ_CHECK_EVERY: Duration = Duration::from_secs(1);

impl App {
    /// An app serving `site` with this engine.
    pub fn new(site: Site, bo: Backoffice, limits: Limits, trigger: bool) -> App {
        App {
            site,
            pg: PgTrigger::new(bo.tasks().clone()),
            bo,
            limits,
            trigger,
            started: Mutex::new(HashMap::new()),
            checks: Mutex::new(HashMap::new()),
            read_checks: Mutex::new(HashMap::new()),
            replicas: None,
            write_gates: (0..WRITE_GATES).map(|_| Mutex::new(())).collect(),
            signup_rates: Some(RateTable::default()),
            index: IndexCache::default(),
        }
    }

    /// Leaves the workers it starts for init to reap (a process that exits
    /// right after its request: CGI).
    pub fn short_lived(mut self) -> App {
        self.pg = PgTrigger::new(self.bo.tasks().clone()).reap_children(false);
        // Counters in memory would die with the request.
        self.signup_rates = None;
        self
    }

    /// Tells the check that this process just published to `store`: on
    /// PostgreSQL its kept answer is dropped, so the check after this
    /// request asks the database and starts a worker at once. (On SQLite
    /// the check always reads the file.)
    pub fn published(&self, store: &Store) {
        if let Store::Pg(c) = store {
            self.pg.published(c.url());
        }
    }

    /// Takes copies pushed by peers into `sink`.
    pub fn with_replicas(mut self, sink: ReplicaSink) -> App {
        self.replicas = Some(sink);
        self
    }

    /// Whether the reply to a request with this method should run the
    /// after-request check for `name` now (see [`READ_CHECK_EVERY`]).
    pub fn wants_check(&self, name: &str, read_only: bool) -> bool {
        if !self.trigger {
            return false;
        }
        if !read_only {
            return true;
        }
        let mut last = self.read_checks.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get_mut(name) {
            Some(t) if now.duration_since(*t) < READ_CHECK_EVERY => false,
            Some(t) => {
                *t = now;
                true
            }
            None => {
                last.insert(name.to_owned(), now);
                true
            }
        }
    }

    /// The after-request check for repository `name`: start a worker if work
    /// is due and none is queued. Blocking (SQLite); never fails a request.
    pub fn after_request(&self, name: &str) -> Option<Started> {
        bump(&self.checks, name);
        // On PostgreSQL a kept answer needs no session at all.
        if let Some(Target::Pg(url)) = self.site.resolve(name) {
            if let Some(c) = self.pg.cached(&url).filter(|c| !c.is_needed()) {
                return Some(Started::NotNeeded(c));
            }
        }
        let started = match self.site.with_repo(name, |store| match store {
            Store::File(r) => self.bo.after_request(r.conn()),
            Store::Pg(c) => self.pg.after_request(c),
        })? {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(repo = name, "after-request check: {e}");
                return None;
            }
        };
        if let Started::Worker { pid } = started {
            tracing::debug!(repo = name, pid, "started a worker");
            bump(&self.started, name);
        }
        Some(started)
    }

    /// Held by a request that writes to repository `name`, so this
    /// server's own writers to one repository queue here, in order, rather
    /// than all polling SQLite's lock at once: SQLite's busy handler sleeps
    /// and retries, which under a burst of concurrent writers lets some
    /// wait out the whole busy timeout while others get in. With the gate,
    /// only one of ours contends with other processes at a time.
    pub fn write_gate(&self, name: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let i = (h.finish() % WRITE_GATES as u64) as usize;
        self.write_gates[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a worker for `store` now, due work or not (the operator's
    /// "run now"): on SQLite through the engine; on PostgreSQL a detached
    /// worker for the schema's URL.
    pub fn run_now(&self, store: &Store) -> Started {
        let started = match store {
            Store::File(r) => self.bo.run_now(r.conn()),
            Store::Pg(c) => {
                let logfile = c.settings().ok().and_then(|s| s.logfile);
                let spawned = backoffice::process::WorkerCommand::current_exe().and_then(|cmd| {
                    backoffice::pg::spawn_worker(&cmd, c.url(), logfile.as_deref())
                });
                match spawned {
                    Ok(child) => {
                        let pid = child.id();
                        backoffice::process::reap(child);
                        self.pg.published(c.url());
                        Started::Worker { pid }
                    }
                    Err(e) => Started::Failed(format!("cannot start a worker: {e}")),
                }
            }
        };
        if matches!(started, Started::Worker { .. }) {
            let name = match store {
                Store::File(r) => super::site::name_of(r.path()).unwrap_or_default(),
                Store::Pg(c) => c.url().schema().to_owned(),
            };
            bump(&self.started, &name);
        }
        started
    }

    /// The index's rows, and how old they are. Kept rows younger than
    /// `INDEX_TTL` are served as they are; older ones are served too while
    /// one thread reads them again in the background, so a busy index
    /// never waits for 10,000 repositories to be opened. Only when there
    /// are no rows yet (the first request; every request under CGI) does a
    /// request build them itself, one at a time.
    pub fn index_rows(
        self: &Arc<Self>,
        build: fn(&App) -> Vec<IndexRow>,
    ) -> (Arc<Vec<IndexRow>>, Duration) {
        let kept = |app: &App| {
            app.index
                .rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        if let Some((at, rows)) = kept(self) {
            if at.elapsed() >= INDEX_TTL && !self.index.rebuilding.swap(true, Ordering::AcqRel) {
                let app = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("index".into())
                    .spawn(move || {
                        let rows = Arc::new(build(&app));
                        *app.index.rows.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((Instant::now(), rows));
                        app.index.rebuilding.store(false, Ordering::Release);
                    });
                if spawned.is_err() {
                    self.index.rebuilding.store(false, Ordering::Release);
                }
            }
            return (rows, at.elapsed());
        }
        let gate = self
            .index
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Built by the request we waited for?
        if let Some((at, rows)) = kept(self) {
            return (rows, at.elapsed());
        }
        let rows = Arc::new(build(self));
        *self.index.rows.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), rows.clone()));
        drop(gate);
        (rows, Duration::ZERO)
    }

    /// Workers this process has started for `name`.
    pub fn workers_started(&self, name: &str) -> u64 {
        count(&self.started, name)
    }

    /// After-request checks this process has run for `name`.
    pub fn checks_run(&self, name: &str) -> u64 {
        count(&self.checks, name)
    }
}

fn bump(counters: &Mutex<HashMap<String, u64>>, name: &str) {
    let mut c = counters.lock().unwrap_or_else(|p| p.into_inner());
    match c.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            c.insert(name.to_owned(), 1);
        }
    }
}

fn count(counters: &Mutex<HashMap<String, u64>>, name: &str) -> u64 {
    let c = counters.lock().unwrap_or_else(|p| p.into_inner());
    c.get(name).copied().unwrap_or(0)
}
