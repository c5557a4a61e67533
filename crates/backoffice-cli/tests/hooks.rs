//! Shell hooks end to end through the real binary: order, the JSON on
//! stdin, failures kept and retried, timeouts, huge output, hooks that use
//! the repository, shell metacharacters in events, `--from-start`, status.
//!
//! Hooks run in the repository's directory, so the relative file names in
//! their commands land in the test's own directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{AppRepo, Cmd, Env, wait_until};

struct Repo {
    app: AppRepo,
    dir: PathBuf,
}

impl std::ops::Deref for Repo {
    type Target = AppRepo;
    fn deref(&self) -> &AppRepo {
        &self.app
    }
}

impl Repo {
    fn new(env: &Env) -> Repo {
        Repo {
            app: AppRepo::new(env, "app.db"),
            dir: env.dir().to_owned(),
        }
    }

    fn add(&self, cmd: &str, extra: &[&str]) {
        let mut a = vec!["hook", "add", "--command", cmd];
        a.extend_from_slice(extra);
        self.bo(&a);
    }

    fn publish(&self, title: &str) {
        self.bo(&[
            "publish",
            "--kind",
            "wiki",
            "--title",
            title,
            "--body",
            "Body\nwith lines.",
            "--author",
            "ann",
            "--no-trigger",
        ]);
    }

