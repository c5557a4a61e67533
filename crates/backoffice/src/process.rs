//! Process identity and liveness; starting detached workers.
//!
//! # Why not just `kill(pid, 0)`
//!
//! Fossil decides whether a lease holder is alive with `kill(pid, 0)`. That
//! says "some process with this pid exists", which is wrong in two common
//! cases: the holder died and its pid was reused by an unrelated process, or
//! the holder exited but its parent has not reaped it yet (a zombie, which
//! a container's PID 1 may leave around for a long time). Either way Fossil's
//! backoffice stalls for as long as that unrelated process lives.
//!
//! We identify a holder by pid *and* process start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot), plus the machine's boot id, all
//! recorded in the lease's extension fields. A holder is alive only if:
//!
//! 1. a process with that pid exists (`kill(pid, 0)` succeeds or says EPERM),
//! 2. it is not a zombie,
//! 3. the lease's boot id (if recorded) is this boot's, and
//! 4. its start time equals the recorded one; or, when the lease records
//!    none (Fossil wrote it), the process started no later than the lease was
//!    taken (its expiry minus the lease time, plus a little slack). A process
//!    born after the lease was written cannot be the one that wrote it.
//!
//! Where `/proc` cannot be read (another OS, `hidepid`), we fall back to
//! Fossil's rule: existence means alive. That can only make us *more*
//! cautious, never let two workers overlap.
//!
//! Rule 4's fallback has one blind spot. For a lease Fossil wrote, the take
//! time is estimated as its expiry minus 60 s, and a process's birth is read
//! in wall-clock time. If the wall clock is stepped forward by more than a
//! minute while a Fossil worker runs (or the row is hand-edited to look
//! older), that live worker looks born after its own lease and is judged
//! gone. The lease alone cannot tell this from a reused pid. Our own leases
//! record start times in ticks of the boot clock, which steps do not move,
//! so they are immune.
//!
//! # Starting workers
//!
//! A worker is the current executable re-run with arguments the host chooses
//! ([`WorkerCommand`]), never a `fork()` without `exec` (unsafe in a
//! multi-threaded Rust program). Its stdio is `/dev/null`; the worker itself
//! calls [`detach`] first thing, which starts a new session and closes any
//! descriptor it inherited, so a web server waiting for EOF on a socket is
//! never held open by a sleeping worker. A host that lives on hands the child
//! to [`reap`], so no zombie is ever left behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::lease::Slot;

/// Seconds of slack when deciding that a process started "after" a lease
/// that records no start time: boot time is only known to the second.
const START_SLACK_SECS: i64 = 2;

/// Fossil's fixed lease length; a lease without start times was written by
/// Fossil (or an old version of us) with this length.
const FOSSIL_LEASE_SECS: i64 = 60;

/// Who a process is: its pid and, where the OS tells us, its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The process id.
    pub pid: i64,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: Option<u64>,
}

impl Identity {
    /// The identity of this process.
    pub fn current() -> Identity {
        static ME: OnceLock<(u32, Option<u64>)> = OnceLock::new();
        let pid = std::process::id();
        // Cache per pid: a fork()ed child (which we never do, but a host might)
        // must not inherit its parent's identity.
        let &(cached_pid, start) = ME.get_or_init(|| (pid, proc_stat(pid as i64).map(|s| s.start)));
        if cached_pid == pid {
            Identity {
                pid: pid as i64,
                start,
            }
        } else {
            Identity {
                pid: pid as i64,
                start: proc_stat(pid as i64).map(|s| s.start),
            }
        }
    }

    /// True if `slot` names this identity (same pid and, when both are
    /// known, the same start time).
    pub fn holds(&self, slot: &Slot) -> bool {
        slot.pid == self.pid
            && match (slot.start, self.start) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// This machine's boot id (`/proc/sys/kernel/random/boot_id`), if known.
pub fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let s = s.trim().to_owned();
        crate::lease::is_boot_id(&s).then_some(s)
    })
    .as_deref()
}

/// What `/proc/PID/stat` tells us about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

/// Reads state and start time of `pid` from `/proc`, or `None` if that is
/// not possible (no such process, no `/proc`, not allowed).
pub fn proc_stat(pid: i64) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    // One read into a stack buffer: /proc files report size 0, so
    // read_to_string would grow its buffer over several reads (9 syscalls
    // against 3, measured). A stat line is a few hundred bytes; 1 KiB holds
    // even a 64-byte command name with room to spare.
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return None,
        }
    }
    // Lossy: a command name need not be UTF-8, and it is not what we read.
    parse_proc_stat(&String::from_utf8_lossy(&buf[..len]))
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and `)`, so we split after the
/// *last* `)`. Total: returns `None` on anything unexpected.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // rest starts at field 3 (state); start time is field 22.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start })
}

