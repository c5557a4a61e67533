//! Shell commands run by a worker (hooks, the `pipe` send method) whose
//! whole process tree ends when the command's run ends, however it ends.
//!
//! # The problem
//!
//! `/bin/sh -c CMD` forks for every program it starts, so killing the shell
//! (or giving it `PR_SET_PDEATHSIG`) leaves its children running: a hook
//! script re-parented to init went on while the next worker ran the same
//! batch again, and a `sendmail` whose worker was killed mid-message saw
//! EOF and sent the half it had read. A process group does not hold either:
//! `setsid cmd &` leaves it, and a background process holding the output
//! pipe kept the worker's reader thread waiting for ever.
//!
//! # The guard
//!
//! A host can name a *guard* command ([`set_guard`]; `backoffice-cli` uses
//! its own executable with the hidden `guard-child` subcommand, so every
//! binary built on it has one). A command then runs as
//!
//! ```text
//! worker ──► guard (own session, child subreaper) ──► /bin/sh -c CMD (own group) ──► …
//! ```
//!
//! * The guard makes itself a **child subreaper** (`PR_SET_CHILD_SUBREAPER`):
//!   every orphan of the tree, including one that called `setsid`, is
//!   re-parented to it instead of init, so the tree can always be found
//!   (by `/proc` parent links) and is complete while the guard has children.
//! * It watches a **life pipe**: the worker keeps the only write end (close
//!   on exec, so no other child inherits it). When the worker dies — even by
//!   SIGKILL — or wants the command stopped (time-out), the write end
//!   closes; the guard sees EOF and kills every descendant with SIGKILL,
//!   reaping until it has no child left. A signal would not do: PDEATHSIG
//!   follows the *thread* that started the child, not the process.
//! * When the command's shell exits, the guard kills whatever the command
//!   left running and exits with the shell's status (re-raising a signal),
//!   so the worker sees the command's own exit status. The run of a command
//!   is therefore its whole tree: nothing outlives it.
//! * It is in a session of its own, so a Ctrl-C meant for a `backoffice run`
//!   in a terminal reaches the worker (which then dies, and the guard ends
//!   the tree) but never the guard alone.
//!
//! # A complete input
//!
//! Standard input is a memory file (`memfd`; an unlinked temporary file
//! where that is missing) holding the whole input before the command
//! starts, never a pipe the worker writes while the command reads. A worker
//! that dies therefore never hands a command a cut-off message that ends in
//! a plausible EOF: either the command never started, or it has it all (and
//! is then killed with its worker anyway).
//!
//! # Output
//!
//! The worker reads the command's output itself, with `poll` on the output
//! pipe and on a pidfd of the child, so no thread is started and none can be
//! left waiting on a pipe that something else holds open. Once the child
//! has exited, output is read for at most [`OUTPUT_GRACE`] more; then the
//! pipe is dropped.
//!
//! # Without a guard
//!
//! A library host that sets no guard (or where the guard cannot be
//! started) gets the old, weaker protection: the shell runs in its own
//! process group with `PR_SET_PDEATHSIG` = SIGKILL, and that group is killed
//! on time-out and after the shell exits. Descendants that leave the group
//! (`setsid`) or outlive a SIGKILLed worker are then not caught; the host's
//! documentation should say so (the README does for library use).

use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::process::WorkerCommand;

/// How long output is still read after the command's process has exited.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long the worker waits for a guard it asked to stop.
const GUARD_STOP_WAIT: Duration = Duration::from_secs(5);

static GUARD: OnceLock<WorkerCommand> = OnceLock::new();

/// Names the guard command: `PROGRAM ARGS… FD -- /bin/sh -c CMD` must run
/// [`guard_main`] with `FD` and the rest. `backoffice-cli` sets it to its own
/// executable and `guard-child`; see the module docs for what a host
/// without one loses.
pub fn set_guard(cmd: WorkerCommand) {
    let _ = GUARD.set(cmd);
}

/// The guard command, if one is set.
pub fn guard() -> Option<&'static WorkerCommand> {
    GUARD.get()
}

/// The program a host built on `backoffice-cli` names as its own guard:
/// `/proc/self/exe` where it exists. That is the running binary even after a
/// package manager replaced the file on disk (its path then ends in
/// " (deleted)" and cannot be started), and the guard protocol is then
/// always the worker's own version.
pub fn self_exe() -> std::io::Result<PathBuf> {
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() {
        Ok(proc)
    } else {
        std::env::current_exe()
    }
}

