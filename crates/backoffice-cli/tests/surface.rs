//! Issue 14, part 4: a command line that behaves the same everywhere. The
//! repository named the same ways in every command, secrets kept off
//! command lines, what `run` says by hand and keeps quiet under cron,
//! progress only on a terminal, and the small things (a near-miss setting
//! name, column names, seconds counted down).

use crate::harness::{AppRepo, Cmd, Env};

#[test]
fn a_mistyped_setting_name_suggests_the_one_meant() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    let err = Cmd::backoffice()
        .args(["setting", "-R", app.r(), "email-sned-method", "dir"])
        .output()
        .failure();
    assert!(
        err.contains("unknown setting `email-sned-method`; did you mean `email-send-method`?"),
        "{err}"
    );
    // Nothing like it: no guess, the list of names only.
    let err = Cmd::backoffice()
        .args(["setting", "-R", app.r(), "colour"])
        .output()
        .failure();
    assert!(!err.contains("did you mean"), "{err}");
    assert!(err.contains("(known: backoffice-"), "{err}");
}

#[test]
fn subscriber_list_names_its_columns() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    app.bo(&["subscriber", "add", "ann@example.org", "--verified"]);
    let list = app.bo(&["subscriber", "list"]);
    let mut lines = list.lines();
    let head = lines.next().unwrap_or_default();
    let words: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(words, ["id", "address", "mode", "state", "kinds"], "{list}");
    let row = lines.next().unwrap_or_default();
    // The columns line up: each name starts where its value does.
    assert_eq!(head.find("address"), row.find("ann@"), "{list}");
    assert_eq!(head.find("mode"), row.find("alerts"), "{list}");
    assert_eq!(head.find("state"), row.find("active"), "{list}");
    // No subscribers: no header over nothing.
    let env2 = Env::new();
    let empty = AppRepo::new(&env2, "app.db");
    assert_eq!(empty.bo(&["subscriber", "list"]), "0 subscribers\n");
}

#[test]
fn the_near_future_is_counted_in_seconds() {
    let env = Env::new();
    let r = env.repo("r.db", 50);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    let st = Cmd::host().args(["status", repo]).output().success();
    let line = st
        .lines()
        .find(|l| l.starts_with("lease:"))
        .unwrap_or_default();
    // "the next run may start in 49 seconds" (the exact count depends on
    // how long the run took), never "in a few seconds".
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = words
        .windows(3)
        .find(|w| w[0] == "in" && w[2] == "seconds")
        .and_then(|w| w[1].parse::<u32>().ok());
    assert!(matches!(n, Some(1..=51)), "{st}");
    assert!(!st.contains("a few seconds"), "{st}");
}

#[test]
fn the_host_walk_through_leaves_the_first_demo_alone() {
    let env = Env::new();
    // What `backoffice demo` left in the current folder.
    let first = env.path("backoffice-demo");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("demo.db"), b"the first demo's data").unwrap();
    std::fs::write(first.join("backoffice.log"), b"its log\n").unwrap();
    let out = Cmd::host()
        .arg("demo")
        .current_dir(env.dir())
        .output()
        .success();
    assert_eq!(
        std::fs::read(first.join("demo.db")).unwrap(),
        b"the first demo's data",
        "{out}"
    );
    assert_eq!(
        std::fs::read(first.join("backoffice.log")).unwrap(),
        b"its log\n"
    );
    let own = env.path("backoffice-host-demo");
    assert!(own.join("demo.db").is_file(), "{out}");
    assert!(
        out.contains(&own.canonicalize().unwrap().display().to_string()),
        "{out}"
    );
}

/// Every command on one repository, as (words before REPO, words after):
/// REPO goes right after the command (before a subcommand's action), -R
/// anywhere.
const ONE_REPO: &[(&[&str], &[&str])] = &[
    (&["lease"], &[]),
    (&["status"], &[]),
    (&["trigger"], &["--quiet"]),
    (&["maintain"], &[]),
    (&["token"], &["--check"]),
    (&["setting"], &["backoffice-lease-time"]),
    (
        &["publish"],
        &["--kind", "wiki", "--title", "Hi", "--no-trigger"],
    ),
    (&["subscriber"], &["list"]),
    (&["outbox"], &["list"]),
    (&["hook"], &["list"]),
    (&["webhook"], &["list"]),
    (&["peer"], &["list"]),
    (&["schedule"], &["list"]),
];

