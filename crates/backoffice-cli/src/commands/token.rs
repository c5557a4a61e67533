//! `backoffice token`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::token;

use crate::cli::TokenArgs;

/// Runs `backoffice token`.
pub fn run(a: TokenArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    let repo = super::open(&path)?;
    let conn = repo.conn();
    if a.check {
        let set = token::is_set(conn)?;
        println!(
            "{}",
            if set {
                "an API token is set"
            } else {
                "no API token is set: the API refuses every request"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    repo.writable()?;
    if a.revoke {
        if token::revoke(conn)? {
            println!("revoked: the API refuses every request until a new token is made");
        } else {
            println!("there was no token");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let t = token::create(conn)?;
    // The one time the token is shown; only its hash is kept.
    println!("{t}");
    eprintln!(
        "backoffice: new API token for {} (shown once; any previous token no longer works).\n\
         Send it as: Authorization: Bearer TOKEN",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
