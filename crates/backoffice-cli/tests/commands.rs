//! The command-line surface: settings, status, lease, pid, and bad input.

use crate::harness::{Cmd, Env};

#[test]
fn help_explains_every_command() {
    let out = Cmd::backoffice().arg("--help").output().success();
    for c in ["run", "lease", "pid", "setting", "status", "trigger"] {
        assert!(out.contains(c), "--help lacks {c}:\n{out}");
    }
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("worker ")),
        "the internal worker command is hidden:\n{out}"
    );
    let run = Cmd::backoffice().args(["run", "--help"]).output().success();
    for flag in [
        "--poll",
        "--min",
        "--nodelay",
        "--nolease",
        "--logfile",
        "--trace",
        "--debug",
    ] {
        assert!(run.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn settings_are_validated_and_round_trip() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    let out = Cmd::backoffice()
        .args(["setting", "-R", repo])
        .output()
        .success();
    assert!(
        out.contains("backoffice-disable") && out.contains("off (default)"),
        "{out}"
    );
    assert!(out.contains("backoffice-lease-time    60"), "{out}");

    Cmd::backoffice()
        .args(["setting", "-R", repo, "backoffice-lease-time", "5"])
        .output()
        .success();
    assert_eq!(r.get("backoffice-lease-time").as_deref(), Some("5"));

    let err = Cmd::backoffice()
        .args(["setting", "-R", repo, "backoffice-lease-time", "0"])
        .output()
        .failure();
    assert!(err.contains("between 1 and 86400"), "{err}");
    let err = Cmd::backoffice()
        .args(["setting", "-R", repo, "backoffice-lease-time", "soon"])
        .output()
        .failure();
    assert!(err.contains("whole number"), "{err}");
    let err = Cmd::backoffice()
        .args(["setting", "-R", repo, "backoffice-disabled", "on"])
        .output()
        .failure();
    assert!(
        err.contains("unknown setting `backoffice-disabled`"),
        "{err}"
    );
    assert_eq!(
        r.get("backoffice-lease-time").as_deref(),
        Some("5"),
        "bad values change nothing"
    );

    Cmd::backoffice()
        .args(["setting", "-R", repo, "backoffice-disable", "yes"])
        .output()
        .success();
    assert_eq!(r.get("backoffice-disable").as_deref(), Some("on"));
    Cmd::backoffice()
        .args(["setting", "-R", repo, "--unset", "backoffice-disable"])
        .output()
        .success();
    assert_eq!(r.get("backoffice-disable"), None);
}

#[test]
fn status_tells_last_run_lease_and_what_is_due() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    let st = Cmd::backoffice()
        .args(["status", "-R", repo])
        .output()
        .success();
    assert!(st.contains("last run:   never"), "{st}");
    assert!(st.contains("lease:      free"), "{st}");
    assert!(st.contains("on deck:    nobody"), "{st}");
    assert!(st.contains("due next:   nothing"), "{st}");
    assert!(
        st.contains("alerts: email-send-method is off: nothing is sent"),
        "{st}"
    );

    r.publish(2);
    let st = Cmd::host().args(["status", repo]).output().success();
    assert!(st.contains("due next:   now"), "{st}");
    assert!(st.contains("  outbox     now"), "{st}");

    Cmd::host().args(["run", repo]).output().success();
    let st = Cmd::host().args(["status", "-R", repo]).output().success();
    assert!(st.contains("last run:   moments ago"), "{st}");
    assert!(st.contains(": 2 items in "), "{st}");
    assert!(
        st.contains("lease:      free; the next run may start in 1 minute"),
        "{st}"
    );
    assert!(st.contains("due next:   nothing"), "{st}");

    let json = Cmd::host()
        .args(["status", "--json", "-R", repo])
        .output()
        .success();
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    assert_eq!(v["last_run"]["tasks"][1]["name"], "outbox");
    assert_eq!(v["last_run"]["tasks"][1]["items"], 2);
    assert_eq!(v["current"]["pid"], 0);
    assert_eq!(v["next_due"]["kind"], "never");
    assert!(
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "backoffice-lease-time" && s["value"] == "60")
    );
}

#[test]
fn lease_reset_deletes_the_row() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    Cmd::host().args(["run", repo]).output().success();
    assert!(r.get("backoffice").is_some());
    let out = Cmd::backoffice()
        .args(["lease", "--reset", "-R", repo])
        .output()
        .success();
    assert!(out.contains("lease:      \"\""), "{out}");
    assert_eq!(r.get("backoffice"), None);
}

#[test]
fn missing_repository_argument_is_a_usage_error() {
    let done = Cmd::backoffice().args(["run"]).output();
    assert!(
        done.stderr().contains("no repository given"),
        "{}",
        done.stderr()
    );
    let done = Cmd::backoffice().args(["status"]).output();
    assert!(
        done.stderr()
            .contains("no repository given; name one with -R REPO"),
        "{}",
        done.stderr()
    );
    let done = Cmd::backoffice().args(["bogus"]).output();
    assert_eq!(done.out.status.code(), Some(2));
}

