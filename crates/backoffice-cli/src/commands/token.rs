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
    if a.metrics {
        return metrics(conn, a.check, a.revoke, &shown);
    }
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

/// `backoffice token --metrics`: the read-only token for `/metrics`.
fn metrics(conn: backoffice::Db<'_>, check: bool, revoke: bool, shown: &str) -> Result<ExitCode> {
    let row = token::METRICS_TOKEN_ROW;
    if check {
        println!(
            "{}",
            if token::is_set_in(conn, row)? {
                "a metrics token is set"
            } else {
                "no metrics token is set"
            }
        );
    } else if revoke {
        if token::revoke_in(conn, row)? {
            println!("revoked the metrics token");
        } else {
            println!("there was no metrics token");
        }
    } else {
        println!("{}", token::create_in(conn, row)?);
        eprintln!(
            "backoffice: new read-only metrics token for {shown} (shown once). It opens /metrics \
             for this repository only: Authorization: Bearer TOKEN"
        );
    }
    Ok(ExitCode::SUCCESS)
}
