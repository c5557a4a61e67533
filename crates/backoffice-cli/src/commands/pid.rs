//! `backoffice pid`: like `fossil test-process-id`.

use std::process::ExitCode;

use anyhow::Result;
use backoffice::lease::Slot;
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
        // "done" is our verdict: a zombie exists but is done.
        let slot = Slot {
            pid,
            expires: i64::MAX,
            start: None,
        };
        let l = process::liveness(&slot, None, 60);
        let done = !l.is_alive();
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
