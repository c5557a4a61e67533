//! `backoffice token`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::token;

use crate::cli::TokenArgs;

/// Runs `backoffice token`.
pub fn run(a: TokenArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    // A PostgreSQL schema, or an SQLite file (kept open while in use).
    let pg = super::pg::url(&path)?.map(|u| u.connect()).transpose()?;
    let file;
    let conn = match &pg {
        Some(c) => backoffice::Db::Postgres(c),
        None => {
            file = super::open(&path)?;
            if !a.check {
                file.writable()?;
            }
            backoffice::Db::Sqlite(file.conn())
        }
    };
    let shown = backoffice::db::redact_url(&path.to_string_lossy());
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
        shown
    );
    Ok(ExitCode::SUCCESS)
}
