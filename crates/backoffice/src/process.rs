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
//! Rule 4 has a second half for a lease without start times: a legitimate
//! holder takes its lease within moments of starting, or within about one
//! lease time when it first waited on deck. A process born long before the
//! lease was taken (pid 1; a `sleep` started before the row was written by
//! hand) cannot be its holder either: such a row would otherwise stall the
//! backoffice for as long as that process lives.
//!
//! # Where a pid cannot be checked: heartbeats
//!
//! A pid means something only in its own PID namespace (containers, or
//! `unshare --pid`, sharing one repository) and on its own machine; the boot
//! id is the same for every container of a host. So our leases also record
//! each holder's PID namespace and an `alive-until` time that a working
//! holder keeps pushing forward from a heartbeat thread (see
//! `engine.rs`). A holder in another namespace or on another boot is
//! alive exactly while its heartbeat is current. In our own namespace the pid
//! is checked as above *and* the heartbeat must be current: a long-lived
//! process (`run --poll`, `serve`) whose release failed is alive, but it no
//! longer works, and its heartbeat stopped with its run. One exception: a
//! process that is stopped (SIGSTOP, a debugger) may resume in the middle of
//! its tasks, so it keeps its lease, as it would in Fossil.
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

/// Who a process is: its pid and, where the OS tells us, its start time
/// and PID namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The process id.
    pub pid: i64,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: Option<u64>,
    /// The PID namespace the pid belongs to.
    pub ns: Option<u64>,
}

impl Identity {
    /// The identity of this process.
    pub fn current() -> Identity {
        static ME: OnceLock<(u32, Option<u64>)> = OnceLock::new();
        let pid = std::process::id();
        // Cache per pid: a fork()ed child (which we never do, but a host might)
        // must not inherit its parent's identity.
        let &(cached_pid, start) =
            ME.get_or_init(|| (pid, proc_stat(i64::from(pid)).map(|s| s.start)));
        let start = if cached_pid == pid {
            start
        } else {
            proc_stat(i64::from(pid)).map(|s| s.start)
        };
        Identity {
            pid: i64::from(pid),
            start,
            ns: pid_namespace(),
        }
    }

    /// True if `slot` names this identity (same pid and, when both are
    /// known, the same start time and PID namespace).
    pub fn holds(&self, slot: &Slot) -> bool {
        let same = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        slot.pid == self.pid && same(slot.start, self.start) && same(slot.ns, self.ns)
    }

    /// A lease slot naming this identity.
    pub fn slot(&self, expires: i64, alive_until: Option<i64>) -> Slot {
        Slot {
            pid: self.pid,
            expires,
            start: self.start,
            ns: self.ns,
            alive_until,
        }
    }
}

/// This process's PID namespace: the inode of `/proc/self/ns/pid`, which
/// names the namespace for as long as it exists.
pub fn pid_namespace() -> Option<u64> {
    static NS: OnceLock<Option<u64>> = OnceLock::new();
    *NS.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
    })
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
pub(crate) fn start_to_unix(ticks: u64) -> Option<i64> {
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
    btime.checked_add(i64::try_from(ticks / hz).ok()?)
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
    /// The holder's pid cannot be checked from here (another PID namespace
    /// or another boot), and its heartbeat is current: alive.
    Elsewhere,
    /// The slot names no process (pid 0).
    Nobody,
    /// No process with that pid exists.
    NoProcess,
    /// The process exited and awaits reaping.
    Zombie,
    /// The lease was written during another boot, and no heartbeat vouches
    /// for its holder.
    OtherBoot,
    /// A process with that pid exists but started at another time: the pid
    /// was reused by an unrelated process.
    PidReused,
    /// The lease records no start time, and the process with that pid
    /// started after the lease was taken, so it cannot be the holder.
    StartedAfterLease,
    /// The lease records no start time, and the process with that pid
    /// started long before the lease was taken, so it cannot be the holder.
    StartedBeforeLease,
    /// The holder's heartbeat stopped: it is not working any more (or cannot
    /// be seen from here and has not shown a sign of life in time).
    HeartbeatStopped,
    /// The holder is in another PID namespace and no heartbeat vouches for it.
    OtherNamespace,
}

