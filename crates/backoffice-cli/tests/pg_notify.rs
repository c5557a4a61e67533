//! Issue 12, items 1, 2 and 4 for email: alerts, digests, subscribers and
//! the outbox on a PostgreSQL repository.
//!
//! End to end through the real binary (`setting`, `subscriber`, `publish`,
//! `run`, `outbox` and `status` on a `postgres://…?schema=NAME` URL, the
//! `dir` send method writing `.eml` files), and in process where the test
//! must control the clock (digests over several days) or the fencing term
//! (a run whose lease was taken over records nothing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use backoffice::pg::{PgConn, PgUrl};
use backoffice::{Context, Db, Task};
use backoffice_tasks::notify::Notify;

use crate::harness::{Cmd, Env};
use crate::pg;

/// A PostgreSQL repository set up for email with the `dir` method.
struct PgMail {
    _db: pg::PgDb,
    url: String,
    dir: PathBuf,
    /// Everything the binary printed, to check no password ever shows.
    said: std::cell::RefCell<String>,
}

impl PgMail {
    fn new(env: &Env, schema: &str) -> Option<PgMail> {
        let db = pg::database()?;
        let url = db.url(schema);
        let r = PgMail {
            _db: db,
            url,
            dir: env.path(&format!("{schema}-mail")),
            said: Default::default(),
        };
        r.bo(&["setting", "-R", &r.url, "backoffice-lease-time", "1"]);
        r.bo(&["setting", "-R", &r.url, "backoffice-heartbeat", "1"]);
        let dir = r.dir.display().to_string();
        for (k, v) in [
            ("email-send-method", "dir"),
            ("email-send-dir", dir.as_str()),
            ("email-self", "bo@example.org"),
            ("email-url", "https://example.org"),
            ("email-subname", "[pg]"),
            ("email-alert-mode", "each"),
        ] {
            r.bo(&["setting", "-R", &r.url, k, v]);
        }
        Some(r)
    }

    /// Runs `backoffice ARGS` to success; returns its stdout.
    fn bo(&self, args: &[&str]) -> String {
        let out = Cmd::backoffice().args(args).output().success();
        self.said.borrow_mut().push_str(&out);
        out
    }

    /// One worker run; returns what it printed (either exit status).
    fn run(&self) -> String {
        let out = Cmd::backoffice().args(["run", &self.url]).output();
        let s = format!("{}{}", out.stdout(), out.stderr());
        self.said.borrow_mut().push_str(&s);
        s
    }

    fn publish(&self, title: &str) {
        self.bo(&[
            "publish",
            "-R",
            &self.url,
            "--no-trigger",
            "--kind",
            "wiki",
            "--title",
            title,
        ]);
    }