/// One command to run.
#[derive(Clone, Debug)]
pub struct Spec<'a> {
    /// Given to `/bin/sh -c`.
    pub command: &'a str,
    /// Working directory (default: the worker's).
    pub dir: Option<&'a Path>,
    /// Added to the environment.
    pub env: Vec<(&'static str, OsString)>,
    /// All of standard input.
    pub input: &'a [u8],
    /// Capture stdout with stderr (true) or discard it (false; only stderr
    /// is captured).
    pub stdout: bool,
    /// Longest run; then the whole tree is killed.
    pub timeout: Duration,
}

/// How a command's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ran {
    /// Its exit status, or `None` if it ran past the time-out (and was
    /// killed, with everything it started).
    pub status: Option<ExitStatus>,
    /// Bytes of standard input it read (as far as the shared file offset
    /// tells; a command that maps the file or seeks may show otherwise).
    pub input_read: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

/// A file holding all of `data`, positioned at its start, for a child's
/// standard input.
pub(crate) fn input_file(data: &[u8]) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::memfd_create("backoffice-input", rustix::fs::MemfdFlags::CLOEXEC)
        .map(std::fs::File::from)
        .or_else(|_| unlinked_temp());
    let mut f = fd?;
    f.write_all(data)?;
    f.rewind()?;
    Ok(f)
}