impl Liveness {
    /// True for [`Liveness::Alive`] and [`Liveness::Elsewhere`].
    pub fn is_alive(self) -> bool {
        matches!(self, Liveness::Alive | Liveness::Elsewhere)
    }

    /// A few words for `lease` and `status` output.
    pub fn describe(self) -> &'static str {
        match self {
            Liveness::Alive => "running",
            Liveness::Elsewhere => {
                "running elsewhere (another PID namespace or host; its heartbeat is current)"
            }
            Liveness::Nobody => "nobody",
            Liveness::NoProcess => "exited",
            Liveness::Zombie => "exited (zombie, not yet reaped)",
            Liveness::OtherBoot => "gone (lease from an earlier boot)",
            Liveness::PidReused => "gone (pid reused by another process)",
            Liveness::StartedAfterLease => "gone (pid reused by a newer process)",
            Liveness::StartedBeforeLease => {
                "gone (that process is older than the lease: not its holder)"
            }
            Liveness::HeartbeatStopped => "gone (its heartbeat stopped)",
            Liveness::OtherNamespace => "gone (another PID namespace, no heartbeat)",
        }
    }
}

/// Decides whether the holder of `slot` is alive, now. `lease_boot` is the
/// boot id recorded in the lease; `lease_time` the configured lease length,
/// used to estimate when a Fossil-written lease was taken.
pub fn liveness(slot: &Slot, lease_boot: Option<&str>, lease_time: i64) -> Liveness {
    liveness_at(slot, lease_boot, lease_time, crate::clock::now())
}

/// [`liveness`] at Unix time `now`.
pub fn liveness_at(slot: &Slot, lease_boot: Option<&str>, lease_time: i64, now: i64) -> Liveness {
    if slot.pid <= 0 {
        return Liveness::Nobody;
    }
    let beat = slot.alive_until.map(|t| now <= t);
    let other_boot = matches!((lease_boot, boot_id()), (Some(r), Some(o)) if r != o);
    let other_ns = matches!((slot.ns, pid_namespace()), (Some(a), Some(b)) if a != b);
    if other_boot || other_ns {
        // The pid means nothing here: only the heartbeat can tell.
        return match beat {
            Some(true) => Liveness::Elsewhere,
            Some(false) => Liveness::HeartbeatStopped,
            None if other_boot => Liveness::OtherBoot,
            None => Liveness::OtherNamespace,
        };
    }
    if !exists(slot.pid) {
        return Liveness::NoProcess;
    }
    let Some(stat) = proc_stat(slot.pid) else {
        // Exists but /proc says nothing (another OS, hidepid): Fossil's
        // rule, unless a heartbeat we asked for has stopped.
        return if beat == Some(false) {
            Liveness::HeartbeatStopped
        } else {
            Liveness::Alive
        };
    };
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return Liveness::Zombie;
    }
    match slot.start {
        Some(recorded) if recorded != stat.start => Liveness::PidReused,
        // The holder itself. A stopped one may resume mid-task: it keeps
        // the lease whatever its heartbeat says.
        Some(_) if beat == Some(false) && !matches!(stat.state, 'T' | 't') => {
            Liveness::HeartbeatStopped
        }
        Some(_) => Liveness::Alive,
        None => fossil_holder(slot, lease_time, stat.start),
    }
}

