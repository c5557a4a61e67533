//! Upgrades: a binary replaced on disk the way package managers do it (a
//! new file moved over the old path) is picked up without restarting
//! anything: `serve` starts its next worker from the new file (not from
//! `/path (deleted)`, and not in-process), and `run --poll` re-executes
//! itself from the new file between sweeps. And a repository written by
//! the previous release (`tests/fixtures/v0.1.0.sqlite`) keeps all its
//! state under this one.
//!
//! Both copies are the same build, so the honest way to tell them apart is
//! the file itself: its (device, inode), as `/proc/PID/exe` of the running
//! process shows it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Cmd, Env, host_bin, kill, wait_until};

fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Copies the host binary to `to` in another process (`cp`). Not with
/// `std::fs::copy`: while this process holds the new file open for
/// writing, a child that another test's thread forks at that moment
/// inherits the descriptor until its `exec`, and starting the new file then
/// fails with ETXTBSY ("Text file busy"); seen with several tests of this
/// module spawning at once.
fn copy_host(to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg(host_bin())
        .arg(to)
        .status()
        .expect("cannot run cp")
        .success();
    assert!(ok, "cp {} {}", host_bin().display(), to.display());
}

/// Copies the host binary to `dir/host`, as an installation would.
fn install(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let exe = dir.join("host");
    copy_host(&exe);
    exe
}

/// Replaces `exe` the way package managers do: a new file beside it,
/// renamed over it. Returns the new file's id.
fn upgrade(exe: &Path) -> (u64, u64) {
    let tmp = exe.with_extension("new");
    copy_host(&tmp);
    std::fs::rename(&tmp, exe).unwrap();
    file_id(exe).unwrap()
}