/// An unlinked temporary file, where `memfd_create` is missing.
fn unlinked_temp() -> std::io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    for n in 0..100u32 {
        let path = dir.join(format!(
            ".backoffice-input-{}-{n}-{}",
            std::process::id(),
            crate::clock::now()
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no temporary file name is free"))
}

/// Runs `spec` to its end (or its time-out), handing its output to `out`
/// as it comes. `Err` only if it could not be started.
pub fn run(spec: &Spec<'_>, out: &mut dyn FnMut(&[u8])) -> std::io::Result<Ran> {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let stdin = input_file(spec.input)?;
    let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let sh = |program: &Path| {
        let mut c = Command::new(program);
        if let Some(d) = spec.dir {
            c.current_dir(d);
        }
        c.envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(stdin.try_clone()?))
            .stdout(match spec.stdout {
                true => Stdio::from(out_w.try_clone()?),
                false => Stdio::null(),
            })
            .stderr(Stdio::from(out_w.try_clone()?));
        Ok::<_, std::io::Error>(c)
    };
    // With a guard: the life pipe's read end goes to the guard (its number on
    // the command line), the write end stays here, close-on-exec.
    let mut life: Option<OwnedFd> = None;
    let mut guarded = None;
    if let Some(g) = guard() {
        let (life_r, life_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let raw = life_r.as_raw_fd();
        let mut c = sh(&g.program)?;
        c.args(&g.args)
            .arg(raw.to_string())
            .arg("--")
            .arg("/bin/sh")
            .arg("-c")
            .arg(spec.command);
        // SAFETY: fcntl(F_SETFD) is one async-signal-safe system call on a
        // descriptor that is open in the child (close-on-exec ones stay
        // open until exec); nothing is allocated or locked.
        unsafe {
            c.pre_exec(move || {
                let fd = rustix::fd::BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
                    .map_err(std::io::Error::from)
            });
        }
        match c.spawn() {
            Ok(child) => {
                life = Some(life_w);
                guarded = Some(child);
            }
            Err(e) => {
                // A guard that cannot start (a host's binary without the
                // subcommand would exit instead, and fail the run loudly):
                // run unguarded rather than not at all.
                tracing::warn!(guard = %g.program.display(), error = %e, "cannot start the child guard; running the command without it");
            }
        }
        drop(life_r);
    }
    let mut child = match guarded {
        Some(c) => c,
        None => {
            let mut c = sh(Path::new("/bin/sh"))?;
            c.arg("-c").arg(spec.command).process_group(0);
            #[cfg(target_os = "linux")]
            // SAFETY: prctl(PR_SET_PDEATHSIG) is one async-signal-safe system
            // call; the closure allocates nothing and touches no lock.
            unsafe {
                c.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                        .map_err(std::io::Error::from)
                });
            }
            c.spawn()?
        }
    };
    // Our copies of the output's write end must go, or it never ends.
    drop(out_w);
    let pid = Pid::from_child(&child);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    let kill_group = || {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    };
    // A time-out too large for the clock means none (a day is plenty).
    let deadline = started
        .checked_add(spec.timeout)
        .unwrap_or_else(|| started + Duration::from_secs(86_400));
    let is_guarded = life.is_some();
    let mut output = Some(std::fs::File::from(out_r));
    let mut buf = vec![0u8; 16 * 1024];
    let mut status = None;
    let mut timed_out = false;
    let mut pause = Duration::from_micros(200);
    // Phase 1: until the child exits or the deadline passes.
    loop {
        if let Some(s) = child.try_wait()? {
            status = Some(s);
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        let wait = match &pidfd {
            Some(_) => (deadline - now).min(Duration::from_secs(1)),
            // No pidfd (old kernel): poll for the exit with growing pauses.
            None => (deadline - now).min(pause),
        };
        pause = (pause * 2).min(Duration::from_millis(20));
        wait_readable(&mut output, pidfd.as_ref(), wait, &mut buf, out);
    }
    if timed_out {
        if life.take().is_some() {
            // The guard ends the tree and exits; should it not, it is killed.
            let end = Instant::now() + GUARD_STOP_WAIT;
            while Instant::now() < end {
                if let Some(s) = child.try_wait()? {
                    status = Some(s);
                    break;
                }
                wait_readable(
                    &mut output,
                    pidfd.as_ref(),
                    Duration::from_millis(20),
                    &mut buf,
                    out,
                );
            }
            if status.is_none() {
                tracing::warn!("the child guard did not stop in time; killing it");
                let _ = child.kill();
            }
        } else {
            kill_group();
        }
        let _ = child.wait();
        status = None;
    }
    if !is_guarded {
        // Unguarded: what the shell left running in its group ends with it
        // (the guard does this, and more, for a guarded command).
        kill_group();
    }
    // Phase 2: the rest of the output, for a little while; then the pipe is
    // dropped, whoever may still hold its other end.
    let end = Instant::now() + OUTPUT_GRACE;
    while output.is_some() && Instant::now() < end {
        wait_readable(&mut output, None, end - Instant::now(), &mut buf, out);
    }
    let input_read = rustix::fs::seek(&stdin, rustix::fs::SeekFrom::Current(0)).unwrap_or(0);
    drop(life);
    Ok(Ran {
        status,
        input_read,
        elapsed: started.elapsed(),
    })
}

/// Waits up to `wait` for output (read and handed to `out`) or for the
/// pidfd to become readable. Sets `output` to `None` at its end.
fn wait_readable(
    output: &mut Option<std::fs::File>,
    pidfd: Option<&OwnedFd>,
    wait: Duration,
    buf: &mut [u8],
    out: &mut dyn FnMut(&[u8]),
) {
    let ts = rustix::event::Timespec {
        tv_sec: wait.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let mut fds = Vec::with_capacity(2);
    if let Some(o) = output.as_ref() {
        fds.push(PollFd::new(o, PollFlags::IN));
    }
    if let Some(p) = pidfd {
        fds.push(PollFd::new(p, PollFlags::IN));
    }
    if fds.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    let readable = match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(_) => output.is_some() && !fds[0].revents().is_empty(),
        Err(_) => false,
    };
    drop(fds);
    if readable {
        if let Some(o) = output.as_mut() {
            match o.read(buf) {
                Ok(0) | Err(_) => *output = None,
                Ok(n) => out(&buf[..n]),
            }
        }
    }
}

/// The guard's body (see the module docs): `life` is the read end of the
/// life pipe, `argv` the command (`/bin/sh -c CMD`). Returns the exit code
/// to use; re-raises the command's terminating signal on itself.
pub fn guard_main(life: i32, argv: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    // Not in the worker's process group or session: a signal for those
    // (Ctrl-C in a terminal) must not stop the guard without its tree.
    let _ = rustix::process::setsid();
    // Without it orphans go to init; the group kill still catches most.
    // rustix passes the pid as prctl's flag: any Some enables it, None
    // would turn it off.
    let subreaper = rustix::process::set_child_subreaper(Some(rustix::process::getpid())).is_ok();
    let Some((program, args)) = argv.split_first() else {
        eprintln!("backoffice guard-child: no command");
        return 2;
    };
    if life < 0 {
        eprintln!("backoffice guard-child: bad descriptor {life}");
        return 2;
    }
    // SAFETY: the worker passed us this descriptor (the read end of the
    // life pipe) and nothing else in this process owns it.
    let life = unsafe { OwnedFd::from_raw_fd(life) };
    if rustix::io::fcntl_setfd(&life, rustix::io::FdFlags::CLOEXEC).is_err() {
        eprintln!("backoffice guard-child: descriptor not open");
        return 2;
    }
    let mut cmd = Command::new(program);
    cmd.args(args).process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) is one async-signal-safe system call.
    // The guard is single-threaded, so "parent thread" is the guard.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "backoffice guard-child: cannot run {}: {e}",
                program.to_string_lossy()
            );
            return 127;
        }
    };
    let main = Pid::from_child(&child);
    // Reaped by waitpid below, never by `child`.
    drop(child);
    let me = rustix::process::getpid();
    let pidfd = rustix::process::pidfd_open(main, rustix::process::PidfdFlags::empty()).ok();
    let status = loop {
        let mut fds = vec![PollFd::new(&life, PollFlags::IN)];
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        let wait = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: if pidfd.is_some() {
                200_000_000
            } else {
                5_000_000
            },
        };
        let _ = rustix::event::poll(&mut fds, Some(&wait));
        let worker_gone = !fds[0].revents().is_empty();
        drop(fds);
        if worker_gone {
            // EOF (or an error): the worker died or wants the command
            // stopped. Nothing is written to this pipe, ever.
            kill_tree(me, main, subreaper);
            return 128 + Signal::KILL.as_raw();
        }
        // Reap every child that ended: the command, and orphans given to us.
        let mut main_status = None;
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, st))) if pid == main => main_status = Some(st),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(st) = main_status {
            break st;
        }
    };
    kill_tree(me, main, subreaper);
    if let Some(code) = status.exit_status() {
        return code;
    }
    if let Some(sig) = status.terminating_signal() {
        // Die of the same signal, so the worker reports it as the command's.
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: None,
            },
        );
        if let Some(s) = Signal::from_named_raw(sig) {
            let _ = rustix::process::kill_process(me, s);
        }
        return 128 + sig;
    }
    1
}

