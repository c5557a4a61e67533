//! `backoffice pid`: like `fossil test-process-id`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::Slot;
use backoffice::process;

use crate::cli::PidArgs;

/// Runs `backoffice pid`.
pub fn run(a: PidArgs) -> Result<ExitCode> {
    println!("ProcessID for this process: {}", std::process::id());
    if let Some(s) = a.sleep {
        std::thread::sleep(std::time::Duration::from_secs(s));
    }
    for pid in a.pids {
        let exists = process::exists(pid);
        // "done" is our verdict: a zombie exists but is done. No lease is
        // involved, so only existence and the zombie state count.
        let zombie = process::proc_stat(pid).is_some_and(|s| matches!(s.state, 'Z' | 'X' | 'x'));
        let done = !exists || zombie;
        let l = process::liveness(&Slot { pid, ..Slot::EMPTY }, None, 60);
        print!(
            "ProcessId {pid}: exists {} done {}",
            exists as u8, done as u8
        );
        if a.verbose {
            match process::proc_stat(pid) {
                Some(s) => print!(" state {} start {}", s.state, s.start),
                None => print!(" ({})", l.describe()),
            }
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
