//! Interoperation with the real Fossil binary (`fossil`, 2.21 here), on
//! repositories made by `fossil init`.
//!
//! * Both programs read each other's lease: `backoffice lease` prints the
//!   six lines of `fossil test-backoffice-lease` byte for byte, and Fossil
//!   reads the leases we write (extension fields and all).
//! * Our workers and Fossil's never work at the same time on one repository.
//!   Fossil's work here is an `after-receive` hook that journals its
//!   interval into the same file as the host's `outbox` task.
//! * A plain Fossil lease whose holder pid now names an unrelated, younger
//!   process does not stall us (it stalls Fossil).
//!
//! Two things about Fossil 2.21 shape these tests:
//!
//! * Fossil does not wait for a hook: `pclose2()` closes the pipes and reaps
//!   with `WNOHANG`, so the hook process runs on after the Fossil worker
//!   (and its transaction) are gone. The lease (60 s) is what keeps other
//!   workers away meanwhile, so each round waits for the hook to finish
//!   before the next `--reset`.
//! * Fossil launches hooks inside a write transaction, so nobody can rewrite
//!   the lease while a live Fossil worker is "in its hook". The one window in
//!   which a Fossil worker is alive, holds the lease and no database lock is
//!   right after taking the lease: `backoffice_work()` first opens its log
//!   file. Logging to a FIFO freezes it exactly there until the test reads
//!   the FIFO.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, Cmd, Env, TestRepo};

/// `fossil` with the environment it needs: `USER` (for `init` and wiki
/// edits) and a private `HOME` (Fossil keeps a global `.fossil` there).
fn fossil(env: &Env) -> Cmd {
    Cmd::new("fossil")
        .env("USER", "interop")
        .env("HOME", env.dir())
}

/// A fresh `fossil init` repository, with the host application's `outbox`
/// table (`host init`) and the host task's journal.
fn fossil_repo(env: &Env) -> TestRepo {
    let path = env.path("repo.fossil");
    fossil(env)
        .args(["init", path.to_str().unwrap()])
        .output()
        .success();
    Cmd::host().arg("init").arg(&path).output().success();
    let r = TestRepo {
        journal: env.path("journal"),
        path,
    };
    r.set("host-journal", &r.journal.display().to_string());
    r
}

/// Installs an `after-receive` hook that journals `enter`/`exit` around a
/// sleep of `ms` milliseconds into the host's journal, and records its own
/// pid in `hook-pids` (so the journal's intervals can be told apart).
fn add_hook(env: &Env, r: &TestRepo, ms: u64) -> PathBuf {
    let pids = env.path("hook-pids");
    let j = r.journal.display();
    let p = pids.display();
    let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
    let cmd = format!(
        "echo $$ >> '{p}'; echo enter $$ $(date +%s%N) >> '{j}'; sleep {secs}; echo exit $$ $(date +%s%N) >> '{j}'"
    );
    fossil(env)
        .args(["hook", "add", "--command", &cmd])
        .args(["--type", "after-receive", "--sequence", "1", "-R"])
        .arg(&r.path)
        .output()
        .success();
    let list = fossil(env)
        .args(["hook", "list", "-R"])
        .arg(&r.path)
        .output()
        .success();
    assert!(list.contains("after-receive"), "{list}");
    pids
}

/// New content for Fossil (a wiki page), which fires the hook at the next
/// Fossil backoffice run.
fn new_wiki_page(env: &Env, r: &TestRepo, name: &str) {
    let file = env.path("page.txt");
    std::fs::write(&file, format!("Page {name}\n")).unwrap();
    fossil(env)
        .args(["wiki", "create", name])
        .arg(&file)
        .arg("-R")
        .arg(&r.path)
        .output()
        .success();
}

fn hook_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Every `enter` in the journal has its `exit`.
fn journal_balanced(r: &TestRepo) -> bool {
    let j = r.journal();
    let n = |k: &str| j.iter().filter(|(kind, _, _)| kind == k).count();
    n("enter") == n("exit")
}

/// Asserts that no two journal intervals overlap; returns them sorted.
fn assert_no_overlap(r: &TestRepo) -> Vec<(u32, u128, u128)> {
    let runs = r.runs();
    for w in runs.windows(2) {
        assert!(
            w[0].2 <= w[1].1,
            "two workers at once: {:?} and {:?} (all runs: {runs:?})",
            w[0],
            w[1]
        );
    }
    runs
}

