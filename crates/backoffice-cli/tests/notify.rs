//! Notifications end to end through the real binary: publish, subscribers,
//! alerts through every local send method, failures kept and retried,
//! dead letters, and a worker killed mid-run losing nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::{AppRepo, Cmd, Env, wait_child, wait_until};

/// A repository with email set up for `method`, and a few subscribers.
struct Mail {
    app: AppRepo,
    out: PathBuf,
}

impl std::ops::Deref for Mail {
    type Target = AppRepo;
    fn deref(&self) -> &AppRepo {
        &self.app
    }
}

impl Mail {
    fn new(env: &Env, method: &str) -> Mail {
        let m = Mail {
            app: AppRepo::new(env, "app.db"),
            out: env.path("mail"),
        };
        for (k, v) in [
            ("email-send-method", method),
            ("email-self", "bo@example.org"),
            ("email-url", "https://example.org/r/app"),
            ("email-subname", "[app]"),
            ("email-send-dir", m.out.to_str().unwrap()),
            ("email-send-db", env.path("mail.db").to_str().unwrap()),
            ("backoffice-lease-time", "1"),
        ] {
            m.bo(&["setting", k, v]);
        }
        m
    }

    /// A manual worker run (no trigger, no wait).
    fn run(&self) {
        Cmd::backoffice()
            .args(["run", "--nolease", self.r()])
            .output()
            .success();
    }