/// Converts a start time in ticks since boot to Unix seconds.
pub fn start_to_unix(ticks: u64) -> Option<i64> {
    static BTIME: OnceLock<Option<i64>> = OnceLock::new();
    let btime = (*BTIME.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }))?;
    let hz = rustix::param::clock_ticks_per_second();
    if hz == 0 {
        return None;
    }
    Some(btime + (ticks / hz) as i64)
}

/// Whether a process with this pid exists at all (Fossil's test: `kill(pid,
/// 0)` succeeds, or fails with EPERM because it belongs to someone else).
pub fn exists(pid: i64) -> bool {
    // 0 and negative numbers name process groups to kill(2), never one
    // process; and rustix refuses to build a Pid from them.
    if pid <= 0 {
        return false;
    }
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Why a lease holder counts as gone, or that it is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The holder is running.
    Alive,
    /// The slot names no process (pid 0 or negative).
    Nobody,
    /// No process with that pid exists.
    NoProcess,
    /// The process exited and awaits reaping.
    Zombie,
    /// The lease was written during another boot.
    OtherBoot,
    /// A process with that pid exists but started at another time: the pid
    /// was reused by an unrelated process.
    PidReused,
    /// The lease records no start time, and the process with that pid
    /// started after the lease was taken, so it cannot be the holder.
    StartedAfterLease,
}

impl Liveness {
    /// True for [`Liveness::Alive`].
    pub fn is_alive(self) -> bool {
        self == Liveness::Alive
    }

    /// A few words for `lease` and `status` output.
    pub fn describe(self) -> &'static str {
        match self {
            Liveness::Alive => "running",
            Liveness::Nobody => "nobody",
            Liveness::NoProcess => "exited",
            Liveness::Zombie => "exited (zombie, not yet reaped)",
            Liveness::OtherBoot => "gone (lease from an earlier boot)",
            Liveness::PidReused => "gone (pid reused by another process)",
            Liveness::StartedAfterLease => "gone (pid reused by a newer process)",
        }
    }
}

/// Decides whether the holder of `slot` is alive. `lease_boot` is the boot
/// id recorded in the lease; `lease_time` the configured lease length,
/// used to estimate when a Fossil-written lease was taken.
pub fn liveness(slot: &Slot, lease_boot: Option<&str>, lease_time: i64) -> Liveness {
    if slot.pid <= 0 {
        return Liveness::Nobody;
    }
    if !exists(slot.pid) {
        return Liveness::NoProcess;
    }
    if let (Some(recorded), Some(ours)) = (lease_boot, boot_id()) {
        if recorded != ours {
            return Liveness::OtherBoot;
        }
    }
    let Some(stat) = proc_stat(slot.pid) else {
        // Exists but /proc says nothing (another OS, hidepid): Fossil's rule.
        return Liveness::Alive;
    };
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return Liveness::Zombie;
    }
    match slot.start {
        Some(recorded) if recorded != stat.start => Liveness::PidReused,
        Some(_) => Liveness::Alive,
        None => {
            // Fossil wrote this lease (no start time). The holder took it at
            // about `expires - lease length`; Fossil's length is 60 s. Using
            // the shorter of ours and Fossil's errs towards "alive".
            let taken = slot
                .expires
                .saturating_sub(lease_time.clamp(1, FOSSIL_LEASE_SECS));
            match start_to_unix(stat.start) {
                Some(born) if born > taken.saturating_add(START_SLACK_SECS) => {
                    Liveness::StartedAfterLease
                }
                _ => Liveness::Alive,
            }
        }
    }
}

/// How to start a worker process: a program and the arguments that come
/// before the repository path.
///
/// The default is the current executable with `worker`, which is what the
/// `backoffice` command and any host built on `backoffice-cli` understand.
/// A Rust host with its own `main` can point this at the `backoffice` binary
/// instead, or at itself with its own arguments.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// The program to run.
    pub program: PathBuf,
    /// Arguments placed before `[--logfile F] REPO`.
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// The current executable, re-run as `EXE worker`.
    pub fn current_exe() -> std::io::Result<WorkerCommand> {
        Ok(WorkerCommand {
            program: std::env::current_exe()?,
            args: vec!["worker".into()],
        })
    }

    /// Starts a detached worker for `repo`. Its stdio is `/dev/null`, its
    /// working directory `/` (so it keeps no mount busy), and it inherits no
    /// descriptor of ours (Rust opens everything close-on-exec; the worker
    /// closes anything else it finds in [`detach`]).
    pub fn spawn(&self, repo: &Path, logfile: Option<&Path>) -> std::io::Result<Child> {
        let repo = std::path::absolute(repo)?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(log) = logfile {
            cmd.arg("--logfile").arg(std::path::absolute(log)?);
        }
        // Open /dev/null ourselves so that its absence (a chroot jail without
        // it, which silently broke Fossil's backoffice) is named in the error.
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open /dev/null: {e}")))?;
        cmd.arg(repo)
            .current_dir("/")
            .stdin(Stdio::from(null.try_clone()?))
            .stdout(Stdio::from(null.try_clone()?))
            .stderr(Stdio::from(null));
        cmd.spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.program.display())))
    }
}

