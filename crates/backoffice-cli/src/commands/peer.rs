//! `backoffice peer`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use backoffice_tasks::replicate::{self, Peer};

use crate::cli::{PeerAction, PeerArgs};

fn line(p: &Peer) -> String {
    let last = match (p.last_ok, p.last_bytes, p.last_ms) {
        (Some(t), b, ms) => format!(
            "last copy {} UTC, {} bytes in {} ms",
            backoffice::clock::format_utc(t),
            b.unwrap_or(0),
            ms.unwrap_or(0)
        ),
        _ => "no copy yet".to_owned(),
    };
    let failing = if p.failures > 0 {
        format!(
            "; failed {} time(s) in a row: {}",
            p.failures,
            p.last_error.as_deref().unwrap_or("?")
        )
    } else {
        String::new()
    };
    format!("{:>3}  {}  {last}{failing}", p.id, p.target)
}

/// Runs `backoffice peer`.
pub fn run(a: PeerArgs) -> Result<ExitCode> {
    let path = super::repo_path(a.repository, a.repo)?;
    let repo = super::open(&path)?;
    let conn = repo.conn();
    match a.action {
        PeerAction::Add {
            target,
            token,
            token_file,
        } => {
            // The environment's token is for HTTP peers: a file peer takes
            // none, and a variable left set in the shell must not make
            // adding one fail.
            let http = target.starts_with("http://") || target.starts_with("https://");
            let token = super::secret::read(
                "the peer token",
                token,
                token_file.as_deref(),
                http.then_some("BACKOFFICE_PEER_TOKEN"),
            )?;
            repo.writable()?;
            let p = replicate::add(conn, &target, token.as_deref())?;
            println!("added: {}", line(&p));
        }
        PeerAction::List { json } => {
            let all = replicate::list(conn)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no peers (add one with `backoffice peer add /backup/NAME.db`)");
            } else {
                for p in &all {
                    println!("{}", line(p));
                }
            }
        }
        PeerAction::Remove { who } => {
            repo.writable()?;
            let p = replicate::remove(conn, &who)?;
            println!("removed: {} (its replicas are left in place)", p.target);
        }
        PeerAction::Sync { who, force } => {
            repo.writable()?;
            let all = match who {
                Some(w) => {
                    vec![replicate::find(conn, &w)?.with_context(|| format!("no peer {w}"))?]
                }
                None => replicate::list(conn)?,
            };
            let mut failed = 0;
            // On a terminal, how far each copy is, in pages.
            let line = std::sync::Arc::new(std::sync::Mutex::new((
                super::progress::Line::new(),
                String::new(),
            )));
            if super::progress::wanted() {
                let line = std::sync::Arc::clone(&line);
                replicate::set_copy_progress(move |done, total| {
                    if let Ok(mut g) = line.lock() {
                        let (l, label) = &mut *g;
                        let text =
                            format!("{label}: {}", super::progress::count(done, total, "pages"));
                        l.show(&text, false);
                    }
                });
            }
            for p in &all {
                let now = backoffice::clock::now();
                if let Ok(mut g) = line.lock() {
                    g.1 = format!("peer {} {}", p.id, p.target);
                }
                let synced = replicate::sync_peer(conn, repo.path(), p, force, now);
                if let Ok(mut g) = line.lock() {
                    g.0.clear();
                }
                match synced {
                    Ok(Some(s)) => println!(
                        "{}: {} bytes in {} ms{}",
                        p.target,
                        s.bytes,
                        s.ms,
                        if s.restarts > 0 {
                            format!(" ({} restarts by writers)", s.restarts)
                        } else {
                            String::new()
                        }
                    ),
                    Ok(None) => println!(
                        "{}: unchanged since its last copy (--force copies anyway)",
                        p.target
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("backoffice: peer {} {}: {e}", p.id, p.target);
                    }
                }
            }
            if failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
