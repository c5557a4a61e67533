//! Upgrades: a binary replaced on disk the way package managers do it (a
//! new file moved over the old path) is picked up without restarting
//! anything: `serve` starts its next worker from the new file (not from
//! `/path (deleted)`, and not in-process), and `run --poll` re-executes
//! itself from the new file between sweeps.
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

/// Copies the host binary to `dir/host`, as an installation would.
fn install(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let exe = dir.join("host");
    std::fs::copy(host_bin(), &exe).unwrap();
    exe
}

/// Replaces `exe` the way package managers do: a new file beside it,
/// renamed over it. Returns the new file's id.
fn upgrade(exe: &Path) -> (u64, u64) {
    let tmp = exe.with_extension("new");
    std::fs::copy(host_bin(), &tmp).unwrap();
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
