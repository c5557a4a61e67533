//! The outbox's promises at its edges, through the real binary: a message
//! is `sent` only once its destination holds it; identities (Message-ID,
//! `dir` file names) never repeat, across purges and copies of a
//! repository; an operator's retry made during a run is not undone by it;
//! relative paths in settings mean the repository's folder.

use std::path::Path;
use std::time::Duration;

use crate::harness::{AppRepo, Cmd, Env, wait_child, wait_until};

/// A repository sending alerts by `method` to one verified subscriber,
/// with its mail folder (`mail/`) and mail database (`mail.db`) in `env`.
fn mail_repo(env: &Env, name: &str, method: &str) -> AppRepo {
    let app = AppRepo::new(env, name);
    for (k, v) in [
        ("email-send-method", method),
        ("email-self", "bo@example.org"),
        ("email-url", "https://example.org/r/app"),
        ("email-subname", "[app]"),
        ("email-send-dir", env.path("mail").to_str().unwrap()),
        ("email-send-db", env.path("mail.db").to_str().unwrap()),
        ("backoffice-lease-time", "1"),
    ] {
        app.bo(&["setting", k, v]);
    }
    app.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    app
}

fn publish(app: &AppRepo, title: &str) {
    app.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        title,
        "--no-trigger",
    ]);
}

fn run(app: &AppRepo, log: Option<&Path>) -> String {
    let mut c = Cmd::backoffice().args(["run", "--nolease"]);
    if let Some(l) = log {
        c = c.arg("--logfile").arg(l);
    }
    c.arg(app.r()).output().stdout()
}

fn sql<T: rusqlite::types::FromSql>(path: &Path, q: &str) -> T {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(q, [], |r| r.get(0))
        .unwrap()
}

/// The `.eml` files of a folder: (file name, content), sorted by name.
fn eml_files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn message_id(msg: &str) -> String {
    msg.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .expect("Message-ID")
        .to_owned()
}

