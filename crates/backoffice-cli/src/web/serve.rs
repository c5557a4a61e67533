//! `backoffice serve`: the long-running front end.
//!
//! An accept loop of our own around hyper's HTTP/1 connection, rather than
//! `axum::serve`, because the limits that keep a slow client from holding
//! the server are connection settings: the header timeout (which also
//! bounds how long a keep-alive connection may sit idle), the largest
//! request head, a cap on connections, and a lifetime for each one. The
//! body limits are in the router, so CGI has them too.
//!
//! After each successful reply for a repository, a blocking task runs the
//! after-request check (after a read-only request, at most once a second
//! per repository: [`super::READ_CHECK_EVERY`]). The check is spawned once
//! the handler has produced the reply, so the reply never waits for it;
//! workers it starts are reaped by the engine's reaper threads, so the
//! server leaves no zombies.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use super::{App, repo_in_path, router};

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

/// Serves `app` on `listener` until SIGINT or SIGTERM, then lets requests in
/// flight finish (for a few seconds at most). `ready` is called with the
/// bound address once the server accepts connections.
pub fn serve(
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop_after: Option<std::time::Duration>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("backoffice-web")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(app, listener, stop_after, ready))
}

async fn run(
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop_after: Option<std::time::Duration>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let limits = app.limits;
    let svc =
        router::router(app.clone()).layer(middleware::from_fn_with_state(app.clone(), after_reply));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown_signal(stop_after));
    ready(addr);
    loop {
        // A connection slot first, so past the cap new clients wait in the
        // kernel's backlog rather than in our memory.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s?,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: say so, pause, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header.max(8192))
                .max_headers(100);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(limits.connection_lifetime, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "connection: {e}"),
                Err(_) => tracing::debug!(%peer, "connection closed at its lifetime limit"),
            }
            drop(slot);
        });
    }
    // Let requests in flight finish: every slot back, or 5 seconds.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), slots.acquire_many(all)).await;
    Ok(())
}

async fn shutdown_signal(stop_after: Option<std::time::Duration>) {
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
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = timer => {}
    }
    tracing::info!("shutting down");
}