    /// The `.eml` files, by name (the message's row id first).
    fn files(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn conn(&self) -> PgConn {
        PgUrl::parse(&self.url).unwrap().connect().unwrap()
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Issue 12, items 1 and 2 for email, through the binary: subscribers added
/// with `subscriber add -R URL` (one refused as a duplicate whatever its
/// case), events published with `publish -R URL`, and `backoffice run URL`
/// writes one alert per verified immediate subscriber per event (mode
/// `each`) — none to the unverified, unsubscribed or digest ones — as
/// `.eml` files whose name and Message-ID carry the token stored with the
/// message. `outbox list -R URL` shows them sent; a second run sends
/// nothing again; a later event only its own alerts. No output ever shows
/// the URL's password or the SMTP password setting.
#[test]
fn alerts_reach_subscribers_of_a_postgresql_repository_through_the_binary() {
    let env = Env::new();
    let Some(r) = PgMail::new(&env, "mail_e2e") else {
        return;
    };
    let said = r.bo(&[
        "setting",
        "-R",
        &r.url,
        "email-send-relay-password",
        "smtp-pw-never-shown",
    ]);
    assert!(said.contains("********"), "{said}");
    r.bo(&["setting", "-R", &r.url]);

    for (addr, extra) in [
        ("ann@example.org", vec!["--verified"]),
        (
            "bob@example.org",
            vec!["--verified", "--kinds", "wiki,ticket"],
        ),
        ("unverified@example.org", vec![]),
        ("daily@example.org", vec!["--verified", "--digest"]),
        (
            "tickets@example.org",
            vec!["--verified", "--kinds", "ticket"],
        ),
        ("gone@example.org", vec!["--verified"]),
    ] {
        let mut args = vec!["subscriber", "add", "-R", &r.url, addr];
        args.extend(extra);
        let out = r.bo(&args);
        assert!(out.contains(addr), "{out}");
    }
    r.bo(&[
        "subscriber",
        "set",
        "-R",
        &r.url,
        "GONE@example.org",
        "--unsubscribed",
        "on",
    ]);
    let dup = Cmd::backoffice()
        .args(["subscriber", "add", "-R", &r.url, "Ann@Example.ORG"])
        .output()
        .failure();
    assert!(dup.contains("already a subscriber"), "{dup}");
    assert!(!dup.contains(pg::PASSWORD), "{dup}");
    let list = r.bo(&["subscriber", "list", "-R", &r.url]);
    assert!(list.contains("6 subscribers"), "{list}");
    assert!(list.contains("unsubscribed"), "{list}");
    let json = r.bo(&["subscriber", "show", "-R", &r.url, "bob@example.org"]);
    assert!(json.contains("\"kinds\": \"ticket,wiki\""), "{json}");

    r.publish("First page");
    r.publish("Second page");
    let out = r.run();
    let files = r.files();
    let mut to: Vec<(String, String)> = files
        .iter()
        .map(|(_, m)| {
            (
                header(m, "To").unwrap().to_owned(),
                header(m, "Subject").unwrap().to_owned(),
            )
        })
        .collect();
    to.sort();
    assert_eq!(files.len(), 4, "{out}\n{to:?}");
    for addr in ["ann@example.org", "bob@example.org"] {
        for title in ["First page", "Second page"] {
            assert!(
                to.iter()
                    .any(|(t, s)| t.contains(addr) && s.contains(title) && s.contains("[pg]")),
                "{addr} {title}: {to:?}"
            );
        }
    }
    // Name `MSGID-TOKEN.eml`, Message-ID `<bo.TOKEN@domain>`: the token is
    // the one stored with the message, so a second attempt carries it too.
    let c = r.conn();
    for (name, msg) in &files {
        let (id, token) = name.trim_end_matches(".eml").split_once('-').unwrap();
        let stored = c
            .query(
                "SELECT token, state FROM bo_outbox WHERE msgid = ?1",
                &[id.parse::<i64>().unwrap().into()],
            )
            .unwrap();
        assert_eq!(stored[0].text(0).unwrap(), token);
        assert_eq!(stored[0].text(1).unwrap(), "sent");
        assert_eq!(
            header(msg, "Message-ID"),
            Some(format!("<bo.{token}@example.org>").as_str())
        );
    }
    let outbox = r.bo(&["outbox", "list", "-R", &r.url]);
    assert!(outbox.contains("0 queued, 4 sent, 0 dead"), "{outbox}");
    let st = r.bo(&["status", &r.url]);
    assert!(st.contains("outbox: 0 queued, 4 sent, 0 dead"), "{st}");

    // Nothing new: nothing sent again, even by later runs.
    std::thread::sleep(Duration::from_millis(1100));
    r.run();
    assert_eq!(r.files().len(), 4);
    // A later event: only its own alerts.
    r.publish("Third page");
    std::thread::sleep(Duration::from_millis(1100));
    r.run();
    let files = r.files();
    assert_eq!(files.len(), 6);
    let third = files
        .iter()
        .filter(|(_, m)| header(m, "Subject").unwrap().contains("Third page"))
        .count();
    assert_eq!(third, 2);

    // retry / purge on the URL.
    let said = r.bo(&["outbox", "retry", "-R", &r.url]);
    assert!(said.contains("0 messages queued again"), "{said}");
    let said = r.bo(&["outbox", "purge", "-R", &r.url, "--days", "0"]);
    assert!(said.contains("message"), "{said}");

    let all = r.said.borrow().clone();
    assert!(
        !all.contains(pg::PASSWORD),
        "the URL's password was printed"
    );
    assert!(
        !all.contains("smtp-pw-never-shown"),
        "the SMTP password was printed"
    );
}

/// A `Context` for an in-process run of the task on a PostgreSQL schema.
fn ctx<'a>(db: Db<'a>, repo: &'a Path, now: i64, term: u64) -> Context<'a> {
    Context {
        db,
        repo,
        now,
        debug: false,
        term,
    }
}

fn setup_in_process(env: &Env, db: &pg::PgDb, schema: &str) -> (PgUrl, PgConn, PathBuf) {
    let url = PgUrl::parse(&db.url(schema)).unwrap();
    let c = url.connect().unwrap();
    let dir = env.path(&format!("{schema}-mail"));
    let pdb = Db::Postgres(&c);
    for (k, v) in [
        ("email-send-method", "dir"),
        ("email-send-dir", dir.to_str().unwrap()),
        ("email-self", "bo@example.org"),
        ("email-url", "https://example.org"),
        ("email-subname", "[pg]"),
        ("email-digest-time", "07:00 UTC"),
    ] {
        pdb.config_set(k, v).unwrap();
    }
    for (addr, digest) in [("now@example.org", false), ("daily@example.org", true)] {
        backoffice_tasks::notify::pg::subscriber_add(
            pdb,
            &backoffice_tasks::notify::subscribers::New {
                address: addr.into(),
                kinds: "*".into(),
                digest,
                verified: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    (url, c, dir)
}

fn publish_at(url: &PgUrl, c: &PgConn, title: &str, time: i64) {
    let ev = backoffice::events::Event {
        kind: "wiki".into(),
        title: title.into(),
        time: Some(time),
        ..Default::default()
    };
    backoffice::pg::publish(&mut *c.client(), url.schema(), &ev).unwrap();
}

/// (kind, address, body) of every outbox row, in queue order.
fn outbox(c: &PgConn) -> Vec<(String, String, String)> {
    c.query(
        "SELECT kind, address, body FROM bo_outbox ORDER BY msgid",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.text(0).unwrap(), r.text(1).unwrap(), r.text(2).unwrap()))
    .collect()
}

/// Issue 12, item 4 for email: a run whose lease was taken over (its term
/// is no longer the lease's) commits nothing — no alert queued, the
/// alerts' cursor unmoved, no message marked sent — and stops with the
/// fencing error; the holder of the new term then does it all, once.
#[test]
fn a_notify_run_whose_term_is_gone_records_nothing() {
    let env = Env::new();
    let Some(db) = pg::database() else { return };
    let (url, c, dir) = setup_in_process(&env, &db, "mail_fenced");
    let pdb = Db::Postgres(&c);
    let repo = Path::new(url.redacted());
    let now = crate::harness::now();
    publish_at(&url, &c, "fresh", now - 60);
    c.stamp_events(None).unwrap();
    c.execute("UPDATE bo_lease SET term = 8", &[]).unwrap();
    assert_eq!(Notify.due(pdb, now).unwrap(), backoffice::Due::Now);

    let e = Notify.run(&ctx(pdb, repo, now, 7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    assert!(outbox(&c).is_empty(), "nothing queued: {:?}", outbox(&c));
    let cursor = backoffice::ledger::get(pdb, "alerts", "events").unwrap();
    assert_eq!(cursor, None, "the cursor did not move");

    // Messages queued (by plain SQL, say): a stale run sends nothing it
    // could record and marks nothing sent.
    c.execute(
        "INSERT INTO bo_outbox(address, kind, subject, body, ctime, next_attempt)
         VALUES ('sql@example.org', 'alert', 's', 'b', ?1, ?1)",
        &[now.into()],
    )
    .unwrap();
    let e = Notify.run(&ctx(pdb, repo, now, 7)).unwrap_err();
    assert!(e.to_string().contains("fenced"), "{e}");
    let sent = c
        .query("SELECT msgid FROM bo_outbox WHERE state <> 'queued'", &[])
        .unwrap();
    assert!(sent.is_empty(), "a stale run marked messages");

    // The holder of term 8: the alert queued and sent, the SQL one too
    // (with a token given before its first attempt), once.
    assert_eq!(Notify.run(&ctx(pdb, repo, now, 8)).unwrap(), 2);
    let rows = outbox(&c);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("alert", "now@example.org")
    );
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 2);
    let queued = c
        .query("SELECT msgid FROM bo_outbox WHERE state = 'queued'", &[])
        .unwrap();
    assert!(queued.is_empty());
    assert_eq!(
        backoffice::ledger::get(pdb, "alerts", "events")
            .unwrap()
            .unwrap()
            .cursor,
        1
    );
    assert_eq!(Notify.run(&ctx(pdb, repo, now, 8)).unwrap(), 0);
    assert_eq!(outbox(&c).len(), 2);
}

/// 2026-11-21 00:00:00 UTC.
const DAY0: i64 = 1_795_219_200;
const HOUR: i64 = 3600;

/// Issue 12, item 2 for digests, with the clock in the test's hands: on a
/// fresh schema the first digest (07:00 UTC) covers the last day only;
/// later runs the same day send nothing; three days later one digest
/// covers the three days; a day without events sends none. An event whose
/// transaction commits after the digest (its time before the boundary,
/// its position after the cursor) is in the next digest, never lost, and
/// no event is in two digests.
#[test]
fn a_digest_is_sent_once_per_period_on_postgresql() {
    let env = Env::new();
    let Some(db) = pg::database() else { return };
    let (url, c, _dir) = setup_in_process(&env, &db, "mail_digest");
    let pdb = Db::Postgres(&c);
    let repo = Path::new(url.redacted());
    let run = |now: i64| {
        c.stamp_events(None).unwrap();
        Notify.run(&ctx(pdb, repo, now, 0)).unwrap()
    };
    let digests = || -> Vec<String> {
        outbox(&c)
            .into_iter()
            .filter(|(k, a, _)| k == "digest" && a == "daily@example.org")
            .map(|(_, _, b)| b)
            .collect()
    };
    publish_at(&url, &c, "Ancient", DAY0 - 30 * 24 * HOUR);
    publish_at(&url, &c, "Yesterday evening", DAY0 - 3 * HOUR);
    run(DAY0 + 9 * HOUR);
    let d = digests();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].contains("Yesterday evening") && !d[0].contains("Ancient"),
        "{}",
        d[0]
    );
    run(DAY0 + 20 * HOUR);
    assert_eq!(digests().len(), 1, "once per day");

    // An event stamped 06:30 on day 1 that commits only after the day-1
    // digest went out (the position comes later): in the next digest.
    for day in 0..3 {
        publish_at(
            &url,
            &c,
            &format!("Day {day}"),
            DAY0 + (day * 24 + 12) * HOUR,
        );
    }
    run(DAY0 + (24 + 9) * HOUR);
    let d = digests();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[1].contains("Day 0") && !d[1].contains("Day 1"),
        "{}",
        d[1]
    );
    publish_at(&url, &c, "Late commit", DAY0 + (24 + 6) * HOUR + 1800);
    // Three days pass without a run: one digest with all that is new.
    run(DAY0 + (4 * 24 + 9) * HOUR);
    let d = digests();
    assert_eq!(d.len(), 3, "{d:?}");
    for t in ["Day 1", "Day 2", "Late commit"] {
        assert!(d[2].contains(t), "{t}: {}", d[2]);
    }
    assert!(
        !d[2].contains("Day 0") && !d[2].contains("Yesterday"),
        "{}",
        d[2]
    );
    // A day with no events: no digest.
    run(DAY0 + (5 * 24 + 9) * HOUR);
    assert_eq!(digests().len(), 3);
    // Each digest was delivered once.
    let sent = c
        .query(
            "SELECT CAST(count(*) AS BIGINT) FROM bo_outbox WHERE kind = 'digest' AND state = 'sent'",
            &[],
        )
        .unwrap();
    assert_eq!(sent[0].int(0).unwrap(), 3);
}

/// `s` quoted for `/bin/sh`.
fn sh(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', "'\\''"))
}

/// A `pipe` send command that keeps each message as a file in `out` and,
/// at the `block_at`-th message (once), says so by creating `flag` and
/// then waits (bounded: 30 s) for `go` before it accepts it.
fn blocking_pipe(out: &Path, flag: &Path, go: &Path, block_at: usize) -> String {
    format!(
        "f=$(mktemp {o}/m.XXXXXX); cat > \"$f\"; \
         if [ ! -e {flag} ] && [ \"$(ls {o} | wc -l)\" -ge {block_at} ]; then touch {flag}; \
         i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; fi; exit 0",
        o = sh(out),
        flag = sh(flag),
        go = sh(go),
    )
}

/// The Message-IDs of the messages a [`blocking_pipe`] kept, sorted.
fn kept_ids(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = std::fs::read_to_string(e.path()).unwrap();
            header(&m, "Message-ID").unwrap_or("?").to_owned()
        })
        .collect();
    v.sort();
    v
}