/// Item 1 of issue 10: the mail database is locked by a reader past the
/// busy timeout when the worker commits. Nothing may be marked sent: the
/// messages stay queued with the error, `status` and the run log say so,
/// and they all arrive once the lock is gone.
#[test]
fn db_method_commit_failure_keeps_messages_queued() {
    let env = Env::new();
    let app = mail_repo(&env, "app.db", "db");
    app.bo(&["setting", "email-alert-mode", "each"]);
    for i in 0..3 {
        publish(&app, &format!("Event {i}"));
    }
    // The mail database exists, in rollback-journal mode, and a reader
    // holds it: the worker can insert (RESERVED) but not commit.
    let mail = rusqlite::Connection::open(env.path("mail.db")).unwrap();
    mail.execute_batch(
        "CREATE TABLE email(emailid INTEGER PRIMARY KEY, msg TEXT); BEGIN; SELECT count(*) FROM email;",
    )
    .unwrap();
    let n: i64 = mail
        .query_row("SELECT count(*) FROM email", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    let log = env.path("bo.log");
    run(&app, Some(&log));
    mail.execute_batch("COMMIT").unwrap();
    drop(mail);

    assert_eq!(
        sql::<i64>(&env.path("mail.db"), "SELECT count(*) FROM email"),
        0,
        "nothing reached the mail database"
    );
    assert_eq!(
        sql::<i64>(
            &app.path,
            "SELECT count(*) FROM bo_outbox WHERE state = 'queued' AND last_error LIKE '%email-send-db%'"
        ),
        3,
        "every message still queued, with the error"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("alerts-failed("), "{text}");
    assert!(
        !text.contains("3 alerts"),
        "the log claims they went: {text}"
    );
    let st = app.bo(&["status"]);
    assert!(st.contains("outbox: 3 queued"), "{st}");
    assert!(st.contains("last delivery failure: email-send-db"), "{st}");

    // Time passes, the reader is gone: everything arrives, once.
    rusqlite::Connection::open(&app.path)
        .unwrap()
        .execute("UPDATE bo_outbox SET next_attempt = 0", [])
        .unwrap();
    run(&app, None);
    assert_eq!(
        sql::<i64>(&env.path("mail.db"), "SELECT count(*) FROM email"),
        3
    );
    assert_eq!(
        sql::<i64>(
            &app.path,
            "SELECT count(*) FROM bo_outbox WHERE state = 'sent'"
        ),
        3
    );
}

/// Item 1 of issue 10, the killed-mid-batch window: a worker killed while
/// the mail database's commit waits (a reader holds it) must leave every
/// message it had not committed there queued, so that the next run
/// delivers all of them (before: the first batches were recorded sent while
/// the mail database's one transaction for the run was still open, and
/// died with the worker).
#[test]
fn db_method_worker_killed_before_its_commit_loses_nothing() {
    let env = Env::new();
    let app = mail_repo(&env, "app.db", "db");
    app.bo(&["setting", "email-alert-mode", "each"]);
    let n = 450; // more than two batches of outcomes
    {
        let mut conn = rusqlite::Connection::open(&app.path).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..n {
            backoffice::events::publish(
                &tx,
                &backoffice::events::Event {
                    kind: "wiki".into(),
                    title: format!("Event {i}"),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let mail = rusqlite::Connection::open(env.path("mail.db")).unwrap();
    mail.execute_batch(
        "CREATE TABLE email(emailid INTEGER PRIMARY KEY, msg TEXT); BEGIN; SELECT count(*) FROM email;",
    )
    .unwrap();
    let _: i64 = mail
        .query_row("SELECT count(*) FROM email", [], |r| r.get(0))
        .unwrap();
    let mut worker = Cmd::backoffice()
        .args(["run", "--nolease", app.r()])
        .spawn();
    // The worker is writing into the mail database (its journal exists);
    // give it a moment to get through its inserts, then kill it while its
    // commit waits for the reader.
    assert!(
        wait_until(Duration::from_secs(30), || env
            .path("mail.db-journal")
            .exists()),
        "the worker never wrote to the mail database"
    );
    std::thread::sleep(Duration::from_millis(1500));
    worker.kill().unwrap();
    wait_child(&mut worker, Duration::from_secs(10), "the killed worker");
    mail.execute_batch("COMMIT").unwrap();
    drop(mail);
    // The next run delivers everything.
    rusqlite::Connection::open(&app.path)
        .unwrap()
        .execute(
            "UPDATE bo_outbox SET next_attempt = 0 WHERE state = 'queued'",
            [],
        )
        .unwrap();
    run(&app, None);
    let in_db: i64 = sql(&env.path("mail.db"), "SELECT count(*) FROM email");
    let distinct: i64 = sql(
        &env.path("mail.db"),
        "SELECT count(DISTINCT substr(msg, instr(msg, 'Message-ID:'), 60)) FROM email",
    );
    assert_eq!(distinct, n as i64, "{in_db} rows; messages lost");
    assert_eq!(
        sql::<i64>(
            &app.path,
            "SELECT count(*) FROM bo_outbox WHERE state = 'sent'"
        ),
        n as i64
    );
}

/// Item 2 of issue 10: outbox ids restart once the highest rows are purged;
/// a later message must still get a new Message-ID and a new file, and the
/// old file must be left as it was.
#[test]
fn a_purge_never_makes_message_ids_or_files_repeat() {
    let env = Env::new();
    let app = mail_repo(&env, "app.db", "dir");
    publish(&app, "First");
    run(&app, None);
    let first = eml_files(&env.path("mail"));
    assert_eq!(first.len(), 1);
    // Sent long ago, and purged: the table is empty, ids start again.
    rusqlite::Connection::open(&app.path)
        .unwrap()
        .execute("UPDATE bo_outbox SET sent_time = 1000", [])
        .unwrap();
    assert!(app.bo(&["outbox", "purge"]).contains("1 message deleted"));
    publish(&app, "Second");
    run(&app, None);
    let files = eml_files(&env.path("mail"));
    assert_eq!(files.len(), 2, "the first file was overwritten: {files:?}");
    assert!(files.contains(&first[0]), "the first file changed");
    assert_ne!(message_id(&files[0].1), message_id(&files[1].1));
}

/// Item 3 of issue 10 (outbox part): a copy of a repository sending into
/// the same folder gets its own Message-IDs and file names.
#[test]
fn a_copied_repository_has_its_own_identities() {
    let env = Env::new();
    let app = mail_repo(&env, "app.db", "dir");
    publish(&app, "Before the copy");
    run(&app, None);
    std::fs::copy(&app.path, env.path("other.db")).unwrap();
    let other = AppRepo {
        path: env.path("other.db"),
    };
    publish(&app, "In the original");
    publish(&other, "In the copy");
    run(&app, None);
    run(&other, None);
    let files = eml_files(&env.path("mail"));
    assert_eq!(
        files.len(),
        3,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let ids: std::collections::BTreeSet<String> =
        files.iter().map(|(_, m)| message_id(m)).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(files.iter().any(|(_, m)| m.contains("In the original")));
    assert!(files.iter().any(|(_, m)| m.contains("In the copy")));
}

/// Item 21 of issue 10 (outbox part): `outbox retry` while a run is sending
/// the same message. The run's failure, recorded after the retry, must not
/// make the message dead again.
#[test]
fn an_operator_retry_during_a_run_is_not_undone() {
    let env = Env::new();
    let app = mail_repo(&env, "app.db", "pipe");
    let started = env.path("started");
    let go = env.path("go");
    // Fails after the test says so; bounded (10 s) in case the test dies.
    let cmd = format!(
        "cat >/dev/null; touch '{}'; i=0; while [ ! -e '{}' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo relay is down >&2; exit 75",
        started.display(),
        go.display()
    );
    app.bo(&["setting", "email-send-command", &cmd]);
    app.bo(&["setting", "email-max-attempts", "1"]);
    publish(&app, "Hold on");
    let mut worker = Cmd::backoffice()
        .args(["run", "--nolease", app.r()])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(20), || started.exists()),
        "the send never started"
    );
    let id: i64 = sql(&app.path, "SELECT msgid FROM bo_outbox");
    // The operator's retry, in its own process, while the send is under way.
    let out = app.bo(&["outbox", "retry", &id.to_string()]);
    assert!(out.contains("1 message queued again"), "{out}");
    std::fs::write(&go, "").unwrap();
    wait_child(&mut worker, Duration::from_secs(30), "the worker");
    assert_eq!(
        sql::<String>(&app.path, "SELECT state FROM bo_outbox"),
        "queued",
        "the run's stale outcome undid the retry"
    );
    assert_eq!(sql::<i64>(&app.path, "SELECT attempts FROM bo_outbox"), 0);
}

/// Item 4 of issue 10: relative paths in `email-send-dir`, `email-send-db`
/// and `backoffice-logfile` mean the repository's folder — for detached
/// workers too, which run with working directory `/`, started here from a
/// third folder.
#[test]
fn relative_paths_in_settings_mean_the_repository_folder() {
    let env = Env::new();
    std::fs::create_dir(env.path("repo")).unwrap();
    std::fs::create_dir(env.path("elsewhere")).unwrap();
    let app = AppRepo::new(&env, "repo/app.db");
    // A name no other test uses, so a wrong resolution against `/` (or
    // against the starting folder) shows, and can be cleaned up.
    let unique = format!("bo-rel-{}", std::process::id());
    let dir = format!("{unique}/mail");
    let log = format!("{unique}/logs/bo.log");
    for (k, v) in [
        ("email-send-method", "dir"),
        ("email-self", "bo@example.org"),
        ("email-url", "https://example.org/r/app"),
        ("email-subname", "[app]"),
        ("email-send-dir", dir.as_str()),
        ("email-send-db", &format!("{unique}/mail.db")),
        ("backoffice-logfile", log.as_str()),
        ("backoffice-lease-time", "1"),
    ] {
        app.bo(&["setting", k, v]);
    }
    app.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    let cleanup = || {
        for base in [Path::new("/"), &env.path("elsewhere")] {
            let _ = std::fs::remove_dir_all(base.join(&unique));
        }
    };
    let base = env.path("repo").join(&unique);
    // The log's folder exists (only) in the repository's folder.
    std::fs::create_dir_all(base.join("logs")).unwrap();
    let publish_and_wait = |title: &str, done: &dyn Fn() -> bool| {
        // `publish` starts a detached worker (working directory `/`); the
        // command itself runs in a third folder.
        Cmd::backoffice()
            .args([
                "publish",
                "-R",
                "../repo/app.db",
                "--kind",
                "wiki",
                "--title",
                title,
            ])
            .current_dir(env.path("elsewhere"))
            .output()
            .success();
        let ok = wait_until(Duration::from_secs(30), done);
        if !ok {
            let wrong: Vec<String> = [Path::new("/"), &env.path("elsewhere")]
                .iter()
                .map(|b| b.join(&unique))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
                .collect();
            cleanup();
            panic!(
                "{title}: nothing in {}; written instead to {wrong:?}",
                base.display()
            );
        }
    };
    publish_and_wait("Into the folder", &|| {
        eml_files(&base.join("mail")).len() == 1
    });
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            base.join("logs/bo.log")
        )
        .is_ok_and(|t| t.contains("alert"))),
        "no run log in {}",
        base.display()
    );
    app.bo(&["setting", "email-send-method", "db"]);
    publish_and_wait("Into the database", &|| {
        rusqlite::Connection::open_with_flags(
            base.join("mail.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| c.query_row("SELECT count(*) FROM email", [], |r| r.get::<_, i64>(0)))
        .is_ok_and(|n| n == 1)
    });
    let stray =
        Path::new("/").join(&unique).exists() || env.path("elsewhere").join(&unique).exists();
    cleanup();
    assert!(!stray, "something was written relative to another folder");
}