/// Makes the calling process a detached worker: a new session (no
/// controlling terminal, not killed with the parent's process group) and no
/// inherited descriptors beyond stdio. Call it first thing in a worker.
///
/// Descriptors a host left open without close-on-exec (a CGI server's
/// socket, for example) would otherwise keep the web server waiting for the
/// worker to exit — Fossil had exactly that bug with althttpd.
pub fn detach() {
    // EPERM means we already lead a process group; nothing to do then.
    let _ = rustix::process::setsid();
    close_inherited_descriptors();
}

fn close_inherited_descriptors() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collect first: closing while iterating would close the directory's own fd.
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // The directory handle above is closed by now, and this runs before
        // the worker opens anything, so any fd > 2 that is still open was
        // inherited and is owned by nobody in this process. F_GETFD filters
        // out numbers that are already closed.
        // SAFETY: see above; `fd` is owned by no Rust object.
        let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
        if rustix::io::fcntl_getfd(fd).is_ok() {
            // SAFETY: as above; nobody will use this descriptor again.
            unsafe { rustix::io::close(rustix::fd::AsRawFd::as_raw_fd(&fd)) };
        }
    }
}

/// Waits for a child on a small background thread, so a host that lives
/// on never accumulates zombies: the child is reaped the moment it exits.
///
/// A thread per child (with a 64 KiB stack) rather than one polling reaper:
/// polling would leave each exited worker a zombie until the next poll, and
/// `waitpid(-1)` would steal the host's own children. Workers are few (at
/// most two per repository at a time), so the threads are too.
pub fn reap(mut child: Child) {
    let spawned = std::thread::Builder::new()
        .name("backoffice-reap".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        // No thread to be had: the child lives on unreaped until this
        // process exits and init adopts it. Say so rather than block here.
        tracing::warn!(error = %e, "cannot start a thread to reap a worker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let text = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(
            parse_proc_stat(text),
            Some(ProcStat {
                state: 'S',
                start: 777
            })
        );
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_proc_stat("1 (x) S 1"), None);
    }

    #[test]
    fn we_are_alive_by_our_own_rules() {
        let me = Identity::current();
        assert!(me.start.is_some(), "this test needs Linux /proc");
        let slot = Slot {
            pid: me.pid,
            expires: i64::MAX,
            start: me.start,
        };
        assert_eq!(liveness(&slot, boot_id(), 60), Liveness::Alive);
        let reused = Slot {
            start: me.start.map(|s| s + 1),
            ..slot
        };
        assert_eq!(liveness(&reused, boot_id(), 60), Liveness::PidReused);
        assert_eq!(liveness(&slot, Some("0000"), 60), Liveness::OtherBoot);
    }

    #[test]
    fn a_process_born_after_a_fossil_lease_is_not_its_holder() {
        let me = Identity::current();
        // A Fossil lease (no start time) that expired long before we started.
        let slot = Slot {
            pid: me.pid,
            expires: 1_000_000,
            start: None,
        };
        assert_eq!(liveness(&slot, None, 60), Liveness::StartedAfterLease);
        // One that is current: we might be its holder.
        let now = crate::clock::now();
        let slot = Slot {
            expires: now + 60,
            ..slot
        };
        assert_eq!(liveness(&slot, None, 60), Liveness::Alive);
    }

    #[test]
    fn nobody_and_nonexistent() {
        assert_eq!(liveness(&Slot::EMPTY, None, 60), Liveness::Nobody);
        let slot = Slot {
            pid: i64::from(i32::MAX),
            expires: 0,
            start: None,
        };
        assert_eq!(liveness(&slot, None, 60), Liveness::NoProcess);
        assert!(!exists(i64::MAX));
        for group in [0, -1, -5, i64::MIN] {
            assert!(!exists(group), "{group} is not a process");
        }
    }
}
