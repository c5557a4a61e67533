//! The repositories a server answers for, by name, and a small pool of open
//! connections to each.
//!
//! The pool is bounded twice: a few idle connections per repository, and a
//! total across all repositories ([`pool_cap`], from the descriptor
//! limit), beyond which the least recently used idle connection is closed.
//! Without the total, one `/metrics` scrape of 1,100 repositories kept a
//! connection (a descriptor, three in WAL mode) to each for good, and under
//! the common limit of 1,024 descriptors repositories went "down", requests
//! failed and `accept` failed.
//!
//! A name is what appears in `/r/NAME`: the file name without its extension
//! (`demo.db` → `demo`). Names are checked against a strict alphabet before
//! anything else happens, and a name is only ever looked up in the map built
//! from the directory listing — never joined onto a path — so no request can
//! reach a file outside the served set (`..`, `/`, NUL all fail the alphabet,
//! and an unlisted name is simply not found).
//!
//! A site may also be PostgreSQL: one schema (`serve URL?schema=NAME`), or
//! every schema of a database that holds a repository (`serve --repolist
//! URL`), each served under its schema's name. Their sessions share one
//! small pool: a session idle on one schema is moved to another
//! ([`PgConn::into_schema`], one round trip) rather than a new one opened,
//! so a site of thousands of schemas holds a handful of the server's
//! connections; a session the server closed (a restart) is never reused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backoffice::Repo;
use backoffice::pg::{PgConn, PgUrl};

use super::store::Store;

/// Idle connections kept per repository; more are opened under load and
/// closed when returned to a full pool.
const POOL_IDLE: usize = 4;

/// A directory is listed again at most this often when a name is not found,
/// so a new repository appears without a restart, and a flood of requests
/// for unknown names cannot turn into a flood of directory scans.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// At most this many repositories are served from one directory.
pub const MAX_REPOS: usize = 100_000;

/// Idle PostgreSQL sessions kept across all schemas: each is a process on
/// the database server, whose connections are counted in the hundreds.
const PG_POOL_CAP: usize = 8;

/// Where the repositories come from.
#[derive(Debug)]
enum Source {
    /// One repository file.
    One(PathBuf),
    /// Every SQLite file directly inside a directory (`--repolist`).
    Dir(PathBuf),
    /// One PostgreSQL schema.
    PgOne(PgUrl),
    /// Every repository schema of a PostgreSQL database (`--repolist`).
    PgAll(PgUrl),
}

/// Where one served repository is.
#[derive(Clone, Debug)]
pub enum Target {
    /// An SQLite file.
    File(PathBuf),
    /// A PostgreSQL schema.
    Pg(Box<PgUrl>),
}

/// The served repositories.
#[derive(Debug)]
pub struct Site {
    source: Source,
    names: Mutex<(Instant, BTreeMap<String, Target>)>,
    pool: Mutex<Pool>,
}

/// Idle connections by repository, with their order of last use.
#[derive(Debug, Default)]
struct Pool {
    /// Per repository, oldest first.
    idle: HashMap<String, Vec<Pooled>>,
    /// Every idle connection by when it was returned: (tick, repository).
    order: BTreeMap<u64, String>,
    tick: u64,
    cap: usize,
}

/// An idle connection and the file it opened (device, inode), so a file
/// replaced under the same name (restored from a backup, say) gets a fresh
/// connection rather than one to the unlinked old file. (`None` for a
/// PostgreSQL session.)
#[derive(Debug)]
struct Pooled {
    store: Store,
    file: Option<(u64, u64)>,
    tick: u64,
}

impl Pool {
    /// The most recently returned idle connection to `name`.
    fn take(&mut self, name: &str) -> Option<Pooled> {
        let list = self.idle.get_mut(name)?;
        let p = list.pop()?;
        if list.is_empty() {
            self.idle.remove(name);
        }
        self.order.remove(&p.tick);
        Some(p)
    }

    /// The least recently returned idle connection to any repository (a
    /// PostgreSQL session, to be moved to another schema).
    fn take_any(&mut self) -> Option<Pooled> {
        let name = self.order.first_key_value().map(|(_, n)| n.clone())?;
        let list = self.idle.get_mut(&name)?;
        let p = list.remove(0);
        if list.is_empty() {
            self.idle.remove(&name);
        }
        self.order.remove(&p.tick);
        Some(p)
    }

    /// Keeps `store` idle for `name`; returns the connections to close (the
    /// least recently used beyond the caps), to be dropped outside the lock.
    fn put(&mut self, name: &str, store: Store, file: Option<(u64, u64)>) -> Vec<Pooled> {
        let mut out = Vec::new();
        let list = self.idle.entry(name.to_owned()).or_default();
        if list.len() >= POOL_IDLE {
            let old = list.remove(0);
            self.order.remove(&old.tick);
            out.push(old);
        }
        self.tick += 1;
        list.push(Pooled {
            store,
            file,
            tick: self.tick,
        });
        self.order.insert(self.tick, name.to_owned());
        while self.order.len() > self.cap {
            let Some((tick, who)) = self.order.pop_first() else {
                break;
            };
            if let Some(list) = self.idle.get_mut(&who) {
                if let Some(i) = list.iter().position(|p| p.tick == tick) {
                    out.push(list.remove(i));
                }
                if list.is_empty() {
                    self.idle.remove(&who);
                }
            }
        }
        out
    }
}

