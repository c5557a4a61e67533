//! `backoffice serve`: the long-running front end.
//!
//! An accept loop of our own around hyper's HTTP/1 connection, rather than
//! `axum::serve`, because the limits that keep a slow client from holding
//! the server are connection settings: the header timeout (which also
//! bounds how long a keep-alive connection may sit idle), the largest
//! request head, a cap on connections, and a lifetime for each one. The
//! body limits are in the router, so CGI has them too.
//!
//! # Sharing the connections
//!
//! A connection slot is held from accept to close, so idle connections
//! could take them all: 1,100 idle connections from one client once kept
//! every other client waiting for the header timeout. Two rules prevent
//! it. Each client address may hold at most `max_per_client` connections;
//! more are answered 503 and closed at once, never queued. And when the
//! server is near its cap (7/8 of the slots taken), it sheds idle
//! connections — keep-alive connections between requests are shut down
//! gracefully, connections that have not sent a request yet are closed —
//! and gives the connections it accepts meanwhile a short header timeout,
//! so a newcomer from another address is served at once instead of after
//! the header timeout.
//!
//! # Memory
//!
//! After a burst of load the server gives memory back: `serve` grew from 9
//! to 165–188 MB resident once and stayed there. What held it: glibc's
//! malloc keeps one arena per thread that ever allocated (up to 8 per
//! core), and freed memory stays in them; and an idle SQLite connection to
//! every repository ever read. So the arenas are capped at two
//! (`M_ARENA_MAX`), freed memory is handed back to the system every 10 s
//! (`malloc_trim`), and the idle connections are bounded in number across
//! all repositories (see `site.rs`). Measured with `bench/serve_memory.sh`.
//!
//! After each successful reply for a repository, a blocking task runs the
//! after-request check (after a read-only request, at most once a second
//! per repository: [`super::READ_CHECK_EVERY`]). The check is spawned once
//! the handler has produced the reply, so the reply never waits for it;
//! workers it starts are reaped by the engine's reaper threads, so the
//! server leaves no zombies.
//!
//! # Logs
//!
//! Start-up (the address, the repositories) and shutdown (why, and what
//! was still open) are always written to stderr — the journal under
//! systemd — because an operator reading a log must see where one run of
//! the server ends and the next begins. With `--access-log`, each request
//! adds a line (see [`AccessLog`]) to stderr or a file, and the start-up
//! and shutdown lines go to that file too.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

use super::app::App;
use super::clients::ClientIp;
use super::router;
use super::site::repo_in_path;

/// Runs the after-request check once a successful reply for a repository
/// has been produced.
async fn after_reply(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let name = repo_in_path(req.uri().path()).map(str::to_owned);
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let resp = next.run(req).await;
    if let (true, Some(name)) = (resp.status().is_success(), name) {
        if app.wants_check(&name, read_only) {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.after_request(&name));
        }
    }
    resp
}

