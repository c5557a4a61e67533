//! `backoffice cgi`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use backoffice::{Backoffice, Started, Tasks};

use crate::cli::CgiArgs;
use crate::web::{App, cgi};

/// Runs `backoffice cgi`: one request, then perhaps a worker, then exit.
pub fn run(a: CgiArgs, tasks: Tasks) -> Result<ExitCode> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let site =
        match &a.repolist {
            Some(dir) => super::serve::site(dir, true)?,
            None => {
                let repo = env.get("BACKOFFICE_REPO").filter(|r| !r.is_empty()).context(
                "no repository: set BACKOFFICE_REPO to a repository file or a postgres:// URL, \
                 or pass --repolist DIR",
            )?;
                super::serve::site(std::path::Path::new(repo), false)?
            }
        };
    let req = cgi::CgiRequest::from_env(&env)?;
    // This process exits right after; init reaps the worker.
    let bo = Backoffice::new(tasks).reap_children(false);
    let app = Arc::new(App::new(site, bo, super::serve::limits(&a.limits), true).short_lived());
    let touched = cgi::respond(
        app.clone(),
        &req,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    )?;
    cgi::close_stdio();
    if let Some(name) = touched {
        if let Some(Started::Failed(e)) = app.after_request(&name) {
            // stderr is the web server's error log.
            eprintln!("backoffice: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
