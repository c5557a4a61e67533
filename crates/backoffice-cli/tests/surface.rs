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