/// Connections open per client address.
#[derive(Default)]
struct PerClient(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its client's share; uncounted on drop.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// Counts a connection from `ip`, unless it already has `max`.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The reply to a client over its share of connections, written without
/// waiting (the socket's buffer is empty) before the connection is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Bounds glibc malloc's arenas: by default it keeps up to 8 per core, one
/// per thread that allocated while others held theirs, and memory freed in
/// them is rarely returned. Two is plenty for a server whose work is
/// SQLite queries and small replies.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_allocator() {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_ARENA_MAX: std::ffi::c_int = -8;
    // SAFETY: glibc's mallopt takes two ints and may be called at any
    // time; this runs before the runtime's threads start.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator() {}

/// Hands memory that is free in malloc's arenas back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_allocator() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim takes a size and is thread-safe.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() {}

/// Serves `app` on `listener` until SIGINT or SIGTERM, then lets requests in
/// flight finish (for a few seconds at most). `ready` is called with the
/// bound address once the server accepts connections. Start-up and
/// shutdown are logged on stderr (and in `access_log`, which also gets a
/// line per request, when given).
pub fn serve(
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop_after: Option<std::time::Duration>,
    access_log: Option<AccessLog>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    bound_allocator();
    // Listed here, off the runtime: on PostgreSQL this asks the database.
    let names = app.site.list();
    let log = Arc::new(Logs {
        access: access_log,
        names,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("backoffice-web")
        .build()
        .context("starting the async runtime")?;
    // The app is dropped last, outside the runtime: the pool's PostgreSQL
    // sessions close with a blocking call, which panics inside it.
    let keep = app.clone();
    let out = rt.block_on(run(app, listener, stop_after, log, ready));
    drop(rt);
    drop(keep);
    out
}

async fn run(
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop_after: Option<std::time::Duration>,
    log: Arc<Logs>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let limits = app.limits;
    let mut svc =
        router::router(app.clone()).layer(middleware::from_fn_with_state(app.clone(), after_reply));
    if log.access.is_some() {
        // Outermost, so the time covers every layer and every reply,
        // refusals included.
        svc = svc.layer(middleware::from_fn_with_state(log.clone(), access));
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(PerClient::default());
    // Wakes every connection to shed itself if it is idle.
    let shed = Arc::new(Notify::new());
    // Near the cap: 7/8 of the slots taken (at least one slot short of it).
    let near = limits
        .max_connections
        .saturating_sub((limits.max_connections / 8).max(1));
    let mut last_refusal_log: Option<std::time::Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown_signal(stop_after));
    // Set by the one way out of the accept loop.
    let why;
    // Memory freed after a burst goes back to the system within 10 s.
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(trim_allocator).await;
        }
    });
    log.started(addr);
    ready(addr);
    loop {
        // Accept first: a client over its share is refused at once rather
        // than queued behind everyone's slots.
        let (mut stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: say so, pause, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            w = &mut shutdown => {
                why = w;
                break;
            }
        };
        let Some(client) = clients.take(peer.ip(), limits.max_per_client) else {
            // Logged at most once a second: the refusals themselves can be
            // a flood.
            if last_refusal_log.is_none_or(|t| t.elapsed().as_secs() >= 1) {
                tracing::warn!(
                    "refused a connection: {} connections from {} already (--max-connections-per-client)",
                    limits.max_per_client,
                    peer.ip()
                );
                last_refusal_log = Some(std::time::Instant::now());
            }
            let _ = stream.try_write(TOO_MANY);
            let _ = stream.shutdown().await;
            continue;
        };
        let in_use = limits.max_connections - slots.available_permits();
        let busy = in_use >= near;
        if busy {
            shed.notify_waiters();
        }
        // A slot; at the cap, wait for one (the idle were just told to go).
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => tokio::select! {
                s = slots.clone().acquire_owned() => s?,
                w = &mut shutdown => {
                    why = w;
                    break;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let seen_request = Arc::new(AtomicBool::new(false));
        let seen = seen_request.clone();
        let ip = ClientIp(Some(peer.ip()));
        let svc = TowerToHyperService::new(svc.clone().map_request(move |mut r: Request<_>| {
            seen.store(true, Ordering::Relaxed);
            // Who sent it: for the limits counted per client, and the access log.
            r.extensions_mut().insert(ip);
            r
        }));
        let shed = shed.clone();
        let header_timeout = if busy {
            limits.header_timeout.min(limits.busy_header_timeout)
        } else {
            limits.header_timeout
        };
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(limits.max_header.max(8192))
                .max_headers(100);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let lifetime = tokio::time::sleep(limits.connection_lifetime);
            let mut lifetime = std::pin::pin!(lifetime);
            let mut shedding = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection: {e}");
                        }
                        break;
                    }
                    _ = &mut lifetime => {
                        tracing::debug!(%peer, "connection closed at its lifetime limit");
                        break;
                    }
                    _ = shed.notified(), if !shedding => {
                        if !seen_request.load(Ordering::Relaxed) {
                            if busy {
                                // Accepted near the cap, so its header
                                // timeout is already short; closing it
                                // could cut off a newcomer about to send.
                                continue;
                            }
                            // Not one request yet: an idle or slow client
                            // holding a slot. Closed.
                            tracing::debug!(%peer, "connection shed: no request yet");
                            break;
                        }
                        // Between requests this closes it now; in a
                        // request, once its reply is sent.
                        conn.as_mut().graceful_shutdown();
                        shedding = true;
                    }
                }
            }
            drop(slot);
            drop(client);
        });
    }
    let open = limits.max_connections - slots.available_permits();
    log.line(&format!(
        "stopping on {why}: {open} connection{} open",
        if open == 1 { "" } else { "s" }
    ));
    // Let requests in flight finish: every slot back, or 5 seconds.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), slots.acquire_many(all)).await;
    let left = limits.max_connections - slots.available_permits();
    if left == 0 {
        log.line("stopped");
    } else {
        log.line(&format!(
            "stopped: {left} connection{} still open after 5 s closed",
            if left == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

/// What ended the server, for its last log lines.
async fn shutdown_signal(stop_after: Option<std::time::Duration>) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let timer = async {
        match stop_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling: serve until killed (or the timer).
        timer.await;
        return "--exit-after";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = timer => "--exit-after",
    }
}

/// The access log of `serve --access-log`: one line per request,
///
/// ```text
/// 2026-12-02 09:14:03 127.0.0.1 POST /r/app/events 201 3.1ms
/// ```
///
/// UTC time, client address, method, path, status, and milliseconds from
/// the request's head being read to its reply's head being ready (every
/// reply here is built whole, so that is the work). The path is logged
/// without its query string: queries can carry addresses
/// (`?address=WHO`) and codes. hyper has already refused a request line
/// with spaces or control characters, so a path cannot forge a line.
/// Requests refused before they reach the router — heads too large, header
/// timeouts, a client over its share of connections (a warning instead) —
/// have no line.
pub enum AccessLog {
    /// stderr (`--access-log -`): the journal under systemd.
    Stderr,
    /// A file, opened for appending (so `logrotate`'s `copytruncate`
    /// works, and lines from one `write` are never interleaved).
    File(std::sync::Mutex<std::fs::File>),
}

impl AccessLog {
    /// The log at `dest`: `-` for stderr, else a file, created if missing
    /// and appended to.
    pub fn open(dest: &Path) -> Result<AccessLog> {
        if dest.as_os_str() == "-" {
            return Ok(AccessLog::Stderr);
        }
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dest)
            .with_context(|| format!("cannot open the access log {}", dest.display()))?;
        Ok(AccessLog::File(std::sync::Mutex::new(f)))
    }

    /// Appends one line, in one write. A failed write (a full disk) never
    /// fails a request.
    fn write(&self, line: &str) {
        let line = format!("{line}\n");
        let _ = match self {
            AccessLog::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            AccessLog::File(f) => f
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(line.as_bytes()),
        };
    }
}

/// Where the server's own lines go.
struct Logs {
    access: Option<AccessLog>,
    /// The repositories served at start-up.
    names: Vec<String>,
}

impl Logs {
    /// A start-up or shutdown line: on stderr, and in an access-log file.
    fn line(&self, what: &str) {
        let line = format!(
            "{} backoffice serve: {what}",
            backoffice::clock::format_utc(backoffice::clock::now())
        );
        AccessLog::Stderr.write(&line);
        if let Some(log @ AccessLog::File(_)) = &self.access {
            log.write(&line);
        }
    }

    fn started(&self, addr: SocketAddr) {
        let n = self.names.len();
        let mut names = self
            .names
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if n > 10 {
            names.push_str(&format!(", ... and {} more", n - 10));
        }
        self.line(&format!(
            "started, pid {}, on http://{addr}/, {n} repositor{}{}{names}",
            std::process::id(),
            if n == 1 { "y" } else { "ies" },
            if n == 0 { "" } else { ": " },
        ));
    }
}

/// Writes the access-log line of each request.
async fn access(State(log): State<Arc<Logs>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let client = req.extensions().get::<ClientIp>().and_then(|c| c.0);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    if let Some(out) = &log.access {
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let client = client.map_or_else(|| "-".to_owned(), |c| c.to_string());
        out.write(&format!(
            "{} {client} {method} {path} {} {ms:.1}ms",
            backoffice::clock::format_utc(backoffice::clock::now()),
            resp.status().as_u16()
        ));
    }
    resp
}