/// Rule 4 for a lease without start times (Fossil's): is a process born at
/// `start` (ticks since boot) possibly the one that took `slot`?
fn fossil_holder(slot: &Slot, lease_time: i64, start: u64) -> Liveness {
    let Some(born) = start_to_unix(start) else {
        return Liveness::Alive;
    };
    // Fossil writes expiry = take + 60; we write take + L. The take time
    // is somewhere in [expires - max, expires - min].
    let l = lease_time.clamp(1, 86_400);
    let (short, long) = (l.min(FOSSIL_LEASE_SECS), l.max(FOSSIL_LEASE_SECS));
    let latest_take = slot.expires.saturating_sub(short);
    let earliest_take = slot.expires.saturating_sub(long);
    if born > latest_take.saturating_add(START_SLACK_SECS) {
        return Liveness::StartedAfterLease;
    }
    // A worker takes its lease at once, or after waiting on deck for at
    // most about one lease time (the current lease's rest, plus a second).
    let oldest_holder = earliest_take
        .saturating_sub(long)
        .saturating_sub(1 + START_SLACK_SECS);
    if born < oldest_holder {
        return Liveness::StartedBeforeLease;
    }
    Liveness::Alive
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
    /// The current executable, re-run as `EXE worker` by the path it was
    /// installed at ([`installed_exe`]), so that after an upgrade the next
    /// worker is the new binary.
    pub fn current_exe() -> std::io::Result<WorkerCommand> {
        Ok(WorkerCommand {
            program: installed_exe()?,
            args: vec!["worker".into()],
        })
    }

    /// Starts a detached worker for `repo`. Its stdio is `/dev/null`, its
    /// working directory `/` (so it keeps no mount busy), and it inherits no
    /// descriptor of ours (Rust opens everything close-on-exec; the worker
    /// closes anything else it finds in [`detach`]).
    pub fn spawn(&self, repo: &Path, logfile: Option<&Path>) -> std::io::Result<Child> {
        let repo = std::path::absolute(repo)?;
        self.spawn_with(repo.as_os_str(), logfile, &[])
    }

    /// [`WorkerCommand::spawn`] with the repository argument as given (a
    /// URL is not a path to make absolute) and extra environment variables.
    pub fn spawn_with(
        &self,
        repo: &std::ffi::OsStr,
        logfile: Option<&Path>,
        env: &[(&str, &str)],
    ) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.envs(env.iter().copied());
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

/// The path this program was started by, for starting workers (and for
/// re-executing itself) after the file there was replaced.
///
/// Package managers upgrade a binary by moving a new file over the old
/// path. The running process keeps the old, now unlinked, file, and
/// `/proc/self/exe` then reads `/path/backoffice (deleted)`: starting that
/// fails. So the path is worked out once, as early as possible
/// ([`remember_installed_exe`] at start-up), and kept:
///
/// * `argv[0]`, made absolute against the start-up directory (or looked up
///   in `PATH` when it has no slash), if that file is the very one running
///   (same device and inode as `/proc/self/exe`). This keeps a symbolic
///   link such as `/usr/local/bin/backoffice -> /opt/backoffice-1.2/…`
///   as a link, so an upgrade that points the link elsewhere is followed.
/// * Otherwise `/proc/self/exe` (`std::env::current_exe`), without the
///   " (deleted)" suffix the kernel adds once the file is replaced.
pub fn installed_exe() -> std::io::Result<PathBuf> {
    INSTALLED
        .get_or_init(find_installed_exe)
        .clone()
        .ok_or_else(|| {
            std::io::Error::other("cannot tell which file this program was started from")
        })
}

static INSTALLED: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Works out [`installed_exe`] now. Call it first thing in `main`, before
/// the binary can be replaced.
pub fn remember_installed_exe() {
    let _ = INSTALLED.get_or_init(find_installed_exe);
}

fn find_installed_exe() -> Option<PathBuf> {
    let running = file_id(Path::new("/proc/self/exe"));
    if let (Some(arg0), Some(running)) = (std::env::args_os().next(), running) {
        let arg0 = PathBuf::from(arg0);
        let candidate = if arg0.components().count() > 1 || arg0.is_absolute() {
            std::path::absolute(&arg0).ok()
        } else {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(&arg0))
                    .find(|p| file_id(p) == Some(running))
            })
        };
        if let Some(c) = candidate.filter(|c| file_id(c) == Some(running)) {
            return Some(c);
        }
    }
    let exe = std::env::current_exe().ok()?;
    Some(strip_deleted(exe))
}

/// `/path/x (deleted)` → `/path/x`, when the kernel marked the file as
/// replaced and something exists at the original path.
fn strip_deleted(exe: PathBuf) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let bytes = exe.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(orig) if !exe.exists() => PathBuf::from(std::ffi::OsStr::from_bytes(orig)),
        _ => exe,
    }
}