    fn publish(&self, kind: &str, title: &str) {
        self.bo(&[
            "publish",
            "--kind",
            kind,
            "--title",
            title,
            "--body",
            "Details.",
            "--no-trigger",
        ]);
    }

    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.out)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn sql<T: rusqlite::types::FromSql>(&self, q: &str) -> T {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .query_row(q, [], |r| r.get(0))
            .unwrap()
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn alerts_reach_only_verified_subscribed_matching_subscribers() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.bo(&[
        "subscriber",
        "add",
        "wiki-only@example.org",
        "--verified",
        "--kinds",
        "wiki",
    ]);
    m.bo(&["subscriber", "add", "unverified@example.org"]);
    m.bo(&["subscriber", "add", "gone@example.org", "--verified"]);
    m.bo(&[
        "subscriber",
        "set",
        "gone@example.org",
        "--unsubscribed",
        "on",
    ]);
    m.bo(&[
        "subscriber",
        "add",
        "daily@example.org",
        "--verified",
        "--digest",
    ]);
    m.publish("checkin", "Fix the parser");
    m.publish("wiki", "Front page edited");
    m.run();
    let files = m.files();
    let to: Vec<&str> = files.iter().map(|f| header(f, "To").unwrap()).collect();
    assert_eq!(to.len(), 2, "{to:?}");
    assert!(to.contains(&"ann@example.org") && to.contains(&"wiki-only@example.org"));
    let ann = files
        .iter()
        .find(|f| header(f, "To") == Some("ann@example.org"))
        .unwrap();
    assert_eq!(
        header(ann, "Subject"),
        Some("[app] Fix the parser (and 1 more)")
    );
    assert!(
        header(ann, "List-Unsubscribe")
            .unwrap()
            .starts_with("<https://example.org/r/app/unsubscribe/")
    );
    assert_eq!(
        header(ann, "List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(header(ann, "Message-ID").unwrap().starts_with("<bo."));
    assert!(header(ann, "Date").is_some());
    let wiki = files
        .iter()
        .find(|f| header(f, "To") == Some("wiki-only@example.org"))
        .unwrap();
    assert_eq!(header(wiki, "Subject"), Some("[app] Front page edited"));
    // A second run sends nothing more.
    m.run();
    assert_eq!(m.files().len(), 2);
}

#[test]
fn one_message_per_event_when_asked() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    m.bo(&["setting", "email-alert-mode", "each"]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    for i in 0..3 {
        m.publish("wiki", &format!("Page {i}"));
    }
    m.run();
    assert_eq!(m.files().len(), 3);
}

#[test]
fn db_and_pipe_methods_deliver() {
    let env = Env::new();
    let m = Mail::new(&env, "db");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.publish("wiki", "Into the database");
    m.run();
    let db = rusqlite::Connection::open(env.path("mail.db")).unwrap();
    let msg: String = db
        .query_row("SELECT msg FROM email", [], |r| r.get(0))
        .unwrap();
    assert!(msg.contains("Subject: [app] Into the database"), "{msg}");

    let out = env.path("piped");
    std::fs::create_dir(&out).unwrap();
    m.bo(&["setting", "email-send-method", "pipe"]);
    // A real injection attempt: every event field carries shell syntax
    // that would create a file in this test's own folder if any of it were
    // ever run by a shell. The command has places event data could reach if
    // the pipe method put it anywhere but stdin (its arguments and its
    // environment, both recorded) and it passes the message through a
    // shell variable, quoted, as a careful script would.
    let pwned = env.path("pwned");
    let p = pwned.display();
    let payloads = [
        format!("$(touch {p}-dollar)"),
        format!("`touch {p}-backtick`"),
        format!("; touch {p}-semicolon ;"),
        format!("\"; touch {p}-quote; \""),
        format!("' ; touch {p}-single ; '"),
        format!("| touch {p}-pipe"),
        format!("&& touch {p}-and"),
    ];
    let all = payloads.join(" ");
    let cmd = format!(
        "printf '%s\\n' \"$0\" \"$@\" > {o}/args; env > {o}/env; msg=$(cat); f=$(mktemp {o}/m.XXXXXX) && printf '%s\\n' \"$msg\" > \"$f\"",
        o = out.display()
    );
    m.bo(&["setting", "email-send-command", &cmd]);
    m.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        &format!("Through a pipe {all}"),
        "--body",
        &all,
        "--author",
        // An author is at most 200 characters: three payloads fit.
        &payloads[..3].join(" "),
        "--url",
        &format!("https://example.org/{}", payloads[0]),
        "--no-trigger",
    ]);
    m.run();
    let piped: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("m."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(piped.len(), 1);
    assert!(
        piped[0].contains("Subject: [app] Through a pipe"),
        "{}",
        piped[0]
    );
    assert!(!piped[0].contains('\r'), "pipe gets LF line ends");
    // The payloads travelled (on stdin, as data): the test would be empty
    // if they had been dropped on the way.
    assert!(piped[0].contains(&format!("{p}-dollar")), "{}", piped[0]);
    let args = std::fs::read_to_string(out.join("args")).unwrap();
    let environ = std::fs::read_to_string(out.join("env")).unwrap();
    for (what, text) in [("arguments", &args), ("environment", &environ)] {
        assert!(
            !text.contains("touch"),
            "event data in the command's {what}: {text}"
        );
    }
    let made: Vec<String> = std::fs::read_dir(env.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(made.is_empty(), "event data was executed: {made:?}");
}

#[test]
fn stdout_method_prints_the_message() {
    let env = Env::new();
    let m = Mail::new(&env, "stdout");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.publish("wiki", "Printed");
    let out = Cmd::backoffice()
        .args(["run", "--nolease", m.r()])
        .output()
        .success();
    assert!(out.contains("Subject: [app] Printed"), "{out}");
}

#[test]
fn missing_settings_are_named_and_nothing_is_lost() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    m.bo(&["setting", "--unset", "email-self"]);
    m.bo(&["setting", "--unset", "email-send-dir"]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.publish("wiki", "Waiting for settings");
    let log = env.path("bo.log");
    Cmd::backoffice()
        .args([
            "run",
            "--nolease",
            "--logfile",
            log.to_str().unwrap(),
            m.r(),
        ])
        .output()
        .success();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("alerts-failed(email-self is not set"),
        "{text}"
    );
    assert!(text.contains("email-send-dir is not set"), "{text}");
    let st = m.bo(&["status"]);
    assert!(
        st.contains("problem:    alerts: email-self is not set (needed to send email)"),
        "{st}"
    );
    assert_eq!(
        m.sql::<i64>("SELECT count(*) FROM bo_event WHERE alerted = 0"),
        1
    );

    m.bo(&["setting", "email-self", "bo@example.org"]);
    m.bo(&["setting", "email-send-dir", m.out.to_str().unwrap()]);
    m.run();
    assert_eq!(
        m.files().len(),
        1,
        "the waiting alert went out once configured"
    );
}

/// A failing send method keeps the message queued with its error, backs
/// off, and after email-max-attempts the message is dead with its reason;
/// `outbox retry` brings it back.
#[test]
fn failures_are_retried_then_dead_then_retried_by_hand() {
    let env = Env::new();
    let m = Mail::new(&env, "pipe");
    m.bo(&[
        "setting",
        "email-send-command",
        "echo relay is down >&2; exit 75",
    ]);
    m.bo(&["setting", "email-max-attempts", "3"]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.publish("wiki", "Persistent");
    m.run();
    assert_eq!(m.sql::<i64>("SELECT attempts FROM bo_outbox"), 1);
    let next: i64 = m.sql("SELECT next_attempt - ctime FROM bo_outbox");
    assert!(
        (60..=70).contains(&next),
        "first retry after about a minute, not {next} s"
    );
    let list = m.bo(&["outbox", "list"]);
    assert!(list.contains("relay is down"), "{list}");
    // Time passes (the test moves the due time instead of waiting).
    for _ in 0..2 {
        rusqlite::Connection::open(&m.path)
            .unwrap()
            .execute("UPDATE bo_outbox SET next_attempt = 0", [])
            .unwrap();
        m.run();
    }
    assert_eq!(m.sql::<String>("SELECT state FROM bo_outbox"), "dead");
    let st = m.bo(&["status"]);
    assert!(st.contains("1 dead message(s)"), "{st}");
    assert!(st.contains("exit status: 75"), "{st}");

    let out = env.path("ok");
    std::fs::create_dir(&out).unwrap();
    m.bo(&[
        "setting",
        "email-send-command",
        &format!("cat > {}/m", out.display()),
    ]);
    m.bo(&["outbox", "retry"]);
    m.run();
    assert_eq!(m.sql::<String>("SELECT state FROM bo_outbox"), "sent");
    assert!(
        std::fs::read_to_string(out.join("m"))
            .unwrap()
            .contains("Subject: [app] Persistent")
    );
}

/// A worker killed with SIGKILL in the middle of sending loses nothing; the
/// kill causes at most one duplicate (the message in flight), with the same
/// Message-ID.
#[test]
fn killed_worker_loses_nothing() {
    let env = Env::new();
    let m = Mail::new(&env, "pipe");
    let out = env.path("piped");
    std::fs::create_dir(&out).unwrap();
    let cmd = format!(
        "sleep 0.005; f=$(mktemp {}/m.XXXXXX) && cat > \"$f\"",
        out.display()
    );
    m.bo(&["setting", "email-send-command", &cmd]);
    m.bo(&["setting", "email-alert-mode", "each"]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    let n = 300;
    let conn = rusqlite::Connection::open(&m.path).unwrap();
    for i in 0..n {
        backoffice::events::publish(
            &conn,
            &backoffice::events::Event {
                kind: "wiki".into(),
                title: format!("Event {i}"),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let mut worker = Cmd::backoffice().args(["run", m.r()]).spawn();
    assert!(wait_until(Duration::from_secs(20), || std::fs::read_dir(
        &out
    )
    .unwrap()
    .count()
        > 30));
    worker.kill().unwrap();
    wait_child(&mut worker, Duration::from_secs(5), "the killed worker");
    let before = std::fs::read_dir(&out).unwrap().count();
    assert!(
        before < n,
        "the worker finished before it was killed; make the test slower"
    );
    // The next run (the dead holder does not block it) finishes the job.
    m.run();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut partial = 0;
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let msg = std::fs::read_to_string(e.path()).unwrap();
        let id = msg.lines().find_map(|l| l.strip_prefix("Message-ID: "));
        match id {
            // Complete: headers through to the footer's last line.
            Some(id) if msg.contains("To stop them: ") && msg.ends_with('\n') => {
                *ids.entry(id.to_owned()).or_default() += 1;
            }
            // The write in flight when the worker died; the pipe command was
            // killed with it (a real MTA would not have sent it).
            _ => partial += 1,
        }
    }
    assert!(partial <= 1, "{partial} partial messages");
    assert_eq!(ids.len(), n, "every message delivered");
    // One kill, one message in flight: at most one duplicate in all (each
    // finished send is journalled before the next one starts).
    let duplicates: usize = ids.values().map(|&c| c - 1).sum();
    assert!(duplicates <= 1, "{duplicates} duplicates from one kill");
    assert_eq!(
        m.sql::<i64>("SELECT count(*) FROM bo_outbox WHERE state = 'sent'"),
        n as i64
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    for (addr, why) in [
        ("not-an-address", "needs an @"),
        ("a b@example.org", "cannot contain ' '"),
        ("x@example..org", "bad domain"),
    ] {
        let err = Cmd::backoffice()
            .args(["subscriber", "add", addr, "-R", m.r()])
            .output()
            .failure();
        assert!(err.contains(why), "{addr}: {err}");
    }
    let err = Cmd::backoffice()
        .args([
            "publish",
            "-R",
            m.r(),
            "--kind",
            "Not A Kind",
            "--title",
            "x",
        ])
        .output()
        .failure();
    assert!(err.contains("bad event kind"), "{err}");
    let err = Cmd::backoffice()
        .args([
            "setting",
            "-R",
            m.r(),
            "email-send-method",
            "carrier-pigeon",
        ])
        .output()
        .failure();
    assert!(
        err.contains("expected one of: off, relay, pipe, dir, db, stdout"),
        "{err}"
    );
    let err = Cmd::backoffice()
        .args([
            "setting",
            "-R",
            m.r(),
            "email-digest-time",
            "25:00 Mars/Olympus",
        ])
        .output()
        .failure();
    assert!(err.contains("hour must be 0-23"), "{err}");
    let err = Cmd::backoffice()
        .args([
            "setting",
            "-R",
            m.r(),
            "email-self",
            "me at example dot org",
        ])
        .output()
        .failure();
    assert!(err.contains("bad value"), "{err}");
    let err = Cmd::backoffice()
        .args(["publish", "-R", m.r(), "--kind", "wiki", "--title", "x"])
        .args(["--body-file", "/nonexistent/body.txt"])
        .output()
        .failure();
    assert!(err.contains("reading /nonexistent/body.txt"), "{err}");
    let err = Cmd::backoffice()
        .args([
            "subscriber",
            "-R",
            m.r(),
            "set",
            "nobody@example.org",
            "--verified",
            "maybe",
        ])
        .output()
        .failure();
    assert!(err.contains("--verified takes on or off"), "{err}");
    let err = Cmd::backoffice()
        .args(["subscriber", "-R", m.r(), "remove", "42"])
        .output()
        .failure();
    assert!(err.contains("no subscriber 42"), "{err}");
    // A repository that never had email: nothing to retry, not an SQL error.
    let plain = crate::harness::AppRepo::new(&env, "plain.db");
    assert!(
        plain
            .bo(&["outbox", "retry"])
            .contains("0 messages queued again")
    );
    assert!(
        plain
            .bo(&["outbox", "purge", "--dead"])
            .contains("0 messages deleted")
    );
}

#[test]
fn titles_cannot_inject_headers() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        "Hello\r\nBcc: victim@example.org\r\n\r\nFake body",
        "--no-trigger",
    ]);
    m.run();
    let f = &m.files()[0];
    let headers = f.split("\r\n\r\n").next().unwrap();
    assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{headers}");
    assert_eq!(
        header(f, "Subject"),
        Some("[app] Hello Bcc: victim@example.org Fake body")
    );
}

/// Publishing triggers a worker, which sends the alert within moments.
#[test]
fn publish_triggers_a_worker() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    let out = m.bo(&["publish", "--kind", "wiki", "--title", "Now"]);
    assert!(out.contains("started worker"), "{out}");
    assert!(wait_until(Duration::from_secs(10), || m.files().len() == 1));
}

#[test]
fn the_relay_password_is_never_printed_back() {
    let env = Env::new();
    let m = Mail::new(&env, "relay");
    let secret = "hunter2-Sekr3t";
    m.bo(&["setting", "email-send-relay-user", "bo"]);
    let out = m.bo(&["setting", "email-send-relay-password", secret]);
    assert!(out.contains("********"), "{out}");
    for args in [
        vec!["setting"],
        vec!["setting", "email-send-relay-password"],
        vec!["status"],
        vec!["status", "--json"],
    ] {
        let out = m.bo(&args);
        assert!(
            !out.contains(secret),
            "{args:?} printed the password:\n{out}"
        );
    }
    // Nor does a failed delivery's error (nothing listens on the relay).
    m.bo(&["setting", "email-send-relayhost", "127.0.0.1:1"]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.publish("wiki", "x");
    m.run();
    let list = m.bo(&["outbox", "list"]);
    assert!(list.contains("error: relay 127.0.0.1:1"), "{list}");
    assert!(!list.contains(secret), "{list}");
    assert!(!m.bo(&["status"]).contains(secret));
}

#[test]
fn outbox_purge_deletes_only_what_it_should() {
    let env = Env::new();
    let m = Mail::new(&env, "dir");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.bo(&["subscriber", "add", "bob@example.org", "--verified"]);
    m.publish("wiki", "Sent twice");
    m.run();
    let conn = rusqlite::Connection::open(&m.path).unwrap();
    // One message sent long ago, one dead, one still queued.
    conn.execute_batch(
        "UPDATE bo_outbox SET sent_time = 1000 WHERE address = 'ann@example.org';
         UPDATE bo_outbox SET state = 'dead', last_error = 'x' WHERE address = 'bob@example.org';
         INSERT INTO bo_outbox(address, kind, subject, body, ctime, next_attempt)
           VALUES ('carl@example.org', 'alert', 's', 'b', 0, 4000000000);",
    )
    .unwrap();
    let out = m.bo(&["outbox", "purge", "--days", "30"]);
    assert!(out.contains("1 message deleted"), "{out}");
    assert_eq!(
        m.sql::<i64>("SELECT count(*) FROM bo_outbox"),
        2,
        "dead and queued kept"
    );
    let out = m.bo(&["outbox", "purge", "--dead"]);
    assert!(out.contains("1 message deleted"), "{out}");
    assert_eq!(
        m.sql::<String>("SELECT address FROM bo_outbox"),
        "carl@example.org"
    );
}

/// A worker started for other work (or with nothing to do) leaves email
/// alone: no settings read, no transport opened (here: no mail database
/// created).
#[test]
fn nothing_due_opens_no_transport() {
    let env = Env::new();
    let m = Mail::new(&env, "db");
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.run();
    assert!(
        !env.path("mail.db").exists(),
        "the transport was opened for nothing"
    );
    m.publish("wiki", "Now there is work");
    m.run();
    assert!(env.path("mail.db").exists());
}

/// Pids listed in a file, one per line.
fn pids_in(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    crate::harness::proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Issue 10 item 6 (pipe): a `sendmail` stand-in that, like a real MTA,
/// hands the message to a process of its own and delivers whatever it read
/// at EOF. Its worker is SIGKILLed while the stand-in has not read the
/// message yet: the stand-in's whole tree dies with the worker, so no cut-off
/// message is ever delivered, and the next run delivers it whole.
#[test]
fn a_killed_worker_never_hands_the_pipe_command_a_cut_off_message() {
    let env = Env::new();
    let m = Mail::new(&env, "pipe");
    let out = env.path("delivered");
    std::fs::create_dir(&out).unwrap();
    let pids = env.path("pids");
    let started = env.path("started");
    // The outer shell forks a subshell (it is not the last command), which
    // waits a little, reads stdin to its end and "delivers" it.
    let cmd = format!(
        "echo $$ >> {p}; \
         ( sh -c 'echo $PPID' >> {p}; [ -e {s} ] || {{ touch {s}; sleep 1; }}; \
           f=$(mktemp {o}/t.XXXXXX); cat > \"$f\"; mv \"$f\" \"$f.eml\" ); exit 0",
        p = pids.display(),
        s = started.display(),
        o = out.display(),
    );
    m.bo(&["setting", "email-send-command", &cmd]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    // One batch message of a few hundred KB: far more than a pipe buffer.
    let conn = rusqlite::Connection::open(&m.path).unwrap();
    let body: String = (0..30)
        .map(|i| format!("line {i} of the details\n"))
        .collect();
    for i in 0..400 {
        backoffice::events::publish(
            &conn,
            &backoffice::events::Event {
                kind: "wiki".into(),
                title: format!("Event {i}"),
                body: body.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let mut worker = Cmd::backoffice().args(["run", m.r()]).spawn();
    let up = wait_until(Duration::from_secs(20), || {
        started.exists() && pids_in(&pids).len() == 2
    });
    if !up {
        crate::harness::kill(worker);
        panic!("the pipe command did not start");
    }
    worker.kill().unwrap();
    wait_child(&mut worker, Duration::from_secs(5), "the killed worker");
    let gone = wait_until(Duration::from_secs(5), || {
        pids_in(&pids).iter().all(|&p| !alive(p))
    });
    // Give a survivor the time to do its harm before looking (bounded: it
    // reads at most what is in its pipe, then delivers).
    if !gone {
        wait_until(Duration::from_secs(5), || {
            pids_in(&pids).iter().all(|&p| !alive(p))
        });
    }
    let first: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(gone, "the pipe command outlived its killed worker");
    assert!(
        first.is_empty(),
        "a killed worker's pipe command delivered {} message(s) of {:?} bytes",
        first.len(),
        first.iter().map(String::len).collect::<Vec<_>>()
    );
    m.run();
    let msgs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(msgs.len(), 1);
    let msg = &msgs[0];
    assert!(msg.len() > 200_000, "{} bytes", msg.len());
    assert!(
        msg.contains("To stop them: ") && msg.ends_with('\n'),
        "incomplete message: {} bytes ending {:?}",
        msg.len(),
        &msg[msg.len().saturating_sub(300)..]
    );
    assert_eq!(
        m.sql::<i64>("SELECT count(*) FROM bo_outbox WHERE state = 'sent'"),
        1
    );
}

/// Issue 10 item 12: a `pipe` command that hangs is killed, with what it
/// started, after `email-send-command-timeout`; the message stays queued
/// with the reason recorded, and the run (and its lease) ends.
#[test]
fn a_hanging_pipe_command_is_killed_after_its_timeout_and_the_message_stays_queued() {
    let env = Env::new();
    let m = Mail::new(&env, "pipe");
    let bg = env.path("bg");
    m.bo(&[
        "setting",
        "email-send-command",
        &format!("sleep 300 & echo $! >> {}; sleep 300", bg.display()),
    ]);
    m.bo(&["setting", "email-send-command-timeout", "1"]);
    m.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    m.publish("wiki", "Hang on");
    let mut worker = Cmd::backoffice().args(["run", m.r()]).spawn();
    wait_child(&mut worker, Duration::from_secs(30), "the worker");
    let left: Vec<u32> = pids_in(&bg).into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "the command's child survived: {left:?}");
    assert_eq!(m.sql::<String>("SELECT state FROM bo_outbox"), "queued");
    let err: String = m.sql("SELECT last_error FROM bo_outbox");
    assert!(
        err.contains("timed out after 1 s") && err.contains("email-send-command-timeout"),
        "{err}"
    );
    let status = m.bo(&["status"]);
    assert!(status.contains("lease:      free"), "{status}");
    let help = m.bo(&["setting", "email-send-command-timeout"]);
    assert!(help.contains('1'), "{help}");
}