    /// A manual worker run; returns its stderr (hooks may fail).
    fn run(&self) -> String {
        let log = self.dir.join("run.log");
        Cmd::backoffice()
            .args([
                "run",
                "--nolease",
                "--logfile",
                log.to_str().unwrap(),
                self.r(),
            ])
            .output()
            .stderr()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn sql<T: rusqlite::types::FromSql>(&self, q: &str) -> T {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .query_row(q, [], |r| r.get(0))
            .unwrap()
    }

    fn cursor(&self, id: i64) -> i64 {
        self.sql(&format!(
            "SELECT cursor FROM bo_ledger WHERE task = 'hooks' AND target = '{id}'"
        ))
    }

    fn failures(&self, id: i64) -> i64 {
        self.sql(&format!(
            "SELECT failures FROM bo_ledger WHERE task = 'hooks' AND target = '{id}'"
        ))
    }

    /// Simulates the backoff passing.
    fn retry_now(&self) {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .execute(
                "UPDATE bo_ledger SET next_attempt = 0 WHERE task = 'hooks'",
                [],
            )
            .unwrap();
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn events_reach_hooks_in_seq_order_with_the_right_json() {
    let env = Env::new();
    let r = Repo::new(&env);
    // Added first but with the higher seq: runs second.
    r.add(
        "{ echo \"B $BACKOFFICE_EVENT_COUNT $BACKOFFICE_FIRST_EVENT $BACKOFFICE_LAST_EVENT\"; cat; } >> order",
        &["--seq", "20"],
    );
    r.add(
        "{ echo \"A $BACKOFFICE_EVENT_COUNT $BACKOFFICE_REPO\"; cat; } >> order",
        &["--seq", "10"],
    );
    r.publish("First");
    r.publish("Second");
    r.run();
    let text = r.file("order");
    let heads: Vec<&str> = text.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(
        heads,
        [format!("A 2 {}", r.path.display()), "B 2 1 2".to_owned()],
        "{text}"
    );
    let ev = json_lines(&text);
    assert_eq!(ev.len(), 4, "{text}");
    let first = ev[0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["author", "body", "eventid", "kind", "time", "title", "url"]
    );
    assert_eq!(ev[0]["eventid"], 1);
    assert_eq!(ev[0]["title"], "First");
    assert_eq!(ev[0]["body"], "Body\nwith lines.");
    assert_eq!(ev[0]["author"], "ann");
    assert_eq!(ev[0]["url"], Value::Null);
    assert!(ev[0]["time"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(ev[1]["title"], "Second");
    assert_eq!(ev[2]["title"], "First");
    assert_eq!((r.cursor(1), r.cursor(2)), (2, 2));
    // Nothing new: nothing runs again.
    r.run();
    assert_eq!(r.file("order"), text);
    assert!(
        r.file("run.log").contains(" 4 hooks "),
        "{}",
        r.file("run.log")
    );
}

#[test]
fn shell_metacharacters_in_events_are_never_executed() {
    let env = Env::new();
    let r = Repo::new(&env);
    let marker = |n: &str| env.path(n);
    r.add("cat > got", &[]);
    let title = format!(
        "$(touch {}) `touch {}`; touch {} | touch {} && touch {}",
        marker("m1").display(),
        marker("m2").display(),
        marker("m3").display(),
        marker("m4").display(),
        marker("m5").display()
    );
    r.publish(&title);
    r.run();
    let got = json_lines(&r.file("got"));
    assert_eq!(got[0]["title"], title.as_str());
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        assert!(!marker(m).exists(), "{m} was created");
    }
}

#[test]
fn a_failing_hook_keeps_its_cursor_and_gets_the_batch_again_others_advance() {
    let env = Env::new();
    let r = Repo::new(&env);
    std::fs::write(env.path("fail"), "").unwrap();
    r.add("cat >> got1; echo tried >> tries; test ! -e fail", &[]);
    r.add("cat >> got2", &[]);
    r.publish("One");
    r.publish("Two");
    r.run();
    assert_eq!((r.cursor(1), r.failures(1)), (0, 1));
    assert_eq!(r.cursor(2), 2);
    let log = r.file("run.log");
    assert!(
        log.contains("hooks-failed(2 events delivered; hook 1 failed: exit status: 1)"),
        "{log}"
    );
    // Backing off: the next run leaves it alone.
    r.run();
    assert_eq!(r.file("tries").lines().count(), 1);
    // Time passes; it works now and gets the same two events again.
    std::fs::remove_file(env.path("fail")).unwrap();
    r.retry_now();
    r.publish("Three");
    r.run();
    assert_eq!((r.cursor(1), r.failures(1)), (3, 0));
    let titles: Vec<Value> = json_lines(&r.file("got1"))
        .into_iter()
        .map(|e| e["title"].clone())
        .collect();
    assert_eq!(titles, ["One", "Two", "One", "Two", "Three"]);
    assert_eq!(json_lines(&r.file("got2")).len(), 3);
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_its_children_and_counts_as_failed() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.bo(&["setting", "hook-timeout", "1"]);
    r.add("sleep 30 & echo $! > child; echo started; wait", &[]);
    r.publish("Slow");
    let t0 = Instant::now();
    r.run();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!((r.cursor(1), r.failures(1)), (0, 1));
    let err: String = r.sql("SELECT last_error FROM bo_ledger WHERE task = 'hooks'");
    assert_eq!(err, "timed out after 1 s");
    let out: String = r.sql("SELECT last_output FROM bo_ledger WHERE task = 'hooks'");
    assert_eq!(out, "started\n");
    let child: u32 = r.file("child").trim().parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || crate::harness::proc_stat(child)
            .is_none_or(|s| s.state == 'Z')),
        "the hook's child {child} survived"
    );
}

#[test]
fn megabytes_of_output_are_captured_bounded() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.add(
        "echo BEGIN; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END >&2; exit 5",
        &[],
    );
    r.publish("Loud");
    r.run();
    let out: String = r.sql("SELECT last_output FROM bo_ledger WHERE task = 'hooks'");
    assert!(out.len() <= 64 * 1024 + 100, "{}", out.len());
    assert!(out.starts_with("BEGIN\nxxx"));
    assert!(out.ends_with("END\n"), "{}", &out[out.len() - 50..]);
    assert!(out.contains("bytes of output cut"));
    let log = r.file("run.log");
    assert!(log.lines().count() == 1 && log.len() < 1000, "{log}");
    assert!(log.contains("exit status: 5"), "{log}");
}

#[test]
fn a_hook_may_read_and_write_the_repository() {
    let env = Env::new();
    let r = Repo::new(&env);
    // Rollback journal (the default): a lock held by the worker would make
    // the hook's write wait out its busy timeout and fail.
    r.add(
        "if grep -q '\"kind\":\"wiki\"'; then %F publish -R %R --kind derived --title 'from the hook' --no-trigger && %F hook list -R %R > list; fi",
        &[],
    );
    r.publish("Original");
    let t0 = Instant::now();
    r.run();
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(r.cursor(1), 1);
    let kind: String = r.sql("SELECT kind FROM bo_event WHERE eventid = 2");
    assert_eq!(kind, "derived");
    assert!(r.file("list").contains("1 hook"), "{}", r.file("list"));
    // The next run gives the hook its own event, which it ignores.
    r.run();
    assert_eq!(r.cursor(1), 2);
    assert_eq!(r.sql::<i64>("SELECT count(*) FROM bo_event"), 2);
}

#[test]
fn a_new_hook_starts_from_the_newest_event_unless_from_start() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.publish("Old 1");
    r.publish("Old 2");
    r.add("cat >> new", &[]);
    r.add("cat >> all", &["--from-start"]);
    r.publish("New");
    r.run();
    let titles = |f: &str| -> Vec<Value> {
        json_lines(&r.file(f))
            .into_iter()
            .map(|e| e["title"].clone())
            .collect()
    };
    assert_eq!(titles("new"), ["New"]);
    assert_eq!(titles("all"), ["Old 1", "Old 2", "New"]);
}