#[test]
fn every_command_takes_the_repository_as_repo_or_with_dash_r() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    let r = app.r();
    for (cmd, rest) in ONE_REPO {
        let plain = Cmd::backoffice()
            .args(*cmd)
            .arg(r)
            .args(*rest)
            .output()
            .success();
        let flag = Cmd::backoffice()
            .args(*cmd)
            .args(*rest)
            .args(["-R", r])
            .output()
            .success();
        // The same answer both ways (publish numbers its events; the
        // status and lease pages tell times that may tick).
        if !matches!(cmd[0], "publish" | "status" | "lease" | "maintain") {
            assert_eq!(plain, flag, "{cmd:?}");
        }
        let both = Cmd::backoffice()
            .args(*cmd)
            .arg(r)
            .args(*rest)
            .args(["-R", r])
            .output()
            .failure();
        assert!(
            both.contains("given twice") || both.contains("cannot be used with"),
            "{cmd:?}: {both}"
        );
        let neither = Cmd::backoffice().args(*cmd).args(*rest).output();
        assert!(!neither.out.status.success(), "{cmd:?}");
        assert!(
            neither.stderr().contains("no repository given") || neither.stderr().contains("<REPO"),
            "{cmd:?}: {}",
            neither.stderr()
        );
    }
    // Two events: one published each way.
    let events: i64 = rusqlite::Connection::open(&app.path)
        .unwrap()
        .query_row("SELECT count(*) FROM bo_event", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 2);
}

#[test]
fn a_repository_is_never_guessed_from_the_words() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    let r = app.r();
    // Files named like a setting and like an action, in the current folder.
    for f in ["backoffice-lease-time", "list"] {
        std::fs::copy(&app.path, env.path(f)).unwrap();
    }
    let dir = env.dir();
    // setting: without -R the first argument is the repository...
    Cmd::backoffice()
        .args(["setting", r, "backoffice-lease-time", "7"])
        .current_dir(dir)
        .output()
        .success();
    assert!(
        app.bo(&["setting", "backoffice-lease-time"])
            .contains("backoffice-lease-time    7"),
    );
    // ...with -R the arguments are NAME VALUE, though NAME is also a file.
    Cmd::backoffice()
        .args(["setting", "-R", r, "backoffice-lease-time", "8"])
        .current_dir(dir)
        .output()
        .success();
    assert!(
        app.bo(&["setting", "backoffice-lease-time"])
            .contains("backoffice-lease-time    8"),
    );
    let err = Cmd::backoffice()
        .args(["setting", "-R", r, "backoffice-lease-time", "9", "10"])
        .output()
        .failure();
    assert!(
        err.contains("with -R REPO, `setting` takes NAME [VALUE]"),
        "{err}"
    );
    // An action's name is the action even when a file has that name; the
    // file is reached with its folder.
    let err = Cmd::backoffice()
        .args(["subscriber", "list"])
        .current_dir(dir)
        .output()
        .failure();
    assert!(err.contains("no repository given"), "{err}");
    Cmd::backoffice()
        .args(["subscriber", "./list", "add", "ann@example.org"])
        .current_dir(dir)
        .output()
        .success();
    let list = Cmd::backoffice()
        .args(["subscriber", "./list", "list"])
        .current_dir(dir)
        .output()
        .success();
    assert!(list.contains("ann@example.org"), "{list}");
    assert!(!app.bo(&["subscriber", "list"]).contains("ann@"));
    // The help says so.
    let help = Cmd::backoffice()
        .args(["subscriber", "--help"])
        .output()
        .success();
    assert!(
        help.contains("Usage: backoffice subscriber [OPTIONS] [REPO] <COMMAND>"),
        "{help}"
    );
    assert!(help.contains("(`./list`)"), "{help}");
    let help = Cmd::backoffice()
        .args(["setting", "--help"])
        .output()
        .success();
    assert!(help.contains("with -R the"), "{help}");
}