/// Idle connections kept across all repositories: 64, or an eighth of the
/// descriptor limit if that is less (a connection holds up to three
/// descriptors in WAL mode; the rest is for client connections,
/// connections in use, workers' pipes and the log), but at least 16. Each
/// idle connection also holds memory (its schema, cached statements and
/// pages), so the bound is low: enough for the repositories in active use,
/// while a scrape of thousands reopens the rest as it goes.
pub fn pool_cap() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft / 8)
        .unwrap_or(usize::MAX)
        .clamp(16, 64)
}

/// Raises the soft limit on open descriptors to the hard limit, so a server
/// over many repositories is not held to the common default soft limit of
/// 1,024 when the system allows more. Returns the limit now in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::debug!("raising the descriptor limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// True if `name` may be a repository name: 1–100 of `[A-Za-z0-9._-]`, not
/// starting with a dot.
pub fn valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The repository a request path is about: `NAME` in `/r/NAME` and
/// `/r/NAME/...`.
pub fn repo_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/r/")?;
    let name = rest.split('/').next()?;
    valid_name(name).then_some(name)
}

/// The name a repository file is served under: its file name without the
/// extension, or `None` if that is not a valid name.
pub fn name_of(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    valid_name(stem).then(|| stem.to_owned())
}

/// True if `path` is an SQLite database, asked of SQLite itself.
///
/// Never by opening the file ourselves: the file may be one this process
/// already has open through SQLite under another name (a hard link or
/// symlink in the folder, a repository renamed), and closing *any*
/// descriptor of a file drops every POSIX lock the process holds on it —
/// the server's own write lock included, letting another process write
/// beside it. SQLite's own open shares its per-file state (locks, open
/// descriptors) between connections of one process and defers closing,
/// so opening through SQLite is safe. Read-only, and no waiting: a file
/// that is locked right now is looked at again on the next listing.
fn is_sqlite(path: &Path) -> bool {
    use rusqlite::{Connection, OpenFlags};
    // Smaller than one page: not a database (SQLite would take an empty
    // file for an empty database).
    if std::fs::metadata(path).map_or(true, |m| m.len() < 512) {
        return false;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = Connection::open_with_flags(path, flags) else {
        return false;
    };
    let _ = conn.busy_timeout(Duration::ZERO);
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .is_ok()
}

impl Site {
    /// Serves `path`: one repository, or with `repolist` every SQLite file
    /// in the directory `path`.
    pub fn new(path: &Path, repolist: bool) -> Result<Site> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot serve {}", path.display()))?;
        let source = match (meta.is_dir(), repolist) {
            (true, true) => Source::Dir(path.to_owned()),
            (true, false) => bail!(
                "{} is a directory: add --repolist to serve every repository in it",
                path.display()
            ),
            (false, true) => bail!(
                "--repolist needs a directory, and {} is a file",
                path.display()
            ),
            (false, false) => {
                if name_of(path).is_none() {
                    bail!(
                        "cannot serve {}: its file name must be letters, digits, '.', '_' or '-'",
                        path.display()
                    );
                }
                // Open it once now, so a bad file is refused at start-up
                // rather than on the first request.
                Repo::open(path)?;
                Source::One(path.to_owned())
            }
        };
        Site::with_source(source, pool_cap())
    }

    /// Serves a PostgreSQL repository: the schema `url` names, or with
    /// `all` every schema of its database that holds a repository. `text`
    /// is the URL as given, to tell whether it names a schema.
    pub fn postgres(url: PgUrl, text: &str, all: bool) -> Result<Site> {
        let source = if all {
            if backoffice::pg::names_schema(text) {
                bail!(
                    "--repolist serves every repository schema of the database: leave \
                     `schema=` out of {}",
                    url.redacted()
                );
            }
            Source::PgAll(url)
        } else {
            // Connect once now (creating the tables on first use), so an
            // unreachable server or a bad schema is refused at start-up.
            url.connect()?;
            Source::PgOne(url)
        };
        Site::with_source(source, PG_POOL_CAP)
    }

    fn with_source(source: Source, cap: usize) -> Result<Site> {
        let site = Site {
            source,
            names: Mutex::new((Instant::now(), BTreeMap::new())),
            pool: Mutex::new(Pool {
                cap,
                ..Pool::default()
            }),
        };
        let list = site.scan(&BTreeMap::new())?;
        *site.names.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), list);
        Ok(site)
    }

    /// True if the list of repositories can change while serving (a
    /// directory, or a database's schemas), so an unknown name is worth
    /// listing again.
    fn rescans(&self) -> bool {
        matches!(self.source, Source::Dir(_) | Source::PgAll(_))
    }

    /// Lists the repositories; `known` (the last listing) are not opened
    /// again.
    fn scan(&self, known: &BTreeMap<String, Target>) -> Result<BTreeMap<String, Target>> {
        let mut out = BTreeMap::new();
        match &self.source {
            Source::One(p) => {
                if let Some(n) = name_of(p) {
                    out.insert(n, Target::File(p.clone()));
                }
            }
            Source::PgOne(url) => {
                out.insert(url.schema().to_owned(), Target::Pg(Box::new(url.clone())));
            }
            Source::PgAll(url) => {
                for schema in url.schemas()?.into_iter().take(MAX_REPOS) {
                    let target = match known.get(&schema) {
                        Some(t @ Target::Pg(_)) => t.clone(),
                        _ => Target::Pg(Box::new(url.with_schema(&schema)?)),
                    };
                    out.insert(schema, target);
                }
            }
            Source::Dir(d) => {
                let entries =
                    std::fs::read_dir(d).with_context(|| format!("listing {}", d.display()))?;
                // Files already served, by (device, inode): a new name for
                // one of them (an alias) needs no look at all.
                let served: std::collections::HashSet<(u64, u64)> = known
                    .values()
                    .filter_map(|t| match t {
                        Target::File(p) => file_id(p),
                        Target::Pg(_) => None,
                    })
                    .collect();
                for e in entries.flatten() {
                    let p = e.path();
                    // Regular files only (following symlinks is the
                    // operator's choice of what to put in the directory).
                    if !p.is_file() {
                        continue;
                    }
                    let Some(n) = name_of(&p) else { continue };
                    if out.contains_key(&n) {
                        continue;
                    }
                    // A file already served (by this name, or by another:
                    // the same device and inode) is not looked at again;
                    // any other is asked of SQLite (see `is_sqlite`).
                    let known = matches!(known.get(&n), Some(Target::File(q)) if q == &p)
                        || file_id(&p).is_some_and(|id| served.contains(&id));
                    if !known && !is_sqlite(&p) {
                        continue;
                    }
                    out.insert(n, Target::File(p));
                    if out.len() >= MAX_REPOS {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Lists again if the last listing is older than [`RESCAN_EVERY`]. A
    /// listing that fails (the database is down) keeps the last one.
    fn refresh(&self, names: &mut (Instant, BTreeMap<String, Target>)) {
        if names.0.elapsed() < RESCAN_EVERY {
            return;
        }
        match self.scan(&names.1) {
            Ok(list) => *names = (Instant::now(), list),
            Err(e) => {
                tracing::warn!("listing the repositories: {e:#}");
                // Not again at once: a flood of requests must not become a
                // flood of listings of a server that is down.
                names.0 = Instant::now();
            }
        }
    }

    /// Every served repository's name.
    pub fn list(&self) -> Vec<String> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut names);
        names.1.keys().cloned().collect()
    }

    /// Where repository `name` is, if it is served.
    pub fn resolve(&self, name: &str) -> Option<Target> {
        if !valid_name(name) {
            return None;
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = names.1.get(name) {
            return Some(t.clone());
        }
        if self.rescans() {
            self.refresh(&mut names);
            return names.1.get(name).cloned();
        }
        None
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on an open connection to repository `name` (from the pool,
    /// or newly opened), then returns the connection to the pool. `None`:
    /// no such repository.
    pub fn with_repo<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Store) -> R,
    ) -> Option<backoffice::Result<R>> {
        let (mut store, file) = match self.resolve(name)? {
            Target::File(path) => {
                let pooled = self.pool().take(name);
                let now_id = file_id(&path);
                let store = match pooled {
                    Some(Pooled {
                        store: Store::File(r),
                        file,
                        ..
                    }) if r.path() == path && file == now_id => Store::File(r),
                    _ => match Repo::open(&path) {
                        Ok(r) => Store::File(r),
                        Err(e) => return Some(Err(e)),
                    },
                };
                (store, now_id)
            }
            Target::Pg(url) => match self.pg_session(name, &url) {
                Ok(c) => (Store::Pg(Box::new(c)), None),
                Err(e) => return Some(Err(e)),
            },
        };
        let out = f(&mut store);
        // A connection left inside a transaction (a handler that failed
        // half-way), a file gone, or a closed session is not reused.
        let pg = matches!(store, Store::Pg(_));
        if store.reusable() && (pg || file.is_some()) {
            let closed = self.pool().put(name, store, file);
            drop(closed);
        }
        Some(Ok(out))
    }

    /// A session on `url`'s schema: one idle on it, else one idle on
    /// another schema moved over, else a new one. Sessions the server
    /// closed are dropped on the way.
    fn pg_session(&self, name: &str, url: &PgUrl) -> backoffice::Result<PgConn> {
        loop {
            let pooled = {
                let mut pool = self.pool();
                pool.take(name).or_else(|| pool.take_any())
            };
            let Some(p) = pooled else {
                return url.connect();
            };
            let Store::Pg(c) = p.store else { continue };
            if !c.is_usable() {
                continue;
            }
            if c.url().schema() == url.schema() {
                return Ok(*c);
            }
            return (*c).into_schema(url);
        }
    }
}
