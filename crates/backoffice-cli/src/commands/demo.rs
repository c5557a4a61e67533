//! `backoffice demo`: a repository with subscribers and events, email into a
//! folder, and `serve` on 127.0.0.1 — the README's first command.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use backoffice::{Backoffice, Repo, Tasks, repo::config_set, token};
use backoffice_tasks::notify::subscribers;

use crate::cli::DemoArgs;
use crate::web::{Limits, Site};

/// The demo's subscribers: (address, name, kinds, digest).
const SUBSCRIBERS: &[(&str, &str, &str, bool)] = &[
    ("alice@example.org", "Alice", "*", false),
    ("bob@example.org", "Bob", "checkin,ticket", false),
    ("carol@example.org", "Carol", "*", true),
];

/// The demo's first events: (kind, title, author).
const EVENTS: &[(&str, &str, &str)] = &[
    ("checkin", "Make the lease survive PID reuse", "alice"),
    ("wiki", "New page: How the backoffice works", "carol"),
    ("ticket", "Digest arrives twice after a clock change", "bob"),
];

/// Runs `backoffice demo`.
pub fn run(a: DemoArgs, tasks: Tasks) -> Result<ExitCode> {
    let dir = a.dir;
    let db = dir.join("demo.db");
    if a.fresh {
        for f in [
            "demo.db",
            "demo.db-wal",
            "demo.db-shm",
            "backoffice.log",
            "token",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir_all(dir.join("mail"));
    }
    std::fs::create_dir_all(dir.join("mail"))
        .with_context(|| format!("cannot make the demo folder {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let db_abs = dir.join("demo.db");
    let mail = dir.join("mail");
    let log = dir.join("backoffice.log");
    let listener = super::serve::bind(&a.listen)?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let fresh = !db.exists();
    if fresh {
        // WAL, as a web application's database should be: readers never
        // wait for the worker.
        rusqlite::Connection::open(&db_abs)
            .and_then(|c| c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())))
            .with_context(|| format!("cannot create {}", db_abs.display()))?;
    }
    let repo = Repo::open(&db_abs)?;
    let conn = repo.conn();
    // The server's address can change between runs (--listen), and with it
    // the links in the mail.
    for (k, v) in [
        ("project-name", "backoffice demo".to_owned()),
        ("email-send-method", "dir".to_owned()),
        ("email-send-dir", mail.display().to_string()),
        ("email-self", "backoffice@example.org".to_owned()),
        ("email-subname", "[demo]".to_owned()),
        ("email-url", format!("{base}/r/demo")),
        ("backoffice-logfile", log.display().to_string()),
        // Short, so a second event within a minute is not kept waiting
        // behind the lease (the default is 60 s).
        ("backoffice-lease-time", "3".to_owned()),
        // Anyone who opens the page sees the redacted summary; the token
        // (in DIR/token) signs in for the details and the actions.
        ("web-public-summary", "on".to_owned()),
    ] {
        config_set(conn, k, &v).with_context(|| format!("setting {k}"))?;
    }
    if fresh {
        // Self-service sign-up is off by default; the demo shows it.
        config_set(conn, "email-signup", "on").context("setting email-signup")?;
        for (address, name, kinds, digest) in SUBSCRIBERS {
            subscribers::add(
                conn,
                &subscribers::New {
                    address: (*address).into(),
                    name: Some((*name).into()),
                    kinds: (*kinds).into(),
                    digest: *digest,
                    verified: true,
                },
            )?;
        }
        for (kind, title, author) in EVENTS {
            backoffice::events::publish(
                conn,
                &backoffice::events::Event {
                    kind: (*kind).into(),
                    title: (*title).into(),
                    body: format!("This is a demo {kind} event."),
                    author: Some((*author).into()),
                    ..backoffice::events::Event::default()
                },
            )?;
        }
    }
    let token_file = dir.join("token");
    let valid = match std::fs::read_to_string(&token_file) {
        Ok(t) => token::verify(conn, t.trim())? == token::Verdict::Valid,
        Err(_) => false,
    };
    if !valid {
        write_private(&token_file, &token::create(conn)?)?;
    }
    // Send what is waiting now, as the first request would.
    Backoffice::new(tasks.clone()).after_request(conn);
    drop(repo);

    let tok = shell_word(&token_file);
    let text = [
        format!(
            "backoffice demo in {} ({})",
            dir.display(),
            if fresh {
                "new"
            } else {
                "existing; --fresh starts over"
            }
        ),
        String::new(),
        format!("  status page  {base}/r/demo"),
        format!("  sign in      {base}/r/demo/login (the token below: details and actions)"),
        format!("  JSON         {base}/r/demo/status.json"),
        format!("  metrics      {base}/metrics"),
        format!("  sign up      {base}/r/demo/subscribe"),
        format!(
            "  email        {} (one .eml file per message)",
            mail.display()
        ),
        format!("  run log      {}", log.display()),
        String::new(),
        "Publish an event; its alerts appear in the mail folder within a second:".to_owned(),
        String::new(),
        format!("  curl -H \"Authorization: Bearer $(cat {tok})\" \\"),
        format!(
            "       -d '{{\"kind\":\"checkin\",\"title\":\"Hello from curl\"}}' {base}/r/demo/events"
        ),
        String::new(),
        format!(
            "The API token is in {tok}: paste it into {base}/r/demo/login to sign in. Ctrl-C stops the server."
        ),
    ];
    let _ = writeln!(std::io::stdout(), "{}", text.join("\n"));
    let site = Site::new(&db_abs, false)?;
    super::serve::serve_site(
        site,
        tasks,
        listener,
        super::serve::ServeOptions {
            limits: Limits::default(),
            trigger: true,
            stop_after: a.exit_after.map(Duration::from_secs),
            replicas: None,
            access_log: None,
        },
        |_, _| {},
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

/// A path as one shell word, for a command line the user copies.
fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