/// A background child that is killed and reaped when dropped, so a failing
/// assertion leaves no `sleep` or frozen `fossil` behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Waits for a child, killing it and failing the test after `limit`.
fn wait_for(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if t0.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `fossil test-backoffice-lease -R R`
fn fossil_lease_text(env: &Env, r: &TestRepo) -> String {
    fossil(env)
        .args(["test-backoffice-lease", "-R"])
        .arg(&r.path)
        .output()
        .success()
}

/// `backoffice lease -R R`
fn our_lease_text(r: &TestRepo) -> String {
    Cmd::backoffice()
        .args(["lease", "-R"])
        .arg(&r.path)
        .output()
        .success()
}

fn now_of(text: &str) -> i64 {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("now:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `now:` line in\n{text}"))
}

fn first_six(text: &str) -> Vec<String> {
    let lines: Vec<String> = text.lines().take(6).map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "fewer than six lines:\n{text}");
    lines
}

/// Both programs' lease reports, taken within the same second (retried a
/// few times if the clock ticks between them), as their first six lines.
/// Within one second the `(now+N)` annotations are comparable exactly.
fn both_reports(env: &Env, r: &TestRepo) -> (Vec<String>, Vec<String>) {
    let mut last = None;
    for _ in 0..5 {
        let theirs = fossil_lease_text(env, r);
        let ours = our_lease_text(r);
        let (a, b) = (now_of(&theirs), now_of(&ours));
        assert!((b - a).abs() <= 1, "now: {a} vs {b}");
        if a == b {
            return (first_six(&theirs), first_six(&ours));
        }
        last = Some((theirs, ours));
    }
    panic!("the clock ticked between every pair of reports: {last:?}");
}