/// Kills every descendant of `me` (and the command's group) and reaps until
/// no child is left, a bounded number of rounds.
fn kill_tree(me: Pid, group: Pid, subreaper: bool) {
    for round in 0..500 {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(_)) => continue,
                // Children left that have not died yet: kill (again).
                Ok(None) => break,
                // No child at all: as a subreaper, no descendant either
                // (every orphan of the tree would be our child).
                Err(_) if subreaper => return,
                Err(_) => break,
            }
        }
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
        let left = descendants(me);
        if left.is_empty() && (!subreaper || round > 0) {
            return;
        }
        for pid in left {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every process whose parent chain leads to `root`, from `/proc`.
pub(crate) fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent = std::collections::HashMap::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_ppid(&t))
        {
            parent.insert(pid, ppid);
        }
    }
    let root = root.as_raw_nonzero().get();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&child, &pp) in &parent {
            if pp == p && child != root {
                if let Some(pid) = Pid::from_raw(child) {
                    out.push(pid);
                    frontier.push(child);
                }
            }
        }
        if out.len() > 100_000 {
            break;
        }
    }
    out
}

/// Field 4 of `/proc/PID/stat` (after the command name in parentheses).
pub(crate) fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str, timeout: Duration) -> Spec<'_> {
        Spec {
            command: cmd,
            dir: None,
            env: Vec::new(),
            input: b"line one\nline two\n",
            stdout: true,
            timeout,
        }
    }

    #[test]
    fn input_is_complete_and_output_captured() {
        let mut got = Vec::new();
        let ran = run(
            &spec("wc -l; echo err >&2; exit 3", Duration::from_secs(10)),
            &mut |b| got.extend_from_slice(b),
        )
        .unwrap();
        assert_eq!(ran.status.unwrap().code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&got).trim(), "2\nerr");
        assert_eq!(ran.input_read, 18);
    }

    #[test]
    fn a_time_out_kills_and_says_so() {
        let ran = run(&spec("sleep 30", Duration::from_millis(300)), &mut |_| {}).unwrap();
        assert_eq!(ran.status, None);
        assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);
    }

    #[test]
    fn ppid_parsing() {
        assert_eq!(parse_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }
}