fn proc_exe(pid: u32) -> Option<(u64, u64)> {
    file_id(Path::new(&format!("/proc/{pid}/exe")))
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

#[test]
fn serve_starts_workers_from_the_upgraded_binary() {
    let env = Env::new();
    let r = env.repo("app.db", 1);
    r.set("host-work-ms", "2000");
    // The GET below sends no token: the public summary answers it (2xx),
    // and the check after the reply starts the worker.
    r.set("web-public-summary", "on");
    let exe = install(&env.path("bin"));
    let mut srv = Cmd::new(&exe)
        .args(["serve", r.path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .spawn_with(Stdio::piped(), Stdio::null());
    let mut out = BufReader::new(srv.stdout.take().unwrap());
    let (mut line, mut url) = (String::new(), String::new());
    out.read_line(&mut line).unwrap();
    out.read_line(&mut url).unwrap();
    let url = url
        .trim()
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{line}{url}"));
    let (addr, path) = url.split_once('/').unwrap();
    let old = proc_exe(srv.id()).unwrap();

    let new = upgrade(&exe);
    assert_ne!(old, new);
    r.publish(1);
    let reply = http_get(addr, &format!("/{path}/status.json"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        wait_until(Duration::from_secs(15), || !r.journal().is_empty()),
        "no worker ran"
    );
    let worker = r.journal()[0].1;
    assert_ne!(worker, srv.id(), "the work ran inside the server");
    assert_eq!(
        proc_exe(worker),
        Some(new),
        "the worker is not the upgraded binary"
    );
    assert!(wait_until(Duration::from_secs(15), || r.pending() == 0));
    kill(srv);
}

#[test]
fn run_poll_reexecutes_the_upgraded_binary_between_sweeps() {
    let env = Env::new();
    let r = env.repo("app.db", 1);
    let exe = install(&env.path("bin"));
    let mut poller = Cmd::new(&exe)
        .args(["run", "--poll", "1", r.path.to_str().unwrap()])
        .spawn_with(Stdio::null(), Stdio::piped());
    let pid = poller.id();
    r.publish(1);
    assert!(wait_until(Duration::from_secs(15), || r.pending() == 0));
    let old = proc_exe(pid).unwrap();

    let new = upgrade(&exe);
    assert_ne!(old, new);
    assert!(
        wait_until(Duration::from_secs(15), || proc_exe(pid) == Some(new)),
        "the poller still runs the old binary"
    );
    // The same process, now the new binary, goes on working.
    r.publish(1);
    assert!(wait_until(Duration::from_secs(15), || r.pending() == 0));
    assert!(r.journal().iter().all(|(_, p, _)| *p == pid));
    assert!(poller.try_wait().unwrap().is_none(), "the poller exited");
    let _ = poller.kill();
    let _ = poller.wait();
    let mut err = String::new();
    let _ = poller.stderr.take().unwrap().read_to_string(&mut err);
    assert!(!err.contains("cannot be started"), "{err}");
}

// ---------------------------------------------------------------------------
// The on-disk format: a repository written by the previous release.
// ---------------------------------------------------------------------------

/// A repository written by release 0.1.0, the one before the retry ledger
/// (issue 11): state in `bo_hook_state`, `bo_webhook`, `bo_peer` and
/// `bo_outbox`, made by the real code against real failing targets
/// (`tests/fixtures/make-v0.1.0.sh` says how).
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0.1.0.sqlite");

/// 2100-01-01 UTC: the fixture's future retry times (set by its script so
/// that nothing here depends on the wall clock).
const FUTURE: i64 = 4_102_444_800;

/// The error the fixture's SMTP relay (a closed port) left on its messages.
const RELAY_ERROR: &str =
    "relay 127.0.0.1:46885: cannot connect: Connection refused (os error 111)";

/// `backoffice ARGS -R REPO --json`, parsed.
fn json(repo: &Path, args: &[&str]) -> serde_json::Value {
    let out = Cmd::backoffice()
        .args(args)
        .args(["--json", "-R", repo.to_str().unwrap()])
        .output()
        .success();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Asserts that `actual` has every field of `expected` with exactly its
/// value (fields added by a later release are allowed, none may change).
fn assert_fields(actual: &serde_json::Value, expected: serde_json::Value, what: &str) {
    let expected = expected.as_object().expect("an object of expected fields");
    for (k, v) in expected {
        assert_eq!(&actual[k], v, "{what}: field {k} in {actual:#}");
    }
}

/// The item of a JSON array whose `key` is `id`.
fn by<'a>(all: &'a serde_json::Value, key: &str, id: i64) -> &'a serde_json::Value {
    all.as_array()
        .expect("a JSON array")
        .iter()
        .find(|x| x.pointer(key) == Some(&serde_json::json!(id)))
        .unwrap_or_else(|| panic!("no {key} = {id} in {all:#}"))
}

fn hook(repo: &Path, id: i64) -> serde_json::Value {
    by(&json(repo, &["hook", "list"]), "/hook/id", id).clone()
}

fn stored_hook_2() -> serde_json::Value {
    serde_json::json!({
        "cursor": 2, "failures": 1, "next_attempt": FUTURE, "last_run": 1_796_143_951_i64,
        "last_error": "exit status: 1", "last_output": "disk full\n",
    })
}

fn stored_webhook_2() -> serde_json::Value {
    serde_json::json!({
        "url": "http://127.0.0.1:46885/down", "kinds": "*", "cursor": 2, "failures": 1,
        "next_attempt": 1_796_144_016_i64,
        "last_error": "event 3: Connection refused (os error 111) (ConnectionRefused)",
        "state": "dead", "delivered": 0, "salt": "ec59f48c160d", "ctime": 1_796_143_951_i64,
    })
}

fn stored_peer_2() -> serde_json::Value {
    serde_json::json!({
        "target": "/tmp/bo-fixture.xqNPxG/gone/app.db", "generation": null, "stamp": null,
        "last_ok": null, "last_try": 1_796_143_951_i64, "failures": 1, "next_attempt": FUTURE,
        "last_error": "the peer's folder is missing: /tmp/bo-fixture.xqNPxG/gone: entity not found",
        "last_bytes": null, "last_ms": null,
    })
}

/// The outbox as stored, but for message 4 (the one still to be tried).
fn stored_messages_1_to_3() -> [(i64, serde_json::Value); 3] {
    [
        (
            3,
            serde_json::json!({
                "address": "retry@example.org", "kind": "alert", "subject": "Ticket #7",
                "state": "queued", "attempts": 1, "next_attempt": FUTURE,
                "last_error": RELAY_ERROR, "ctime": 1_796_143_955_i64, "sent_time": null,
            }),
        ),
        (
            2,
            serde_json::json!({
                "address": "dead@example.org", "kind": "alert", "subject": "Outage",
                "state": "dead", "attempts": 1, "next_attempt": 1_796_143_953_i64,
                "last_error": RELAY_ERROR, "ctime": 1_796_143_953_i64, "sent_time": null,
            }),
        ),
        (
            1,
            serde_json::json!({
                "address": "sent@example.org", "kind": "alert", "subject": "Release 1.0",
                "state": "sent", "attempts": 1, "next_attempt": 1_796_143_951_i64,
                "last_error": null, "ctime": 1_796_143_951_i64, "sent_time": 1_796_143_951_i64,
            }),
        ),
    ]
}

/// Done when of issue 11: a repository of the previous release, opened by
/// this one, reports every piece of its retry state exactly as stored, and
/// works on from there: a hook goes on from its cursor (only the new event
/// reaches it), queued mail goes out under its stored identity, and what is
/// backing off or dead stays so.
#[test]
fn a_repository_of_the_previous_release_keeps_its_state() {
    let env = Env::new();
    let repo = env.path("app.db");
    std::fs::copy(FIXTURE, &repo).expect("copy the fixture");

    // The file really is of the old shape (a fixture rewritten by a later
    // release would prove nothing).
    {
        let c = rusqlite::Connection::open_with_flags(
            &repo,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        for t in [
            "bo_hook_state",
            "bo_webhook",
            "bo_peer",
            "bo_outbox",
            "bo_event",
        ] {
            assert!(
                c.table_exists(None, t).unwrap(),
                "{FIXTURE} is not a 0.1.0 repository: no table {t}"
            );
        }
        let n: i64 = c
            .query_row("SELECT count(*) FROM bo_hook_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "{FIXTURE}: bo_hook_state");
    }

    // Settings.
    for (name, value) in [
        ("backoffice-lease-time", "1"),
        ("email-self", "fixture@example.org"),
        ("email-url", "https://app.example.org"),
        ("email-subname", "[fixture]"),
        ("email-send-method", "dir"),
        ("email-send-dir", "blocked/mail"),
        ("email-send-relayhost", "127.0.0.1:46885"),
        ("maintenance-retention-days", "0"),
    ] {
        let out = Cmd::backoffice()
            .args(["setting", "-R", repo.to_str().unwrap(), name])
            .output()
            .success();
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            [name, value],
            "setting {name}"
        );
    }

    // Hooks: definitions, cursors, failures, last error and output.
    let hooks = json(&repo, &["hook", "list"]);
    assert_eq!(hooks.as_array().unwrap().len(), 2, "{hooks:#}");
    let h1 = by(&hooks, "/hook/id", 1);
    assert_fields(
        &h1["hook"],
        serde_json::json!({"cmd": "cat >> hook1.jsonl", "seq": 10, "type": "after-event"}),
        "hook 1",
    );
    assert_fields(
        &h1["state"],
        serde_json::json!({
            "cursor": 6, "failures": 0, "next_attempt": 0, "last_run": 1_796_143_957_i64,
            "last_error": null, "last_output": "",
        }),
        "hook 1 state",
    );
    let h2 = by(&hooks, "/hook/id", 2);
    assert_fields(
        &h2["hook"],
        serde_json::json!({"cmd": "echo \"disk full\"; exit 1", "seq": 20, "type": "after-event"}),
        "hook 2",
    );
    assert_fields(&h2["state"], stored_hook_2(), "hook 2 state");

    // Webhooks: cursors, deliveries, the dead one; secrets kept (masked).
    let webhooks = json(&repo, &["webhook", "list"]);
    assert_eq!(webhooks.as_array().unwrap().len(), 2, "{webhooks:#}");
    assert_fields(
        by(&webhooks, "/id", 1),
        serde_json::json!({
            "url": "http://127.0.0.1:44117/ok", "kinds": "incident,release", "cursor": 6,
            "failures": 0, "next_attempt": 0, "last_error": null, "state": "active",
            "delivered": 2, "salt": "1deeea492e92", "ctime": 1_796_143_951_i64,
        }),
        "webhook 1",
    );
    assert_fields(by(&webhooks, "/id", 2), stored_webhook_2(), "webhook 2");
    let text = Cmd::backoffice()
        .args(["webhook", "list", "-R", repo.to_str().unwrap()])
        .output()
        .success();
    assert_eq!(text.matches("secret fixt****").count(), 2, "{text}");

    // Peers: the last good copy, the failing one.
    let peers = json(&repo, &["peer", "list"]);
    assert_eq!(peers.as_array().unwrap().len(), 2, "{peers:#}");
    let stored_peer_1 = serde_json::json!({
        "target": "/tmp/bo-fixture.xqNPxG/replicas/app.db", "generation": 2,
        "stamp": "77824.1796143951.308050123/-", "last_ok": 1_796_143_951_i64,
        "last_bytes": 77824, "last_ms": 5,
    });
    assert_fields(by(&peers, "/id", 1), stored_peer_1.clone(), "peer 1");
    assert_fields(
        by(&peers, "/id", 1),
        serde_json::json!({"last_try": 1_796_143_951_i64, "failures": 0, "next_attempt": 0, "last_error": null}),
        "peer 1",
    );
    assert_fields(by(&peers, "/id", 2), stored_peer_2(), "peer 2");

    // Subscribers.
    let subs = json(&repo, &["subscriber", "list"]);
    assert_eq!(subs.as_array().unwrap().len(), 5, "{subs:#}");
    for (id, address, kinds, verified) in [
        (1, "sent@example.org", "release", true),
        (2, "dead@example.org", "incident", true),
        (3, "retry@example.org", "ticket", true),
        (4, "queued@example.org", "wiki", true),
        (5, "unverified@example.org", "*", false),
    ] {
        assert_fields(
            by(&subs, "/id", id),
            serde_json::json!({"address": address, "kinds": kinds, "verified": verified, "digest": false, "donotcall": false}),
            "subscriber",
        );
    }

    // The outbox: queued (never tried), retrying, dead, sent.
    let outbox = json(&repo, &["outbox", "list"]);
    assert_eq!(outbox.as_array().unwrap().len(), 4, "{outbox:#}");
    assert_fields(
        by(&outbox, "/msgid", 4),
        serde_json::json!({
            "address": "queued@example.org", "kind": "alert", "subject": "Front page",
            "state": "queued", "attempts": 0, "next_attempt": 1_796_143_957_i64,
            "last_error": null, "ctime": 1_796_143_957_i64, "sent_time": null,
        }),
        "message 4",
    );
    for (id, stored) in stored_messages_1_to_3() {
        assert_fields(by(&outbox, "/msgid", id), stored, &format!("message {id}"));
    }
    let text = Cmd::backoffice()
        .args(["outbox", "list", "-R", repo.to_str().unwrap()])
        .output()
        .success();
    assert!(text.ends_with("2 queued, 1 sent, 1 dead\n"), "{text}");

    // It works on. A copy to peer 1 is tried (its folder, from the machine
    // that made the fixture, is not here): it fails, and its last good copy
    // stays on record.
    let err = Cmd::backoffice()
        .args(["peer", "sync", "1", "-R", repo.to_str().unwrap()])
        .output()
        .failure();
    assert!(err.contains("peer's folder is missing"), "{err}");
    let p1 = by(&json(&repo, &["peer", "list"]), "/id", 1).clone();
    assert_fields(&p1, stored_peer_1, "peer 1 after a failed copy");
    assert_eq!(p1["failures"], 1, "{p1:#}");

    // A new event (event 7: the six stored ones are still there) reaches
    // hook 1 from its cursor, and only it; the queued message goes out
    // under its stored token; nothing backing off or dead is touched.
    Cmd::backoffice()
        .args([
            "setting",
            "-R",
            repo.to_str().unwrap(),
            "email-send-dir",
            "outgoing",
        ])
        .output()
        .success();
    let out = Cmd::backoffice()
        .args(["publish", "-R", repo.to_str().unwrap(), "--no-trigger"])
        .args(["--kind", "probe", "--title", "After the upgrade"])
        .output()
        .success();
    assert_eq!(out.trim(), "published event 7");
    Cmd::backoffice()
        .args(["run", repo.to_str().unwrap()])
        .output()
        .success();

    let seen = std::fs::read_to_string(env.path("hook1.jsonl")).expect("hook 1 ran");
    let lines: Vec<serde_json::Value> = seen
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "hook 1 was given old events again: {seen}");
    assert_fields(
        &lines[0],
        serde_json::json!({"eventid": 7, "kind": "probe", "title": "After the upgrade"}),
        "hook 1's input",
    );
    assert_fields(
        &hook(&repo, 1)["state"],
        serde_json::json!({"cursor": 7, "failures": 0, "last_error": null}),
        "hook 1 after the run",
    );
    assert_fields(
        &hook(&repo, 2)["state"],
        stored_hook_2(),
        "hook 2 after the run",
    );

    let webhooks = json(&repo, &["webhook", "list"]);
    // Event 7 is not of its kinds: its cursor moves past it, nothing is sent.
    assert_fields(
        by(&webhooks, "/id", 1),
        serde_json::json!({"cursor": 7, "failures": 0, "state": "active", "delivered": 2}),
        "webhook 1 after the run",
    );
    assert_fields(
        by(&webhooks, "/id", 2),
        stored_webhook_2(),
        "webhook 2 after the run",
    );
    assert_fields(
        by(&json(&repo, &["peer", "list"]), "/id", 2),
        stored_peer_2(),
        "peer 2 after the run",
    );

    let outbox = json(&repo, &["outbox", "list"]);
    assert_eq!(outbox.as_array().unwrap().len(), 4, "{outbox:#}");
    assert_fields(
        by(&outbox, "/msgid", 4),
        serde_json::json!({"state": "sent", "attempts": 1, "last_error": null}),
        "message 4 after the run",
    );
    for (id, stored) in stored_messages_1_to_3() {
        assert_fields(
            by(&outbox, "/msgid", id),
            stored,
            &format!("message {id} after the run"),
        );
    }
    // The file is named after the token stored with the message.
    let eml = env.path("outgoing/0000000004-776a02aed18c11627943510f3d7ca62f.eml");
    let mail = std::fs::read_to_string(&eml).unwrap_or_else(|e| panic!("{}: {e}", eml.display()));
    for header in [
        "To: queued@example.org",
        "Subject: [fixture] Front page",
        "Message-ID: <bo.776a02aed18c11627943510f3d7ca62f@example.org>",
        // The unsubscribe code stored with the message.
        "List-Unsubscribe: <https://app.example.org/unsubscribe/1422f102f322b18cd8602e7046da10bb>",
    ] {
        assert!(mail.lines().any(|l| l == header), "no {header:?} in {mail}");
    }
}