#[test]
fn trace_and_rust_log_show_the_engines_decisions() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    let err = Cmd::host().args(["run", "--trace", repo]).output();
    assert!(err.out.status.success());
    let err = err.stderr();
    assert!(err.contains("lease \"0 0 0 0\" -> Take("), "{err}");
    // The lease is now held: a second worker under RUST_LOG says why it left.
    let done = Cmd::host()
        .args(["run", "--nodelay", repo])
        .env("RUST_LOG", "backoffice=debug")
        .output();
    let err = done.stderr();
    assert!(err.contains("lease pass") && err.contains("Busy"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {err:?}"
    );
}

/// clap's own consistency checks over every command and flag (they would
/// otherwise only fire when a user reaches the broken command).
#[test]
fn clap_definitions_are_consistent() {
    use clap::CommandFactory;
    backoffice_cli::Cli::command().debug_assert();
}

/// `backoffice status | head -1` and the like: a reader that went away is
/// not an error of ours. Every command exits quietly (status 0, nothing on
/// stderr) instead of panicking with "failed printing to stdout".
#[test]
fn every_command_exits_quietly_on_a_closed_pipe() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    r.publish(1);
    for args in [
        vec!["status", "-R", repo],
        vec!["status", "--json", "-R", repo],
        vec!["setting", "-R", repo],
        vec!["lease", "-R", repo],
        vec!["pid"],
        vec!["--help"],
    ] {
        // A pipe whose reading end is closed before the command starts:
        // its first write fails with EPIPE, whatever the timing.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(crate::harness::backoffice_bin())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run backoffice");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.is_empty(),
            "backoffice {args:?} on a closed pipe: {} stderr: {err}",
            out.status
        );
    }
}

/// `run --poll N --sweeps K` exits non-zero when a repository failed in any
/// sweep, as a single sweep does: cron mails the failure to someone.
#[test]
fn poll_with_sweeps_fails_when_a_sweep_failed() {
    let env = Env::new();
    let bad = env.path("bad.db");
    std::fs::write(&bad, b"this is not a SQLite database, it is a text file\n").unwrap();
    let bad = bad.to_str().unwrap();
    let err = Cmd::backoffice()
        .args(["run", "--poll", "1", "--sweeps", "2", bad])
        .output()
        .failure();
    assert!(err.contains("bad.db"), "the failure names the file: {err}");

    // A healthy repository beside it does not hide the failure; alone, it succeeds.
    let r = env.repo("ok.db", 60);
    let ok = r.path.to_str().unwrap();
    Cmd::backoffice()
        .args(["run", "--poll", "1", "--sweeps", "2", ok, bad])
        .output()
        .failure();
    Cmd::backoffice()
        .args(["run", "--poll", "1", "--sweeps", "2", ok])
        .output()
        .success();
}