/// (queued, sent) in the outbox.
fn states(c: &PgConn) -> (i64, i64) {
    let r = c
        .query(
            "SELECT CAST(count(*) FILTER (WHERE state = 'queued') AS BIGINT),
                    CAST(count(*) FILTER (WHERE state = 'sent') AS BIGINT) FROM bo_outbox",
            &[],
        )
        .unwrap();
    (r[0].int(0).unwrap(), r[0].int(1).unwrap())
}

fn pipe_repo(
    env: &Env,
    schema: &str,
    block_at: usize,
) -> Option<(PgMail, PathBuf, PathBuf, PathBuf)> {
    let r = PgMail::new(env, schema)?;
    let out = env.path(&format!("{schema}-out"));
    std::fs::create_dir_all(&out).unwrap();
    let flag = env.path(&format!("{schema}-flag"));
    let go = env.path(&format!("{schema}-go"));
    r.bo(&["setting", "-R", &r.url, "email-send-method", "pipe"]);
    r.bo(&[
        "setting",
        "-R",
        &r.url,
        "email-send-command",
        &blocking_pipe(&out, &flag, &go, block_at),
    ]);
    for a in ["a@example.org", "b@example.org", "c@example.org"] {
        r.bo(&["subscriber", "add", "-R", &r.url, a, "--verified"]);
    }
    r.publish("One event");
    Some((r, out, flag, go))
}

