//! `backoffice serve`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use backoffice::{Backoffice, Tasks};

use crate::cli::{ServeArgs, WebLimitArgs};
use crate::web::{self, App, Limits, ReplicaSink, Site};

/// The limits from the command line.
pub(crate) fn limits(a: &WebLimitArgs) -> Limits {
    Limits {
        max_body: a.max_body,
        body_timeout: Duration::from_secs(a.body_timeout.max(1)),
        ..Limits::default()
    }
}

/// Binds `listen`, with an error that says what to do.
pub(crate) fn bind(listen: &str) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(listen).with_context(|| {
        format!("cannot listen on {listen}; choose another address with --listen (port 0 picks a free one)")
    })
}

/// How a site is served.
pub(crate) struct ServeOptions {
    /// Request limits.
    pub limits: Limits,
    /// Run the after-request check.
    pub trigger: bool,
    /// Stop after this long.
    pub stop_after: Option<Duration>,
    /// Take copies pushed by peers.
    pub replicas: Option<ReplicaSink>,
    /// A line per request here (`--access-log`).
    pub access_log: Option<web::serve::AccessLog>,
}

/// Serves `site` on `listener` and prints where.
pub(crate) fn serve_site(
    site: Site,
    tasks: Tasks,
    listener: std::net::TcpListener,
    opts: ServeOptions,
    banner: impl FnOnce(std::net::SocketAddr, &[String]),
) -> Result<()> {
    let names: Vec<String> = site.list();
    let mut app = App::new(site, Backoffice::new(tasks), opts.limits, opts.trigger);
    if let Some(r) = opts.replicas {
        app = app.with_replicas(r);
    }
    let app = Arc::new(app);
    web::serve::serve(app, listener, opts.stop_after, opts.access_log, |addr| {
        banner(addr, &names);
        let _ = std::io::stdout().flush();
    })
}

/// The site at `path`: an SQLite file or a directory of them, or a
/// PostgreSQL URL (one schema, or with `repolist` every repository schema
/// of its database).
pub(crate) fn site(path: &std::path::Path, repolist: bool) -> Result<Site> {
    match super::pg::url(path)? {
        Some(url) => {
            let text = path.to_str().unwrap_or_default();
            Site::postgres(url, text, repolist)
        }
        None => Site::new(path, repolist),
    }
}

/// Runs `backoffice serve`.
pub fn run(a: ServeArgs, tasks: Tasks) -> Result<ExitCode> {
    // Before the site: its pool's bound follows the limit.
    web::site::raise_descriptor_limit();
    let site = site(&a.path, a.repolist)?;
    // Before listening: a log that cannot be opened stops the server
    // before any client can reach it.
    let access_log = match &a.access_log {
        Some(dest) => Some(web::serve::AccessLog::open(dest)?),
        None => None,
    };
    let listener = bind(&a.listen)?;
    let mut limits = limits(&a.limits);
    limits.header_timeout = Duration::from_secs(a.header_timeout.max(1));
    limits.max_connections = a.max_connections.max(1);
    limits.max_per_client = a
        .max_connections_per_client
        .unwrap_or(limits.max_connections / 4)
        .max(1);
    let replicas = match (a.replica_dir, a.replica_token_file) {
        (Some(dir), Some(file)) => {
            if !dir.is_dir() {
                anyhow::bail!("--replica-dir {} is not a folder", dir.display());
            }
            let token = std::fs::read_to_string(&file)
                .with_context(|| format!("reading --replica-token-file {}", file.display()))?
                .trim()
                .to_owned();
            if token.len() < 16 {
                anyhow::bail!(
                    "the replica token in {} is shorter than 16 characters",
                    file.display()
                );
            }
            Some(ReplicaSink {
                dir,
                token,
                keep: a.replica_keep.clamp(1, 100),
                max_bytes: a.max_replica_bytes,
            })
        }
        _ => None,
    };
    let opts = ServeOptions {
        limits,
        trigger: !a.no_trigger,
        stop_after: a.exit_after.map(Duration::from_secs),
        replicas,
        access_log,
    };
    serve_site(site, tasks, listener, opts, |addr, names| {
        // Not println!: a closed stdout (a supervisor that read the
        // first line and went away) must not take the server down.
        let mut out = std::io::stdout().lock();
        let plural = if names.len() == 1 { "y" } else { "ies" };
        let _ = writeln!(
            out,
            "backoffice: serving {} repositor{plural} on http://{addr}/",
            names.len()
        );
        for n in names.iter().take(10) {
            let _ = writeln!(out, "  http://{addr}/r/{n}");
        }
        if names.len() > 10 {
            let _ = writeln!(out, "  ... and {} more", names.len() - 10);
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