/// Asserts that our six lines are Fossil's, byte for byte (spacing and
/// trailing blanks included); returns them.
fn assert_same_report(env: &Env, r: &TestRepo) -> Vec<String> {
    let (theirs, ours) = both_reports(env, r);
    assert_eq!(
        ours,
        theirs,
        "backoffice lease differs from fossil test-backoffice-lease:\nours:\n{}\nfossil:\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
    theirs
}

/// A report line for a pid: `idNext:     1234                 (exists)`.
fn id_line(label: &str, pid: impl std::fmt::Display, mark: &str) -> String {
    format!("{label:<11} {pid:<20} ({mark})")
}

/// The raw lease value of a report (the text between the quotes).
fn raw_lease(lines: &[String]) -> &str {
    let l = &lines[1];
    l.strip_prefix("lease:      \"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("bad lease line {l:?}"))
}

fn wait_zombie(pid: u32) {
    assert!(
        harness::wait_until(Duration::from_secs(5), || {
            harness::proc_stat(pid).is_some_and(|s| s.state == 'Z')
        }),
        "{pid} did not become a zombie"
    );
}

/// 1. We read the leases Fossil writes exactly as Fossil does: a fresh
///    repository, a lease after `fossil backoffice`, a live Fossil worker on
///    deck, and the same worker after it was killed and reaped.
#[test]
fn our_lease_report_matches_fossils_on_fossil_leases() {
    if !harness::have("fossil") {
        return;
    }
    let env = Env::new();
    let r = fossil_repo(&env);

    // Fresh repository: no lease row.
    let lines = assert_same_report(&env, &r);
    assert_eq!(lines[1], "lease:      \"\"");
    assert_eq!(lines[2], id_line("idCurrent:", 0, "done"));
    assert_eq!(
        lines[3], "tmCurrent:  0                   ",
        "Fossil pads to 20 columns"
    );

    // `fossil backoffice` takes the lease (work or not) and exits.
    fossil(&env)
        .arg("backoffice")
        .arg(&r.path)
        .output()
        .success();
    let lease = r.lease();
    assert!(lease.current.pid > 0 && lease.next.pid == 0, "{lease:?}");
    let lines = assert_same_report(&env, &r);
    assert_eq!(raw_lease(&lines), r.get("backoffice").unwrap());
    assert_eq!(lines[2], id_line("idCurrent:", lease.current.pid, "done"));
    let left: i64 = lines[3]
        .rsplit_once("(now+")
        .and_then(|(_, v)| v.strip_suffix(')'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!((50..=60).contains(&left), "Fossil's 60 s lease: {lines:?}");

    // A second `fossil backoffice` finds the lease held and queues on deck,
    // asleep for about a minute.
    let mut on_deck = Reaped(fossil(&env).arg("backoffice").arg(&r.path).spawn());
    let pid = on_deck.id();
    assert!(
        harness::wait_until(Duration::from_secs(5), || r.lease().next.pid
            == i64::from(pid)),
        "fossil {pid} did not queue on deck: {:?}",
        r.get("backoffice")
    );
    let lines = assert_same_report(&env, &r);
    assert_eq!(lines[4], id_line("idNext:", pid, "exists"));
    assert_eq!(lines[2], id_line("idCurrent:", lease.current.pid, "done"));

    // Killed but not yet reaped: Fossil's kill(pid, 0) still sees it; we do
    // not (a zombie does no work). The one intended difference.
    on_deck.kill().unwrap();
    wait_zombie(pid);
    let (theirs, ours) = both_reports(&env, &r);
    assert_eq!(theirs[4], id_line("idNext:", pid, "exists"));
    assert_eq!(ours[4], id_line("idNext:", pid, "done"));
    assert_eq!(
        [&ours[..4], &ours[5..]].concat(),
        [&theirs[..4], &theirs[5..]].concat()
    );

    // Reaped: both say done again, and agree everywhere.
    on_deck.wait().unwrap();
    let lines = assert_same_report(&env, &r);
    assert_eq!(lines[4], id_line("idNext:", pid, "done"));
}

/// 2. Fossil reads the leases we write: one of our workers working (current)
///    and another queued on deck, with our extension fields in the row.
#[test]
fn fossil_reads_our_lease_with_a_worker_working_and_one_on_deck() {
    if !harness::have("fossil") {
        return;
    }
    let env = Env::new();
    let r = fossil_repo(&env);
    r.set("backoffice-lease-time", "60");
    r.set("host-work-ms", "3000");
    r.publish(1);

    // Worker A takes the lease and works for 3 s.
    let mut a = Reaped(Cmd::host().arg("run").arg(&r.path).spawn());
    let a_pid = a.id();
    assert!(
        harness::wait_until(Duration::from_secs(5), || {
            r.journal()
                .iter()
                .any(|(k, p, _)| k == "enter" && *p == a_pid)
        }),
        "worker {a_pid} did not start working"
    );
    // Worker B finds the lease held and queues on deck.
    r.publish(1);
    let b = Reaped(Cmd::host().arg("run").arg(&r.path).spawn());
    let b_pid = b.id();
    assert!(
        harness::wait_until(Duration::from_secs(5), || r.lease().next.pid
            == i64::from(b_pid)),
        "worker {b_pid} did not queue on deck: {:?}",
        r.get("backoffice")
    );
    let lease = r.lease();
    assert_eq!(lease.current.pid, i64::from(a_pid), "{lease:?}");

    let raw = r.get("backoffice").unwrap();
    assert!(
        raw.contains(" cur-start=")
            && raw.contains(" next-start=")
            && raw.contains(" boot=")
            && raw.ends_with(" term=1"),
        "{raw}"
    );
    let lines = assert_same_report(&env, &r);
    assert_eq!(
        lines[1],
        format!("lease:      \"{raw}\""),
        "Fossil shows our raw value"
    );
    assert_eq!(lines[2], id_line("idCurrent:", a_pid, "exists"));
    assert!(
        lines[3].starts_with(&format!("tmCurrent:  {:<20} (now+", lease.current.expires)),
        "{lines:?}"
    );
    assert_eq!(lines[4], id_line("idNext:", b_pid, "exists"));
    assert!(
        lines[5].starts_with(&format!("tmNext:     {:<20} (now+", lease.next.expires)),
        "{lines:?}"
    );

    // A finishes and releases the lease (holder 0, expiry kept); B sleeps on.
    let status = wait_for(&mut a, Duration::from_secs(10), "worker A");
    assert!(status.success(), "{status}");
    let lines = assert_same_report(&env, &r);
    assert_eq!(lines[2], id_line("idCurrent:", 0, "done"));
    assert_eq!(lines[4], id_line("idNext:", b_pid, "exists"));
    assert!(r.lease().next.start.is_some());

    drop(b);
    let lines = assert_same_report(&env, &r);
    assert_eq!(lines[4], id_line("idNext:", b_pid, "done"));
}

/// 3. Several Fossil backoffice processes and several of our workers, all
///    started at once on one Fossil repository, round after round: exactly
///    one of them works per round, and no two work at the same time.
#[test]
fn fossil_and_our_workers_never_work_at_once() {
    if !harness::have("fossil") {
        return;
    }
    let env = Env::new();
    let r = fossil_repo(&env);
    r.set("host-work-ms", "400");
    let pids_file = add_hook(&env, &r, 400);
    let repo = r.path.to_str().unwrap().to_owned();

    // Rounds 0, 3: our workers start first and one of them takes the lease
    // before Fossil's start. Rounds 1, 4: the other way round. Rounds 2, 5:
    // all at once, interleaved. Either way the others run while the winner
    // works, and must stay out.
    const ROUNDS: usize = 6;
    const EACH: usize = 3;
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        Cmd::backoffice()
            .args(["lease", "--reset", "-R", &repo])
            .output()
            .success();
        r.publish(2);
        new_wiki_page(&env, &r, &format!("Round{round}"));

        let fossils = || (0..EACH).map(|_| fossil(&env).args(["backoffice", "--nodelay", &repo]));
        let hosts = || (0..EACH).map(|_| Cmd::host().args(["run", "--nodelay", &repo]));
        let (first, second): (Vec<Cmd>, Vec<Cmd>) = match round % 3 {
            0 => (hosts().collect(), fossils().collect()),
            1 => (fossils().collect(), hosts().collect()),
            _ => (
                fossils().zip(hosts()).flat_map(|(f, h)| [f, h]).collect(),
                Vec::new(),
            ),
        };
        let start = |cmds: Vec<Cmd>| -> Vec<_> {
            cmds.into_iter()
                .map(|c| std::thread::spawn(move || c.output()))
                .collect()
        };
        let mut threads = start(first);
        if !second.is_empty() {
            // After a reset there is no lease row until somebody takes it.
            assert!(
                harness::wait_until(Duration::from_secs(5), || r.get("backoffice").is_some()),
                "round {round}: nobody took the lease"
            );
            threads.extend(start(second));
        }
        for t in threads {
            t.join().unwrap().success();
        }
        // A Fossil hook outlives its worker: wait for this round's interval
        // to be complete before the next round resets the lease.
        assert!(
            harness::wait_until(Duration::from_secs(5), || {
                journal_balanced(&r) && r.runs().len() > round
            }),
            "round {round}: nobody worked, or a run never ended: {:?}",
            r.journal()
        );
        let runs = assert_no_overlap(&r);
        assert_eq!(
            runs.len(),
            round + 1,
            "round {round}: one worker per round: {runs:?}"
        );
        let fossil_won = hook_pids(&pids_file).contains(&runs.last().unwrap().0);
        match round % 3 {
            0 => assert!(!fossil_won, "round {round}: ours had the lease first"),
            1 => assert!(fossil_won, "round {round}: Fossil had the lease first"),
            _ => {}
        }
        winners.push(if fossil_won { "fossil" } else { "ours" });
    }
    eprintln!("winners by round: {winners:?}");
    let runs = assert_no_overlap(&r);
    assert_eq!(runs.len(), ROUNDS);
    // Each round we won handled every row published so far.
    let last_ours = winners.iter().rposition(|w| *w == "ours").unwrap();
    assert_eq!(r.pending(), 2 * (ROUNDS - 1 - last_ours) as i64);
}

/// 3b. The sharp case: a live Fossil worker holds a plain lease that has
///     already expired. Our no-delay worker must leave it alone (Fossil's
///     rule: the holder still exists), and take over once it has exited.
///
/// Fossil is frozen inside `backoffice_work()`, after taking the lease and
/// before running its hook, by logging to a FIFO nobody reads yet. The test
/// then rewrites the lease as "FOSSIL_PID NOW-1 0 0".
///
/// Our liveness fallback for plain leases calls a holder gone if it started
/// after the lease was taken, estimated as the expiry minus the shorter of
/// our lease time and Fossil's 60 s. A real Fossil lease only expires once
/// its holder has run for 60 s, so that holder always started before the
/// estimate. A hand-expired lease names a process only seconds old, which
/// with the default 60 s is indistinguishable from a reused pid (test 4):
/// with `backoffice-lease-time` 60 our worker does take this lease over
/// while the Fossil worker lives (checked by hand; a known limit of the
/// fallback, also hit if the wall clock steps forward by a minute while a
/// Fossil worker runs). A test cannot wait a minute, so the repository's
/// lease time is 1 s: the estimate becomes NOW-2, and the frozen Fossil
/// worker, started before the rewrite, counts as the holder.
#[test]
fn live_fossil_holder_of_an_expired_lease_is_not_overtaken() {
    if !harness::have("fossil") || !harness::have("mkfifo") {
        return;
    }
    let env = Env::new();
    let r = fossil_repo(&env);
    r.set("backoffice-lease-time", "1");
    r.set("host-work-ms", "200");
    let pids_file = add_hook(&env, &r, 500);
    new_wiki_page(&env, &r, "Sharp");
    r.publish(1);

    let fifo = env.path("fossil-log.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut f = Reaped(
        fossil(&env)
            .args(["backoffice", "--nodelay", "--logfile"])
            .arg(&fifo)
            .arg(&r.path)
            .spawn(),
    );
    let f_pid = f.id();
    assert!(
        harness::wait_until(Duration::from_secs(5), || {
            r.lease().current.pid == i64::from(f_pid)
                && harness::proc_stat(f_pid).is_some_and(|s| s.state == 'S')
        }),
        "fossil {f_pid} did not take the lease and block: {:?}",
        r.get("backoffice")
    );
    assert!(
        r.journal().is_empty(),
        "Fossil must not have reached its hook yet"
    );

    // Expire Fossil's lease under it: plain, Fossil's own pid.
    let expired = harness::now() - 1;
    r.set("backoffice", &format!("{f_pid} {expired} 0 0"));
    let lines = fossil_lease_text(&env, &r);
    assert!(
        lines.contains(&id_line("idCurrent:", f_pid, "exists")),
        "Fossil sees its worker alive:\n{lines}"
    );
    let ours_text = our_lease_text(&r);
    assert!(
        ours_text.contains(&id_line("idCurrent:", f_pid, "exists"))
            && ours_text.contains("stateCur:   running"),
        "so do we:\n{ours_text}"
    );

    // Our no-delay worker: the lease is expired but its holder lives.
    let done = Cmd::host()
        .args(["run", "--nodelay", "--trace"])
        .arg(&r.path)
        .output();
    let trace = done.stderr();
    done.success();
    assert!(trace.contains("Busy"), "{trace}");
    assert_eq!(r.pending(), 1, "our worker must not work: {trace}");
    assert!(r.journal().is_empty());
    assert_eq!(
        r.get("backoffice").unwrap(),
        format!("{f_pid} {expired} 0 0")
    );

    // Let Fossil go on: it reads the FIFO's far end, runs its hook, logs and
    // exits. Its hook runs on after it (see the module notes).
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let status = wait_for(&mut f, Duration::from_secs(10), "fossil backoffice");
    assert!(status.success(), "{status}");
    let log = reader.join().unwrap();
    assert!(log.contains("1 hooks"), "fossil's log: {log:?}");
    assert!(
        harness::wait_until(Duration::from_secs(5), || {
            journal_balanced(&r) && !r.journal().is_empty()
        }),
        "the hook did not finish: {:?}",
        r.journal()
    );

    // Now the holder is gone: our worker takes the expired lease and works.
    Cmd::host()
        .args(["run", "--nodelay"])
        .arg(&r.path)
        .output()
        .success();
    assert_eq!(r.pending(), 0);
    let runs = assert_no_overlap(&r);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        hook_pids(&pids_file).contains(&runs[0].0),
        "Fossil's hook first: {runs:?}"
    );
    assert!(
        !hook_pids(&pids_file).contains(&runs[1].0),
        "then ours: {runs:?}"
    );
}

/// 4. PID reuse, side by side: a plain Fossil lease, expired 5 s ago, whose
///    holder pid now belongs to an unrelated `sleep` started after the lease
///    was written. Our worker sees through it and works at once; Fossil's
///    `kill(pid, 0)` sees a live holder and waits on deck.
#[test]
fn reused_pid_in_a_fossil_lease_stalls_fossil_but_not_us() {
    if !harness::have("fossil") || !harness::have("timeout") {
        return;
    }
    let env = Env::new();
    let r = fossil_repo(&env);
    r.set("backoffice-lease-time", "60");
    r.publish(1);
    let sleeper = Reaped(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let s_pid = sleeper.id();
    let expired = harness::now() - 5;
    // As Fossil would have written it 65 s ago (mtime = time of writing).
    let plain = format!("{s_pid} {expired} 0 0");
    let write_plain = || {
        r.conn()
            .execute(
                "REPLACE INTO config(name, value, mtime) VALUES ('backoffice', ?1, ?2)",
                rusqlite::params![plain, expired - 60],
            )
            .unwrap();
    };
    write_plain();

    let (theirs, ours) = both_reports(&env, &r);
    assert_eq!(theirs[2], id_line("idCurrent:", s_pid, "exists"));
    assert_eq!(ours[2], id_line("idCurrent:", s_pid, "done"));
    let text = our_lease_text(&r);
    assert!(
        text.contains("stateCur:   gone (pid reused by a newer process)"),
        "{text}"
    );

    // Ours: takes over and works at once, though not in no-delay mode (had
    // it believed the `sleep`, it would wait on deck: stopped after 5 s).
    let t0 = Instant::now();
    let mut ours = Reaped(Cmd::host().arg("run").arg(&r.path).spawn());
    let status = wait_for(&mut ours, Duration::from_secs(5), "our worker");
    assert!(status.success(), "{status}");
    eprintln!("our worker took over and worked in {:?}", t0.elapsed());
    assert_eq!(r.pending(), 0);
    assert_eq!(r.runs().len(), 1);

    // Fossil, on the very same lease: still waiting when stopped after 2 s,
    // having queued itself on deck behind the `sleep`.
    write_plain();
    let t0 = Instant::now();
    let out = Cmd::new("timeout")
        .args(["-k", "2", "2", "fossil", "backoffice"])
        .arg(&r.path)
        .env("USER", "interop")
        .env("HOME", env.dir())
        .output();
    assert_eq!(
        out.out.status.code(),
        Some(124),
        "fossil should still be waiting: {}",
        out.stderr()
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let lease = r.lease();
    assert_eq!(lease.current.pid, i64::from(s_pid), "{lease:?}");
    assert!(lease.next.pid > 0, "fossil queued on deck: {lease:?}");

    drop(sleeper);
}

/// Issue 10 item 19, through the real `fossil`: `fossil hook delete` of our
/// failing hook and `fossil hook add` of a new one (no id), with no run in
/// between, is one edit as we see it. The new hook gets a new id, starts at
/// the newest event with no failures, and never receives the old backlog.
#[test]
fn a_hook_fossil_adds_after_deleting_ours_never_inherits_its_id_or_state() {
    if !harness::have("fossil") {
        return;
    }
    let env = Env::new();
    let path = env.path("repo.fossil");
    fossil(&env)
        .args(["init", path.to_str().unwrap()])
        .output()
        .success();
    let r = path.to_str().unwrap();
    let bo = |args: &[&str]| {
        Cmd::backoffice()
            .args(args)
            .args(["-R", r])
            .output()
            .success()
    };
    bo(&["hook", "add", "--command", "exit 1"]);
    for t in ["Backlog 1", "Backlog 2"] {
        bo(&["publish", "--kind", "wiki", "--title", t, "--no-trigger"]);
    }
    let _ = Cmd::backoffice().args(["run", "--nolease", r]).output();
    let failures = || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT group_concat(target || ':' || cursor || ':' || failures) FROM bo_ledger WHERE task = 'hooks'",
                [],
                |row| row.get::<_, String>(0),
            )
            .unwrap()
    };
    assert_eq!(failures(), "1:0:1");
    let got = env.path("got");
    fossil(&env)
        .args(["hook", "delete", "0", "-R", r])
        .output()
        .success();
    fossil(&env)
        .args(["hook", "add", "--command"])
        .arg(format!("cat >> '{}'", got.display()))
        .args(["--type", "after-receive", "--sequence", "1", "-R", r])
        .output()
        .success();
    // The first run adopts the edit (a new hook starts at the newest event);
    // the next delivers what is published after it.
    let _ = Cmd::backoffice().args(["run", "--nolease", r]).output();
    bo(&[
        "publish",
        "--kind",
        "wiki",
        "--title",
        "New",
        "--no-trigger",
    ]);
    let _ = Cmd::backoffice().args(["run", "--nolease", r]).output();
    let state = failures();
    assert!(
        state.starts_with("2:3:0"),
        "the new hook took over the removed one's id or state: {state}"
    );
    let lines = std::fs::read_to_string(&got).unwrap_or_default();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("\"title\":\"New\""), "{lines}");
}
