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