/// Issue 12, item 4 for sending: a worker whose lease is taken over while
/// it hands a message to the send command (the term moves under it, as a
/// takeover by another host makes it) records nothing — the message it
/// sent stays queued — and sends nothing more; the next worker sends every
/// message, so the one in flight arrives twice, both times with the same
/// Message-ID, and no other message twice.
#[test]
fn a_takeover_during_a_send_repeats_only_that_message_with_its_message_id() {
    let env = Env::new();
    let Some((r, out, flag, go)) = pipe_repo(&env, "mail_takeover", 1) else {
        return;
    };
    let c = r.conn();
    let mut a = Cmd::backoffice().args(["run", &r.url]).spawn();
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || flag.exists()),
        "the first send never started"
    );
    // The takeover: the lease's term moves on while the send is under way.
    c.execute("UPDATE bo_lease SET term = term + 1", &[])
        .unwrap();
    std::fs::write(&go, "").unwrap();
    crate::harness::wait_child(&mut a, Duration::from_secs(30), "the fenced worker");
    assert_eq!(
        kept_ids(&out).len(),
        1,
        "it stopped after the message in flight"
    );
    assert_eq!(states(&c), (3, 0), "the fenced worker recorded nothing");

    std::thread::sleep(Duration::from_millis(1100)); // a lease time apart
    r.run();
    assert_eq!(states(&c), (0, 3));
    let ids = kept_ids(&out);
    assert_eq!(ids.len(), 4, "{ids:?}");
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "one message twice, the same Message-ID: {ids:?}"
    );
}