#[test]
fn status_reports_a_failing_hook_with_its_last_output_and_test_runs_it() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.bo(&["setting", "hook-max-failures", "2"]);
    r.add("echo \"disk on fire\"; exit 7", &[]);
    r.publish("Event");
    r.run();
    assert!(!r.bo(&["status"]).contains("is failing"));
    r.retry_now();
    r.run();
    assert_eq!(r.failures(1), 2);
    let status = r.bo(&["status"]);
    assert!(
        status.contains("hook 1 is failing (2 failures in a row): exit status: 7: disk on fire"),
        "{status}"
    );
    let log = r.file("run.log");
    assert!(
        log.contains("hook 1 failing (2 failures in a row): exit status: 7: disk on fire"),
        "{log}"
    );
    // Still retried, at a backoff.
    let next: i64 = r.sql("SELECT next_attempt FROM bo_ledger WHERE task = 'hooks'");
    assert!(next > crate::harness::now());
    // `hook test` runs it without moving anything.
    let out = Cmd::backoffice()
        .args(["hook", "test", "1", "-R", r.r()])
        .output();
    let text = out.stdout();
    assert!(text.contains("exit status: 7"), "{text}");
    assert!(text.contains("disk on fire"), "{text}");
    assert_eq!(r.failures(1), 2);
    assert_eq!(r.cursor(1), 0);
    // list, edit, remove.
    r.bo(&["hook", "edit", "1", "--command", "true", "--seq", "3"]);
    let list = r.bo(&["hook", "list"]);
    assert!(
        list.contains("true") && list.contains("after-event"),
        "{list}"
    );
    r.retry_now();
    r.run();
    assert_eq!((r.cursor(1), r.failures(1)), (1, 0));
    r.bo(&["hook", "remove", "1"]);
    assert!(r.bo(&["hook", "list"]).contains("0 hooks"));
}