/// A file's (device, inode), following symbolic links.
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// True if the file at [`installed_exe`] is no longer the one this process
/// runs (it was replaced by an upgrade). False when that cannot be told,
/// or while nothing is at the path (an upgrade half-way).
pub fn exe_replaced() -> bool {
    let Ok(path) = installed_exe() else {
        return false;
    };
    match (file_id(&path), file_id(Path::new("/proc/self/exe"))) {
        (Some(on_disk), Some(running)) => on_disk != running,
        _ => false,
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
        let slot = me.slot(i64::MAX, None);
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
            ..Slot::EMPTY
        };
        assert_eq!(liveness(&slot, None, 60), Liveness::StartedAfterLease);
        // One taken just after we started: we might be its holder.
        let born = start_to_unix(me.start.unwrap()).unwrap();
        let slot = Slot {
            expires: born + 61,
            ..slot
        };
        assert_eq!(liveness(&slot, None, 60), Liveness::Alive);
    }

    /// A process born long before a Fossil-style lease was taken (pid 1,
    /// or this test process under a lease "taken" in the far future) is
    /// not its holder.
    #[test]
    fn a_process_born_long_before_a_fossil_lease_is_not_its_holder() {
        let me = Identity::current();
        for expires in [4_102_444_800, i64::MAX] {
            let slot = Slot {
                pid: me.pid,
                expires,
                ..Slot::EMPTY
            };
            assert_eq!(
                liveness(&slot, None, 60),
                Liveness::StartedBeforeLease,
                "{expires}"
            );
        }
    }

    /// Heartbeats: another namespace's holder lives exactly while its
    /// heartbeat is current; our own namespace's holder needs both its
    /// process and a current heartbeat.
    #[test]
    fn heartbeats_decide_where_pids_cannot() {
        let me = Identity::current();
        let now = crate::clock::now();
        let ns = me.ns.expect("this test needs /proc/self/ns/pid");
        let elsewhere = Slot {
            pid: 2,
            expires: now - 100,
            start: Some(1),
            ns: Some(ns ^ 1),
            alive_until: Some(now + 5),
        };
        assert_eq!(
            liveness_at(&elsewhere, boot_id(), 60, now),
            Liveness::Elsewhere
        );
        assert_eq!(
            liveness_at(&elsewhere, boot_id(), 60, now + 6),
            Liveness::HeartbeatStopped
        );
        let no_beat = Slot {
            alive_until: None,
            ..elsewhere
        };
        assert_eq!(
            liveness_at(&no_beat, boot_id(), 60, now),
            Liveness::OtherNamespace
        );
        // Another boot with a current heartbeat: another host, alive.
        let other_host = Slot {
            ns: Some(ns),
            ..elsewhere
        };
        assert_eq!(
            liveness_at(&other_host, Some("00-11"), 60, now),
            Liveness::Elsewhere
        );
        // Ourselves, with a current and with a stopped heartbeat.
        let mine = me.slot(now - 100, Some(now + 5));
        assert_eq!(liveness_at(&mine, boot_id(), 60, now), Liveness::Alive);
        assert_eq!(
            liveness_at(&mine, boot_id(), 60, now + 6),
            Liveness::HeartbeatStopped
        );
        // Extreme stored values never overflow.
        for t in [i64::MIN, -1, 0, i64::MAX] {
            let s = Slot {
                expires: t,
                alive_until: Some(t),
                ..mine
            };
            let _ = liveness_at(&s, boot_id(), 60, t);
            let _ = liveness_at(&Slot { start: None, ..s }, None, i64::MAX, t);
            let _ = liveness_at(&Slot { start: None, ..s }, None, i64::MIN, t);
        }
    }

    #[test]
    fn installed_exe_is_the_running_file_and_strips_deleted() {
        let exe = installed_exe().unwrap();
        assert_eq!(file_id(&exe), file_id(Path::new("/proc/self/exe")));
        assert!(!exe_replaced());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, "x").unwrap();
        let deleted = PathBuf::from(format!("{} (deleted)", f.display()));
        assert_eq!(strip_deleted(deleted), f);
    }

    #[test]
    fn nobody_and_nonexistent() {
        assert_eq!(liveness(&Slot::EMPTY, None, 60), Liveness::Nobody);
        let slot = Slot {
            pid: i64::from(i32::MAX),
            ..Slot::EMPTY
        };
        assert_eq!(liveness(&slot, None, 60), Liveness::NoProcess);
        assert!(!exists(i64::MAX));
        for group in [0, -1, -5, i64::MIN] {
            assert!(!exists(group), "{group} is not a process");
        }
    }
}
