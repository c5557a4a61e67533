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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backoffice::Repo;

/// Idle connections kept per repository; more are opened under load and
/// closed when returned to a full pool.
const POOL_IDLE: usize = 4;

/// A directory is listed again at most this often when a name is not found,
/// so a new repository appears without a restart, and a flood of requests
/// for unknown names cannot turn into a flood of directory scans.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// At most this many repositories are served from one directory.
pub const MAX_REPOS: usize = 100_000;

/// Where the repositories come from.
#[derive(Debug)]
enum Source {
    /// One repository file.
    One(PathBuf),
    /// Every SQLite file directly inside a directory (`--repolist`).
    Dir(PathBuf),
}

/// The served repositories.
#[derive(Debug)]
pub struct Site {
    source: Source,
    names: Mutex<(Instant, BTreeMap<String, PathBuf>)>,
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
/// connection rather than one to the unlinked old file.
#[derive(Debug)]
struct Pooled {
    repo: Repo,
    file: (u64, u64),
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

    /// Keeps `repo` idle for `name`; returns the connections to close (the
    /// least recently used beyond the caps), to be dropped outside the lock.
    fn put(&mut self, name: &str, repo: Repo, file: (u64, u64)) -> Vec<Pooled> {
        let mut out = Vec::new();
        let list = self.idle.entry(name.to_owned()).or_default();
        if list.len() >= POOL_IDLE {
            let old = list.remove(0);
            self.order.remove(&old.tick);
            out.push(old);
        }
        self.tick += 1;
        list.push(Pooled {
            repo,
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
        let site = Site {
            source,
            names: Mutex::new((Instant::now(), BTreeMap::new())),
            pool: Mutex::new(Pool {
                cap: pool_cap(),
                ..Pool::default()
            }),
        };
        let list = site.scan(&BTreeMap::new())?;
        *site.names.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), list);
        Ok(site)
    }

    /// Lists the repositories; `known` (the last listing) are not opened
    /// again.
    fn scan(&self, known: &BTreeMap<String, PathBuf>) -> Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        match &self.source {
            Source::One(p) => {
                if let Some(n) = name_of(p) {
                    out.insert(n, p.clone());
                }
            }
            Source::Dir(d) => {
                let entries =
                    std::fs::read_dir(d).with_context(|| format!("listing {}", d.display()))?;
                // Files already served, by (device, inode): a new name for
                // one of them (an alias) needs no look at all.
                let served: std::collections::HashSet<(u64, u64)> =
                    known.values().filter_map(|p| file_id(p)).collect();
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
                    let known = known.get(&n).is_some_and(|q| q == &p)
                        || file_id(&p).is_some_and(|id| served.contains(&id));
                    if !known && !is_sqlite(&p) {
                        continue;
                    }
                    out.insert(n, p);
                    if out.len() >= MAX_REPOS {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every served repository, by name.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.0.elapsed() >= RESCAN_EVERY {
            if let Ok(list) = self.scan(&names.1) {
                *names = (Instant::now(), list);
            }
        }
        names
            .1
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// The repository file for `name`, if it is served.
    pub fn resolve(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = names.1.get(name) {
            return Some(p.clone());
        }
        if matches!(self.source, Source::Dir(_)) && names.0.elapsed() >= RESCAN_EVERY {
            if let Ok(list) = self.scan(&names.1) {
                *names = (Instant::now(), list);
            }
            return names.1.get(name).cloned();
        }
        None
    }

    /// Runs `f` on an open connection to repository `name` (from the pool,
    /// or newly opened), then returns the connection to the pool. `None`:
    /// no such repository.
    pub fn with_repo<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Repo) -> R,
    ) -> Option<backoffice::Result<R>> {
        let path = self.resolve(name)?;
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(name);
        let now_id = file_id(&path);
        let mut repo = match pooled {
            Some(p) if p.repo.path() == path && Some(p.file) == now_id => p.repo,
            _ => match Repo::open(&path) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            },
        };
        let out = f(&mut repo);
        // A connection left inside a transaction (a handler that failed
        // half-way) is not reused.
        if let (true, Some(file)) = (repo.conn().is_autocommit(), now_id) {
            let closed = self
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(name, repo, file);
            drop(closed);
        }
        Some(Ok(out))
    }
}