/// Runs `backoffice ARGS` with `input` on its standard input.
fn with_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Cmd::backoffice()
        .args(args)
        .spawn_with(std::process::Stdio::piped(), std::process::Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// The one text column `sql` selects, row by row.
fn column(app: &AppRepo, sql: &str) -> Vec<Option<String>> {
    let c = rusqlite::Connection::open(&app.path).unwrap();
    let mut st = c.prepare(sql).unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn secrets_come_from_files_stdin_or_the_environment_and_are_never_printed() {
    let env = Env::new();
    let app = AppRepo::new(&env, "app.db");
    let r = app.r();
    let url = "http://127.0.0.1:9/hook";
    let printed = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Webhook secrets: a file (its line end dropped), standard input, the
    // environment.
    let file = env.path("secret");
    std::fs::write(&file, "file-secret-0123456789\n").unwrap();
    let out = Cmd::backoffice()
        .args(["webhook", r, "add", url, "--secret-file"])
        .arg(&file)
        .output();
    let shown = printed(&out.out);
    assert!(out.out.status.success(), "{shown}");
    assert!(!shown.contains("file-secret-0123456789"), "{shown}");
    let out = with_stdin(
        &["webhook", r, "add", url, "--secret-file", "-"],
        "stdin-secret-0123456789\r\n",
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(!printed(&out).contains("stdin-secret-0123456789"));
    let out = Cmd::backoffice()
        .args(["webhook", r, "add", url])
        .env("BACKOFFICE_WEBHOOK_SECRET", "env-secret-0123456789")
        .output();
    assert!(out.out.status.success(), "{}", printed(&out.out));
    assert!(!printed(&out.out).contains("env-secret-0123456789"));
    assert_eq!(
        column(&app, "SELECT secret FROM bo_webhook ORDER BY id"),
        [
            Some("file-secret-0123456789".to_owned()),
            Some("stdin-secret-0123456789".to_owned()),
            Some("env-secret-0123456789".to_owned()),
        ]
    );
    let list = app.bo(&["webhook", "list"]);
    assert!(!list.contains("secret-0123456789"), "{list}");

    // No secret anywhere, an empty one, one too short: each a clear error
    // that does not repeat it.
    let err = Cmd::backoffice()
        .args(["webhook", r, "add", url])
        .env_remove("BACKOFFICE_WEBHOOK_SECRET")
        .output()
        .failure();
    assert!(err.contains("needs a secret: --secret-file FILE"), "{err}");
    std::fs::write(&file, "\n").unwrap();
    let err = Cmd::backoffice()
        .args(["webhook", r, "add", url, "--secret-file"])
        .arg(&file)
        .output()
        .failure();
    assert!(
        err.contains("the webhook secret from ") && err.contains("is empty"),
        "{err}"
    );
    let out = with_stdin(
        &["webhook", r, "add", url, "--secret-file", "-"],
        "short-pw\n",
    );
    assert!(!out.status.success());
    assert!(
        printed(&out).contains("at least 16 characters"),
        "{}",
        printed(&out)
    );
    assert!(!printed(&out).contains("short-pw"), "{}", printed(&out));
    assert_eq!(column(&app, "SELECT secret FROM bo_webhook").len(), 3);

    // Peer tokens: standard input, the environment; a file peer ignores a
    // token left in the environment.
    let out = with_stdin(
        &[
            "peer",
            r,
            "add",
            "http://127.0.0.1:9/replica/a",
            "--token-file",
            "-",
        ],
        "peer-token-0123456789\n",
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(!printed(&out).contains("peer-token-0123456789"));
    let out = Cmd::backoffice()
        .args(["peer", r, "add", "http://127.0.0.1:9/replica/b"])
        .env("BACKOFFICE_PEER_TOKEN", "env-token-0123456789")
        .output();
    assert!(out.out.status.success(), "{}", printed(&out.out));
    let backup = env.path("backup.db");
    Cmd::backoffice()
        .args(["peer", r, "add"])
        .arg(&backup)
        .env("BACKOFFICE_PEER_TOKEN", "env-token-0123456789")
        .output()
        .success();
    assert_eq!(
        column(&app, "SELECT token FROM bo_peer ORDER BY peerid"),
        [
            Some("peer-token-0123456789".to_owned()),
            Some("env-token-0123456789".to_owned()),
            None,
        ]
    );

    // A secret setting from standard input, shown masked; a refused one is
    // not printed back either.
    let out = with_stdin(
        &[
            "setting",
            r,
            "email-send-relay-password",
            "--value-file",
            "-",
        ],
        "smtp-pass-0123\n",
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        printed(&out).contains("email-send-relay-password ********"),
        "{}",
        printed(&out)
    );
    assert!(!printed(&out).contains("smtp-pass"));
    let c = rusqlite::Connection::open(&app.path).unwrap();
    let stored: String = c
        .query_row(
            "SELECT value FROM config WHERE name = 'email-send-relay-password'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, "smtp-pass-0123");
    let out = with_stdin(
        &[
            "setting",
            r,
            "email-send-relay-password",
            "--value-file",
            "-",
        ],
        "two\nlines-pass\n",
    );
    assert!(!out.status.success());
    assert!(printed(&out).contains("one line"), "{}", printed(&out));
    assert!(!printed(&out).contains("lines-pass"), "{}", printed(&out));
    let err = Cmd::backoffice()
        .args([
            "setting",
            r,
            "email-self",
            "x@example.org",
            "--value-file",
            "-",
        ])
        .output()
        .failure();
    assert!(err.contains("as VALUE or with --value-file"), "{err}");
}

/// A repository whose last run's lease (2 s) still runs, with work due:
/// a new worker waits on deck until it ends.
fn just_ran(env: &Env) -> crate::harness::TestRepo {
    let r = env.repo("r.db", 2);
    let repo = r.path.to_str().unwrap().to_owned();
    r.publish(1);
    Cmd::host().args(["run", &repo]).output().success();
    r.publish(1);
    r
}

#[test]
fn run_by_hand_says_it_waits_on_deck_and_until_when() {
    let env = Env::new();
    let r = just_ran(&env);
    let repo = r.path.to_str().unwrap();
    let done = Cmd::host().args(["run", "-v", repo]).output();
    assert!(done.out.status.success(), "{}", done.stderr());
    let err = done.stderr();
    // "r.db: waiting on deck until 13:25:01 UTC (2 s); the last run's lease
    // has not ended yet", then the run's own line.
    let line = err
        .lines()
        .find(|l| l.contains(": waiting on deck until "))
        .unwrap_or_else(|| panic!("{err}"));
    let after = line.split("until ").nth(1).unwrap_or_default();
    let clock = &after[..8];
    assert!(
        clock.len() == 8 && clock.as_bytes()[2] == b':' && clock.as_bytes()[5] == b':',
        "{line}"
    );
    assert!(after[8..].starts_with(" UTC ("), "{line}");
    let secs: u32 = after[14..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(secs <= 3, "{line}");
    assert!(err.contains(" 1 outbox elapse-time "), "{err}");
    assert_eq!(r.pending(), 0);

    // The same wait under cron (stderr not a terminal, no -v) says nothing.
    let env2 = Env::new();
    let r2 = just_ran(&env2);
    let done = Cmd::host()
        .args(["run", r2.path.to_str().unwrap()])
        .output();
    assert!(done.out.status.success());
    assert_eq!(done.stderr(), "", "quiet under cron");
    assert_eq!(r2.pending(), 0);
}

#[test]
fn run_by_hand_says_when_another_worker_is_on_deck() {
    let env = Env::new();
    let r = env.repo("r.db", 3);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    r.publish(1);
    let mut deck = Cmd::host().args(["run", repo]).spawn();
    let deck_pid = i64::from(deck.id());
    assert!(
        crate::harness::wait_until(std::time::Duration::from_secs(5), || r.lease().next.pid
            == deck_pid),
        "{:?}",
        r.lease()
    );
    let said = Cmd::host().args(["run", "--verbose", repo]).output();
    assert!(said.out.status.success());
    assert!(
        said.stderr().contains(&format!(
            "r.db: another worker ({deck_pid}) is on deck; nothing to do"
        )),
        "{}",
        said.stderr()
    );
    let quiet = Cmd::host().args(["run", repo]).output();
    assert!(quiet.out.status.success());
    assert_eq!(quiet.stderr(), "", "quiet when not a terminal");
    // On a terminal it says so unasked (a pseudo-terminal from `script`).
    if crate::harness::have("script") {
        let cmd = format!("'{}' run '{repo}'", crate::harness::host_bin().display());
        let tty = Cmd::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output();
        let out = tty.stdout();
        assert!(tty.out.status.success(), "{out}");
        assert!(
            out.contains(&format!(
                "another worker ({deck_pid}) is on deck; nothing to do"
            )),
            "{out}"
        );
    }
    crate::harness::wait_child(&mut deck, std::time::Duration::from_secs(10), "on deck");
    assert_eq!(r.pending(), 0);
}

/// `script -qec CMD /dev/null`: CMD on a pseudo-terminal; what it wrote
/// there (stdout and stderr together). None (test skipped) without `script`.
fn on_a_terminal(args: &[&str]) -> Option<String> {
    if !crate::harness::have("script") {
        return None;
    }
    let cmd = std::iter::once(crate::harness::backoffice_bin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let done = Cmd::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output();
    assert!(done.out.status.success(), "{}", done.stdout());
    Some(done.stdout())
}

/// Asserts that output for a pipe or a log has no progress in it: every
/// progress line is drawn as "\r ESC[K text", and erased with the same.
fn no_progress(what: &str, text: &str) {
    assert!(
        !text.contains('\r')
            && !text.contains('\u{1b}')
            && !text.contains('…')
            && !text.contains("sweep: ")
            && !text.contains("peer 1 "),
        "{what}: progress in piped output: {text:?}"
    );
}

#[test]
fn progress_shows_on_a_terminal_and_never_in_pipes() {
    let env = Env::new();
    // A sweep over many repositories.
    let repos: Vec<AppRepo> = (0..40)
        .map(|i| AppRepo::new(&env, &format!("r{i}.db")))
        .collect();
    let mut sweep: Vec<&str> = vec!["run"];
    sweep.extend(repos.iter().map(|r| r.r()));
    let piped = Cmd::backoffice().args(&sweep).output();
    assert!(piped.out.status.success(), "{}", piped.stderr());
    no_progress("run", &piped.stderr());
    no_progress("run", &piped.stdout());
    if let Some(tty) = on_a_terminal(&sweep) {
        assert!(
            tty.contains("\r\u{1b}[Ksweep: 1 of 40 repositories (2%)"),
            "{tty:?}"
        );
        assert!(
            tty.contains("sweep: 40 of 40 repositories (100%)"),
            "{tty:?}"
        );
        // Erased at the end: the terminal is left on a clean line.
        assert!(tty.ends_with("\r\u{1b}[K"), "{tty:?}");
    }

    // `peer sync` of a repository copied in many small steps.
    let app = &repos[0];
    let c = rusqlite::Connection::open(&app.path).unwrap();
    c.execute_batch(
        "CREATE TABLE t(v); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
         INSERT INTO t SELECT printf('%.1000c', 'x') FROM n;",
    )
    .unwrap();
    drop(c);
    app.bo(&["setting", "replicate-step-pages", "5"]);
    app.bo(&["setting", "replicate-step-pause-ms", "0"]);
    let backup = env.path("backup.db");
    app.bo(&["peer", "add", backup.to_str().unwrap()]);
    let piped = Cmd::backoffice()
        .args(["peer", app.r(), "sync", "--force"])
        .output();
    let out = piped.stdout();
    assert!(piped.out.status.success(), "{}", piped.stderr());
    assert!(out.contains(" bytes in "), "{out}");
    no_progress("peer sync", &out);
    no_progress("peer sync", &piped.stderr());
    if let Some(tty) = on_a_terminal(&["peer", app.r(), "sync", "--force"]) {
        let label = format!("peer 1 {}: ", backup.display());
        assert!(tty.contains(&format!("\r\u{1b}[K{label}")), "{tty:?}");
        assert!(tty.contains(" pages ("), "{tty:?}");
        // The result is printed on a clean line after the progress.
        assert!(
            tty.contains(&format!("\r\u{1b}[K{}: ", backup.display())),
            "{tty:?}"
        );
    }

    // `maintain --now`: its step table, and nothing else, in a pipe.
    let piped = Cmd::backoffice()
        .args(["maintain", "--now", app.r()])
        .output();
    assert!(piped.out.status.success(), "{}", piped.stderr());
    no_progress("maintain", &piped.stdout());
    no_progress("maintain", &piped.stderr());
    assert!(piped.stdout().starts_with("optimize"), "{}", piped.stdout());
    if let Some(tty) = on_a_terminal(&["maintain", "--now", app.r()]) {
        // Which step runs, and for how long, then erased before the table.
        assert!(tty.contains("\r\u{1b}[Kmaintain: "), "{tty:?}");
        assert!(tty.contains("… "), "{tty:?}");
        assert!(tty.contains("\r\u{1b}[Koptimize "), "{tty:?}");
    }
}

#[test]
fn help_and_readme_tell_the_current_state() {
    let peer = Cmd::backoffice()
        .args(["peer", "--help"])
        .output()
        .success();
    for s in [
        "over HTTP(S)",
        "backoffice serve --replica-dir",
        "https://HOST/replica/NAME",
        "16 characters",
    ] {
        assert!(peer.contains(s), "peer --help lacks {s:?}:\n{peer}");
    }
    let add = Cmd::backoffice()
        .args(["webhook", "add", "--help"])
        .output()
        .success();
    assert!(add.contains("at least 16"), "{add}");
    assert!(add.contains("--secret-file"), "{add}");
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .unwrap();
    for s in [
        "ships five tasks, run in this order: `alerts`, `hooks`,",
        "The secret must\nbe at least 16 characters",
        "must be at least 16 characters, and is never printed back",
        "./backoffice-host-demo/",
        "--secret-file",
        "--token-file",
        "--value-file",
    ] {
        assert!(readme.contains(s), "README.md lacks {s:?}");
    }
}