#[test]
fn hooks_written_by_fossil_are_adopted() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.publish("Before");
    rusqlite::Connection::open(&r.path)
        .unwrap()
        .execute(
            "REPLACE INTO config(name, value, mtime) VALUES ('hooks', ?1, 0)",
            [r#"[{"type":"after-receive","cmd":"cat >> got","seq":1},{"type":"disabled","cmd":"touch never","seq":2}]"#],
        )
        .unwrap();
    // The first run only adopts them (from the newest event on).
    r.run();
    r.publish("After");
    r.run();
    let got = json_lines(&r.file("got"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["title"], "After");
    assert!(!env.path("never").exists());
    let hooks: String = r.sql("SELECT value FROM config WHERE name = 'hooks'");
    assert!(
        hooks.contains(r#""id":1"#) && hooks.contains(r#""type":"disabled""#),
        "{hooks}"
    );
}

#[test]
fn publishing_triggers_a_detached_worker_that_runs_the_hooks() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.add("cat >> got", &[]);
    // With the after-request check (no --no-trigger).
    r.bo(&["publish", "--kind", "wiki", "--title", "Triggered"]);
    assert!(
        wait_until(Duration::from_secs(10), || r
            .file("got")
            .contains("Triggered")),
        "no worker ran the hook"
    );
    assert!(wait_until(Duration::from_secs(5), || r.cursor(1) == 1));
}

/// True while `pid` is a running (not zombie) process.
fn alive(pid: u32) -> bool {
    crate::harness::proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

fn pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Issue 10 item 6: a worker SIGKILLed mid-hook takes the hook's whole
/// process tree with it — the shell, a background child, and one that left
/// the process group with `setsid` — so the next worker's run of the same
/// batch never overlaps with the old one.
#[test]
fn a_killed_workers_hook_tree_dies_with_it_and_never_overlaps_the_next_run() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.bo(&["setting", "backoffice-lease-time", "1"]);
    // A second run records any process of the first that is still alive.
    r.add(
        "for p in $(cat pids 2>/dev/null); do \
           s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); \
           [ -n \"$s\" ] && [ \"$s\" != Z ] && echo \"$p $s\" >> overlaps; \
         done; \
         if [ -e second ]; then cat > got; exit 0; fi; \
         echo $$ >> pids; sleep 300 & echo $! >> pids; \
         setsid sleep 300 & echo $! >> pids; \
         touch started; wait",
        &[],
    );
    r.publish("Once");
    let mut worker = Cmd::backoffice().args(["run", r.r()]).spawn();
    let started = wait_until(Duration::from_secs(20), || {
        r.dir.join("started").exists() && pids(&r.file("pids")).len() == 3
    });
    if !started {
        crate::harness::kill(worker);
        panic!("the hook did not start");
    }
    let tree = pids(&r.file("pids"));
    assert!(tree.iter().all(|&p| alive(p)), "{tree:?}");
    worker.kill().unwrap();
    crate::harness::wait_child(&mut worker, Duration::from_secs(5), "the killed worker");
    let survivors = || {
        tree.iter()
            .copied()
            .filter(|&p| alive(p))
            .collect::<Vec<_>>()
    };
    let gone = wait_until(Duration::from_secs(5), || survivors().is_empty());
    let left = survivors();
    for &p in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    assert!(
        gone,
        "hook processes outlived their killed worker: {left:?}"
    );
    // The next worker runs the same batch, alone.
    std::fs::write(r.dir.join("second"), "").unwrap();
    r.run();
    assert_eq!(r.cursor(1), 1);
    assert_eq!(json_lines(&r.file("got")).len(), 1);
    assert_eq!(r.file("overlaps"), "", "the two runs overlapped");
}

/// Issue 10 item 17: a hook that leaves a `setsid` process holding its
/// output pipe costs a long-lived host (`run --poll`) nothing: no thread
/// waits on that pipe, and the process itself ends with the hook's run.
#[test]
fn a_hook_leaving_a_setsid_process_on_its_output_leaks_no_thread_in_a_poller() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.add("setsid sleep 300 & echo $! >> bg; cat >> got", &[]);
    let poller = Cmd::backoffice()
        .args(["run", "--poll", "1", "--nolease", r.r()])
        .spawn();
    let pid = poller.id();
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut counts = Vec::new();
    let mut ok = true;
    for i in 1..=6 {
        r.publish(&format!("Event {i}"));
        ok = wait_until(Duration::from_secs(20), || {
            json_lines(&r.file("got")).len() == i && pids(&r.file("bg")).len() == i
        });
        if !ok {
            break;
        }
        // The run has finished with the hook when the cursor moved.
        ok = wait_until(Duration::from_secs(10), || r.cursor(1) == i as i64);
        if !ok {
            break;
        }
        // Let the run's own short-lived threads end.
        std::thread::sleep(Duration::from_millis(300));
        counts.push(threads());
    }
    let bg = pids(&r.file("bg"));
    let left: Vec<u32> = bg.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    crate::harness::kill(poller);
    assert!(ok, "the poller did not run the hook six times: {counts:?}");
    // One leaked thread per run would make the count grow by five.
    assert!(
        counts[5] <= counts[0] + 1,
        "threads of the poller grew run after run: {counts:?}"
    );
    assert!(
        left.is_empty(),
        "setsid children of the hook survived: {left:?}"
    );
}

