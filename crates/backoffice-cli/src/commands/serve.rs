//! `backoffice serve`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use backoffice::{Backoffice, Tasks};

use crate::cli::{ServeArgs, WebLimitArgs};
use crate::web::{self, App, Limits, Site};

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

/// Serves `site` on `listener` and prints where.
pub(crate) fn serve_site(
    site: Site,
    tasks: Tasks,
    listener: std::net::TcpListener,
    limits: Limits,
    trigger: bool,
    stop_after: Option<Duration>,
    banner: impl FnOnce(std::net::SocketAddr, &[String]),
) -> Result<()> {
    let names: Vec<String> = site.list().into_iter().map(|(n, _)| n).collect();
    let app = Arc::new(App::new(site, Backoffice::new(tasks), limits, trigger));
    web::serve::serve(app, listener, stop_after, |addr| {
        banner(addr, &names);
        let _ = std::io::stdout().flush();
    })
}

/// Runs `backoffice serve`.
pub fn run(a: ServeArgs, tasks: Tasks) -> Result<ExitCode> {
    let site = Site::new(&a.path, a.repolist)?;
    let listener = bind(&a.listen)?;
    let mut limits = limits(&a.limits);
    limits.header_timeout = Duration::from_secs(a.header_timeout.max(1));
    limits.max_connections = a.max_connections.max(1);
    serve_site(
        site,
        tasks,
        listener,
        limits,
        !a.no_trigger,
        a.exit_after.map(Duration::from_secs),
        |addr, names| {
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
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