/// A worker SIGKILLed while it hands its second message to the send
/// command: the first, whose outcome was committed before the second send
/// began, is never sent again; the next worker sends the second (again,
/// with the same Message-ID) and the third: at most the one message in
/// flight is repeated, not the batch.
#[test]
fn a_killed_worker_repeats_at_most_the_message_in_flight() {
    let env = Env::new();
    let Some((r, out, flag, go)) = pipe_repo(&env, "mail_killed", 2) else {
        return;
    };
    let c = r.conn();
    let a = Cmd::backoffice().args(["run", &r.url]).spawn();
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || flag.exists()),
        "the second send never started"
    );
    crate::harness::kill(a);
    std::fs::write(&go, "").unwrap();
    assert_eq!(states(&c), (2, 1), "the first outcome was committed");

    // The killed worker's process is gone: the next run takes over.
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || {
            r.run();
            states(&c) == (0, 3)
        }),
        "the next worker sent the rest: {:?}",
        states(&c)
    );
    let ids = kept_ids(&out);
    assert_eq!(ids.len(), 4, "only the message in flight twice: {ids:?}");
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
}

/// The test SMTP server (`tests/smtp_server.py`, as the relay tests run
/// it), on 127.0.0.1; killed on drop.
struct Smtp {
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
    port: u16,
    dir: PathBuf,
}