/// A hook that removes itself while it runs (or is removed by another
/// process meanwhile) leaves no state behind: recording its run must not
/// bring back a ledger entry for a hook that is gone, or that entry, behind
/// the newest event with no hook to run, would keep the check reporting
/// work forever.
#[test]
fn a_hook_removed_while_it_runs_leaves_no_state_behind() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.add("%F hook remove 1 -R %R > removed; exit 1", &[]);
    r.publish("One");
    r.run();
    assert!(
        r.file("removed").contains("removed hook 1"),
        "{}",
        r.file("removed")
    );
    assert_eq!(
        r.sql::<i64>("SELECT count(*) FROM bo_ledger WHERE task = 'hooks'"),
        0
    );
    let status = r.bo(&["status"]);
    assert!(!status.contains("hook 1"), "{status}");
}

/// True once process `pid` has `path` open.
fn has_open(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
    })
}

/// Issue 11 item 4: hook state of an older release (`bo_hook_state`)
/// upgrades in place into the retry ledger, whole, while several processes
/// — workers and `hook add` — race to be the first to touch it: each
/// re-checks inside its own `BEGIN IMMEDIATE`, so exactly one moves the
/// rows and none fails or loses one.
///
/// To make the race real, the test holds the write lock while the racers
/// start, so they all find the old table before any can move it; the
/// ledger and the event log already exist, so creating them does not
/// serialise the racers either.
#[test]
fn hook_state_of_an_older_release_upgrades_in_place_under_racing_processes() {
    let env = Env::new();
    let r = Repo::new(&env);
    r.publish("One");
    r.publish("Two");
    // Every other table of hooks made beforehand (as a release with the
    // ledger would have), so creating one does not serialise the racers.
    r.add("true", &[]);
    r.bo(&["hook", "remove", "1"]);
    let later = crate::harness::now() + 100_000;
    let c = rusqlite::Connection::open(&r.path).unwrap();
    let hooks = r#"[{"type":"after-event","cmd":"cat >> got1","seq":10,"id":1},{"type":"after-event","cmd":"cat >> got2","seq":20,"id":2}]"#;
    for (name, value) in [
        ("hooks", hooks),
        ("backoffice-hooks-seen", hooks),
        ("backoffice-hooks-last-id", "2"),
    ] {
        c.execute(
            "REPLACE INTO config(name, value, mtime) VALUES (?1, ?2, 0)",
            [name, value],
        )
        .unwrap();
    }
    // The table as release 0.1 created it; hook 1 failing and backing
    // off, hook 2 up to date: a run has nothing to deliver.
    c.execute_batch(&format!(
        "CREATE TABLE bo_hook_state(
           hookid INTEGER PRIMARY KEY,
           cursor INTEGER NOT NULL,
           failures INTEGER NOT NULL DEFAULT 0,
           next_attempt INTEGER NOT NULL DEFAULT 0,
           last_run INTEGER,
           last_error TEXT,
           last_output TEXT
         );
         INSERT INTO bo_hook_state VALUES (1, 1, 2, {later}, 1700000000, 'exit status: 1', 'old output');
         INSERT INTO bo_hook_state VALUES (2, 2, 0, 0, 1700000001, NULL, 'fine');"
    ))
    .unwrap();
    // Read-only commands show the old state before any upgrade.
    assert!(r.bo(&["hook", "list"]).contains("2 failure(s)"));
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Workers log each task's failure (their exit status does not count
    // it): every worker gets a log file to show it.
    let log = |i: usize| r.dir.join(format!("racer{i}.log"));
    let mut racers: Vec<(String, std::process::Child)> = (0..6)
        .map(|i| {
            let cmd = if i % 3 == 2 {
                Cmd::backoffice().args(["hook", "add", "--command", "true", "-R"])
            } else {
                Cmd::backoffice()
                    .args(["run", "--nolease", "--logfile"])
                    .arg(log(i))
            };
            let child = cmd
                .arg(r.r())
                .spawn_with(std::process::Stdio::null(), std::process::Stdio::piped());
            (format!("racer {i}"), child)
        })
        .collect();
    let opened = wait_until(Duration::from_secs(20), || {
        racers.iter().all(|(_, ch)| has_open(ch.id(), &r.path))
    });
    // A margin for each to get from opening the file to its write (the
    // busy timeout is 5 s); a racer that is late only makes the race milder.
    std::thread::sleep(Duration::from_millis(500));
    c.execute_batch("COMMIT").unwrap();
    drop(c);
    let mut failed = Vec::new();
    for (i, (what, child)) in racers.iter_mut().enumerate() {
        let status = crate::harness::wait_child(child, Duration::from_secs(60), what);
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
        let logged = std::fs::read_to_string(log(i)).unwrap_or_default();
        if !status.success() || logged.contains("failed") {
            failed.push(format!("{what} ({status}): {err}{logged}"));
        }
    }
    assert!(opened, "the racers did not all open the repository");
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(
        r.sql::<i64>("SELECT count(*) FROM sqlite_schema WHERE name = 'bo_hook_state'"),
        0,
        "the old table is still there"
    );
    let rows: String = r.sql(
        "SELECT group_concat(target || ':' || cursor || ':' || failures || ':' || next_attempt
                             || ':' || last_run || ':' || coalesce(last_error, '-')
                             || ':' || last_output, ' ')
         FROM (SELECT * FROM bo_ledger WHERE task = 'hooks' AND target IN ('1', '2') ORDER BY target)",
    );
    assert_eq!(
        rows,
        format!("1:1:2:{later}:1700000000:exit status: 1:old output 2:2:0:0:1700000001:-:fine")
    );
    // The two `hook add`s got new ids and entries of their own.
    assert_eq!(
        r.sql::<i64>("SELECT count(*) FROM bo_ledger WHERE task = 'hooks'"),
        4
    );
    let list = r.bo(&["hook", "list"]);
    assert!(
        list.contains("4 hooks") && list.contains("2 failure(s)"),
        "{list}"
    );
    assert_eq!(r.file("got1"), "", "a backing-off hook ran");
    assert_eq!(r.file("got2"), "", "an up-to-date hook ran");
}