/// A host's own task declares its own setting (`host-outdir` in
/// examples/host.rs) the way the shipped tasks do: the host's `setting`
/// lists it with its default and checks values against its type, `status`
/// and the status page show it; a binary without that task does not know it.
#[test]
fn a_hosts_own_task_declares_a_setting_that_every_view_shows() {
    let env = Env::new();
    let r = env.repo("r.db", 60);
    let repo = r.path.to_str().unwrap();
    let all = Cmd::host().args(["setting", "-R", repo]).output().success();
    assert!(
        all.contains("host-outdir") && all.contains("(default)"),
        "{all}"
    );
    assert!(
        all.contains("backoffice-lease-time"),
        "the engine's too:\n{all}"
    );
    let err = Cmd::host()
        .args(["setting", "-R", repo, "host-outdir", "a\nb"])
        .output()
        .failure();
    assert!(
        err.contains("host-outdir") && err.contains("newline"),
        "{err}"
    );
    let out = env.path("out");
    Cmd::host()
        .args(["setting", "-R", repo, "host-outdir", out.to_str().unwrap()])
        .output()
        .success();
    assert_eq!(r.get("host-outdir").as_deref(), out.to_str());
    let status = Cmd::host()
        .args(["status", "-R", repo, "--json"])
        .output()
        .success();
    let js: serde_json::Value = serde_json::from_str(&status).unwrap();
    let shown = js["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "host-outdir")
        .unwrap_or_else(|| panic!("status lacks host-outdir: {status}"));
    assert_eq!(shown["value"].as_str(), out.to_str());
    let srv = crate::web::Server::launch(
        Cmd::host()
            .arg("serve")
            .arg(&r.path)
            .args(["--listen", "127.0.0.1:0"]),
        &env,
    );
    // The settings are details: the operator's token.
    let token = Cmd::backoffice()
        .args(["token", "-R", repo])
        .output()
        .success();
    srv.operate(vec![("r".into(), token.trim().to_owned())]);
    let page = crate::web::get(&srv.addr, "/r/r");
    assert!(page.body.contains("host-outdir"), "{}", page.body);
    // The task works from it: a request's row lands in the folder.
    Cmd::host().args(["init", repo]).output().success();
    r.conn()
        .execute("INSERT INTO outbox(body) VALUES ('hello')", [])
        .unwrap();
    Cmd::host().args(["run", repo]).output().success();
    assert_eq!(
        std::fs::read_to_string(out.join("000001.txt")).unwrap(),
        "hello"
    );
    // The binary without the host's task does not know the name.
    let err = Cmd::backoffice()
        .args(["setting", "-R", repo, "host-outdir"])
        .output()
        .failure();
    assert!(err.contains("unknown setting"), "{err}");
}

fn args(v: &[&str]) -> Vec<std::ffi::OsString> {
    v.iter().map(Into::into).collect()
}

/// The start path reads its shapes exactly as clap does, and leaves
/// every other command line to clap.
#[test]
fn the_start_path_reads_as_clap_does() {
    for v in [
        &["bo", "trigger", "/srv/app.db"][..],
        &["bo", "trigger", "app.db"],
        &["bo", "trigger", "postgres://u@h/db?schema=s"],
        &["bo", "trigger", "-q", "app.db"],
        &["bo", "trigger", "--quiet", "/srv/app.db"],
        &["bo", "trigger", "app.db", "-q"],
        &["bo", "trigger", "app.db", "--quiet"],
        &["bo", "worker", "/srv/app.db"],
        &[
            "bo",
            "worker",
            "--logfile",
            "/var/log/bo.log",
            "/srv/app.db",
        ],
    ] {
        let fast = backoffice_cli::start_path(&args(v)).expect("a start-path shape");
        let clap = <backoffice_cli::Cli as clap::Parser>::try_parse_from(args(v)).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{v:?}");
    }
    for v in [
        &["bo", "trigger"][..],
        &["bo", "trigger", "-q"],
        &["bo", "trigger", "-q", "-q", "app.db"],
        &["bo", "trigger", "-q", "app.db", "b.db"],
        &["bo", "trigger", "--quiet", "--help"],
        &["bo", "trigger", "--help"],
        &["bo", "trigger", "-R", "app.db"],
        &["bo", "trigger", ""],
        &["bo", "trigger", "a.db", "b.db"],
        &["bo", "worker", "--logfile", "-x", "app.db"],
        &["bo", "worker", "--logfile=/l", "app.db"],
        &["bo", "worker", "-h"],
        &["bo", "status", "app.db"],
        &["bo"],
    ] {
        assert!(
            backoffice_cli::start_path(&args(v)).is_none(),
            "{v:?} is clap's"
        );
    }
}

/// `completions SHELL` prints a script for each shell clap knows, naming
/// the commands; the bash one is valid bash; an unknown shell is a usage
/// error that lists the known ones.
#[test]
fn completions_are_generated_for_each_shell() {
    let bash = Cmd::backoffice()
        .args(["completions", "bash"])
        .output()
        .success();
    for word in ["_backoffice()", "serve", "subscriber", "--repository"] {
        assert!(bash.contains(word), "{word:?} missing from:\n{bash}");
    }
    assert!(
        !bash.contains("guard-child"),
        "internal commands are not offered"
    );
    if crate::harness::have("bash") {
        let env = Env::new();
        let f = env.path("c.bash");
        std::fs::write(&f, &bash).unwrap();
        Cmd::new("bash").arg("-n").arg(&f).output().success();
    }
    let zsh = Cmd::backoffice()
        .args(["completions", "zsh"])
        .output()
        .success();
    assert!(zsh.starts_with("#compdef backoffice"), "{zsh}");
    for shell in ["fish", "elvish", "powershell"] {
        let s = Cmd::backoffice()
            .args(["completions", shell])
            .output()
            .success();
        assert!(s.contains("serve"), "{shell}: {s}");
    }
    let err = Cmd::backoffice()
        .args(["completions", "tcsh"])
        .output()
        .failure();
    assert!(err.contains("possible values: bash"), "{err}");
}

/// `man` prints `backoffice(1)`; `man --dir` writes one page per visible
/// command, each titled by its full name, with the flags' help text.
#[test]
fn manual_pages_are_generated() {
    let page = Cmd::backoffice().arg("man").output().success();
    assert!(page.contains(".TH backoffice 1"), "{page}");
    assert!(page.contains("serve"), "{page}");
    let env = Env::new();
    let dir = env.path("man1");
    let listed = Cmd::backoffice()
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .success();
    let serve = std::fs::read_to_string(dir.join("backoffice-serve.1")).unwrap();
    assert!(serve.contains(".TH backoffice-serve 1"), "{serve}");
    assert!(serve.contains("repolist"), "{serve}");
    assert!(dir.join("backoffice.1").is_file());
    assert!(
        !dir.join("backoffice-worker.1").exists(),
        "internal commands get no page"
    );
    assert_eq!(
        listed.lines().count(),
        std::fs::read_dir(&dir).unwrap().count(),
        "{listed}"
    );
}