impl Smtp {
    fn start(env: &Env, args: &[&str]) -> Smtp {
        use std::io::BufRead;
        let dir = env.path("received");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(&dir)
            .args(["--max-seconds", "120"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(env.path("smtp.log")).unwrap())
            .spawn()
            .expect("start smtp_server.py");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("smtp_server.py said {line:?}"));
        Smtp {
            child,
            _stdin: stdin,
            port,
            dir,
        }
    }

    /// The messages received (without the envelope line).
    fn messages(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .map(|e| {
                let t = std::fs::read_to_string(e.path()).unwrap();
                t.split_once('\n').map(|(_, m)| m.to_owned()).unwrap_or(t)
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alerts of a PostgreSQL repository over SMTP (`relay`) to the real test
/// server, with a login: a wrong `email-send-relay-password` keeps the
/// message queued with the relay's refusal, which `status URL` and `outbox
/// list -R URL` show without the password; with the right one the next run
/// delivers it, its Message-ID the one its stored token gives. Neither
/// password, nor the URL's, is ever printed.
#[test]
fn alerts_of_a_postgresql_repository_go_through_the_smtp_relay() {
    if !crate::harness::have("python3") {
        return;
    }
    let env = Env::new();
    let Some(r) = PgMail::new(&env, "mail_relay") else {
        return;
    };
    let smtp = Smtp::start(&env, &["--auth", "alice:right-Pw-1"]);
    let host = format!("127.0.0.1:{}", smtp.port);
    for (k, v) in [
        ("email-send-method", "relay"),
        ("email-send-relayhost", host.as_str()),
        ("email-send-relay-user", "alice"),
        ("email-send-relay-password", "wrong-Pw-2"),
    ] {
        r.bo(&["setting", "-R", &r.url, k, v]);
    }
    r.bo(&[
        "subscriber",
        "add",
        "-R",
        &r.url,
        "ann@example.org",
        "--verified",
    ]);
    r.publish("Over SMTP");
    r.run();
    assert!(smtp.messages().is_empty());
    let list = r.bo(&["outbox", "list", "-R", &r.url]);
    assert!(list.contains("1 queued, 0 sent, 0 dead"), "{list}");
    assert!(list.contains("535"), "the relay's refusal is shown: {list}");
    let st = r.bo(&["status", &r.url]);
    assert!(st.contains("last delivery failure"), "{st}");

    r.bo(&[
        "setting",
        "-R",
        &r.url,
        "email-send-relay-password",
        "right-Pw-1",
    ]);
    let id = r
        .conn()
        .query("SELECT msgid, token FROM bo_outbox", &[])
        .unwrap();
    let (msgid, token) = (id[0].int(0).unwrap(), id[0].text(1).unwrap());
    r.bo(&["outbox", "retry", "-R", &r.url, &msgid.to_string()]);
    std::thread::sleep(Duration::from_millis(1100)); // a lease time apart
    r.run();
    let got = smtp.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        header(&got[0], "Message-ID"),
        Some(format!("<bo.{token}@example.org>").as_str())
    );
    assert!(header(&got[0], "Subject").unwrap().contains("Over SMTP"));
    let list = r.bo(&["outbox", "list", "-R", &r.url]);
    assert!(list.contains("0 queued, 1 sent, 0 dead"), "{list}");

    let all = r.said.borrow().clone();
    for secret in [pg::PASSWORD, "wrong-Pw-2", "right-Pw-1"] {
        assert!(!all.contains(secret), "{secret} was printed:\n{all}");
    }
}

/// Issue 12 benchmark: 10,000 queued alerts sent by one `backoffice run URL`
/// with the `dir` method through the PostgreSQL store.
///
/// `cargo test --release -p backoffice-cli --test integration -- --ignored --nocapture measure_pg_alerts_dir`
#[test]
#[ignore = "a measurement, not a check"]
fn measure_pg_alerts_dir() {
    const N: i64 = 10_000;
    let env = Env::new();
    for round in 0..3 {
        let Some(mut r) = PgMail::new(&env, &format!("bench_{round}")) else {
            return;
        };
        // On tmpfs when there is one, as the SQLite figure is measured:
        // creating a file on this VM's ext4 disk costs 0.6-0.85 ms.
        let shm = Path::new("/dev/shm")
            .is_dir()
            .then(|| tempfile::tempdir_in("/dev/shm").unwrap());
        if let Some(d) = &shm {
            r.dir = d.path().join("mail");
            let dir = r.dir.display().to_string();
            r.bo(&["setting", "-R", &r.url, "email-send-dir", &dir]);
        }
        println!("folder: {}", r.dir.display());
        let c = r.conn();
        let now = crate::harness::now();
        // Queued as the task queues them: each with its own token.
        c.execute(
            "INSERT INTO bo_outbox(subscriberid, address, kind, subject, body, code, ctime, next_attempt, token)
             SELECT 1, 'user' || g || '@example.org', 'alert', 'Event ' || g,
                    repeat('A body line of an alert. ', 12), md5(g::text), ?1, ?1,
                    md5(random()::text || g::text)
               FROM generate_series(1, ?2) g",
            &[now.into(), N.into()],
        )
        .unwrap_or_else(|_| {
            // The tables are made on first use.
            backoffice_tasks::notify::pg::install(Db::Postgres(&c)).unwrap();
            c.execute(
                "INSERT INTO bo_outbox(subscriberid, address, kind, subject, body, code, ctime, next_attempt, token)
                 SELECT 1, 'user' || g || '@example.org', 'alert', 'Event ' || g,
                        repeat('A body line of an alert. ', 12), md5(g::text), ?1, ?1,
                        md5(random()::text || g::text)
                   FROM generate_series(1, ?2) g",
                &[now.into(), N.into()],
            )
            .unwrap()
        });
        let t0 = std::time::Instant::now();
        r.run();
        let secs = t0.elapsed().as_secs_f64();
        let files = r.files().len();
        assert_eq!(files as i64, N);
        println!(
            "round {round}: {N} alerts (dir) in {secs:.3} s: {:.0} msg/s",
            N as f64 / secs
        );
    }
}