/// Retention of the event log (`event-retention-days`) through the real
/// binary: a `backoffice run` deletes only the events older than the period
/// that every task is done with. A hook that fails keeps its cursor and so
/// every event after it, however old; once it succeeds, the next purge
/// deletes them; an event younger than the period is never deleted.
///
/// A purge happens at most once a day, spaced by the `config` row
/// `backoffice-event-purge` (the last purge's time). A test cannot wait a
/// day, so it moves that row back a day, which is exactly what the
/// passing of a day does to it.
#[test]
fn retention_deletes_only_what_every_task_is_done_with() {
    let env = Env::new();
    let r = Repo::new(&env);
    let status = || r.bo(&["status"]);
    assert!(
        status().contains("event log:  every event kept (event-retention-days 0)"),
        "{}",
        status()
    );
    r.bo(&["setting", "event-retention-days", "1"]);
    assert!(
        status().contains("event log:  events older than 1 day purged once every task is done with them; never purged yet"),
        "{}",
        status()
    );
    r.add("cat >> got1; test ! -e fail", &[]);
    r.add("cat >> got2", &[]);
    let now = crate::harness::now();
    let db = || rusqlite::Connection::open(&r.path).unwrap();
    // Publishes `title` as if it had happened `age` seconds ago.
    let publish_aged = |title: &str, age: i64| {
        r.publish(title);
        db().execute(
            "UPDATE bo_event SET mtime = ?1 WHERE eventid = (SELECT max(eventid) FROM bo_event)",
            [now - age],
        )
        .unwrap();
    };
    let ids = || -> Vec<i64> {
        db().prepare("SELECT eventid FROM bo_event ORDER BY eventid")
            .unwrap()
            .query_map([], |x| x.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let a_day_passes = || {
        let n = db()
            .execute(
                "UPDATE config SET value = CAST(value AS INTEGER) - 86400
                 WHERE name = 'backoffice-event-purge'",
                [],
            )
            .unwrap();
        assert_eq!(n, 1, "a run purged and recorded it");
    };
    const DAY: i64 = 86_400;

    // Three old events; both hooks take them. The newest event always
    // stays (new events must never reuse an id below the cursors).
    for t in ["old 1", "old 2", "old 3"] {
        publish_aged(t, 10 * DAY);
    }
    r.run();
    assert_eq!((r.cursor(1), r.cursor(2)), (3, 3));
    assert_eq!(ids(), [3]);
    // `status` says when the log was last purged.
    assert!(
        status().contains("; last purged moments ago ("),
        "{}",
        status()
    );

    // Hook 1 now fails: its cursor stays at 3. Three more old events and
    // two young ones (one just inside the period).
    std::fs::write(env.path("fail"), "").unwrap();
    for t in ["old 4", "old 5", "old 6"] {
        publish_aged(t, 10 * DAY);
    }
    publish_aged("young 7", DAY - 3600);
    publish_aged("young 8", 0);
    let err = r.run();
    assert_eq!(
        (r.cursor(1), r.failures(1), r.cursor(2)),
        (3, 1, 8),
        "{err}"
    );
    // Purged today already: nothing more goes.
    assert_eq!(ids(), [3, 4, 5, 6, 7, 8]);
    // A day later: what every task is done with (up to hook 1's 3) goes;
    // what the failing hook has not had stays, old as it is.
    a_day_passes();
    r.run();
    assert_eq!(r.failures(1), 1, "still backing off");
    assert_eq!(ids(), [4, 5, 6, 7, 8]);

    // Hook 1 succeeds, and gets every event it had not had: none was lost.
    std::fs::remove_file(env.path("fail")).unwrap();
    r.retry_now();
    r.run();
    assert_eq!(r.cursor(1), 8);
    let got: Vec<i64> = json_lines(&r.file("got1"))
        .iter()
        .map(|e| e["eventid"].as_i64().unwrap())
        .collect();
    // 1-3, the failed attempt at 4-8, then 4-8 again.
    assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 4, 5, 6, 7, 8]);
    // The next purge deletes the old rest; the young ones stay.
    a_day_passes();
    r.run();
    assert_eq!(ids(), [7, 8]);
    // And stay, a day later still (nothing is older than the period).
    a_day_passes();
    r.run();
    assert_eq!(ids(), [7, 8]);
}
