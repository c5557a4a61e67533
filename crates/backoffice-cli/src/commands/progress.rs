//! A progress line on stderr, for long work run by hand: a sweep over
//! thousands of repositories, `maintain --now` on a large file, `peer
//! sync`. Only when stderr is a terminal (and `TERM` is not `dumb`): a log
//! file, a pipe or cron gets none of it, not even a carriage return. One
//! line, redrawn in place at most ten times a second, and erased when the
//! work ends, so the command's own output reads as it would without it.
//! Hand-written: a counter and a clock need no crate.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Whether progress may be drawn: stderr is a terminal that can take it.
pub(crate) fn wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// The line.
pub(crate) struct Line {
    on: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Line {
    /// A line that draws only if [`wanted`].
    pub(crate) fn new() -> Line {
        Line {
            on: wanted(),
            last: None,
            drawn: false,
        }
    }

    /// Shows `text` (at most every 100 ms, unless `now`).
    pub(crate) fn show(&mut self, text: &str, now: bool) {
        if !self.on {
            return;
        }
        if !now
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        // Carriage return and erase-to-end: the line is redrawn in place.
        let _ = write!(err, "\r\x1b[K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the line (before the command prints its results).
    pub(crate) fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.clear();
    }
}

/// "3 of 10 (30%)".
pub(crate) fn count(done: u64, total: u64, unit: &str) -> String {
    let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    format!("{done} of {total} {unit} ({pct}%)")
}

/// A line that a thread redraws with the elapsed time while the caller is
/// blocked in one long statement (`PRAGMA quick_check`), which can tell
/// nothing while it runs: "maintain: check… 3.2 s".
pub(crate) struct Ticker {
    what: Arc<Mutex<(String, Instant)>>,
    /// Wakes the thread to draw a new step; dropped, ends it.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    /// Starts ticking (a thread only if [`wanted`]).
    pub(crate) fn start() -> Ticker {
        let what = Arc::new(Mutex::new((String::new(), Instant::now())));
        let (tx, rx) = mpsc::channel::<()>();
        let thread = wanted()
            .then(|| {
                let what = Arc::clone(&what);
                std::thread::Builder::new()
                    .name("backoffice-progress".into())
                    .spawn(move || {
                        let mut line = Line::new();
                        loop {
                            if let Ok((w, t0)) = what.lock().map(|g| g.clone()) {
                                if !w.is_empty() {
                                    let s = t0.elapsed().as_secs_f64();
                                    line.show(&format!("{w}… {s:.1} s"), true);
                                }
                            }
                            // Woken by a new step (drawn at once, however
                            // short), or every 200 ms for the clock; ended
                            // when the ticker is dropped.
                            match rx.recv_timeout(Duration::from_millis(200)) {
                                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    })
                    .ok()
            })
            .flatten();
        Ticker {
            what,
            stop: Some(tx),
            thread,
        }
    }

    /// What is being done now; its clock starts now.
    pub(crate) fn set(&self, what: String) {
        if let Ok(mut g) = self.what.lock() {
            *g = (what, Instant::now());
        }
        if self.thread.is_some() {
            if let Some(tx) = &self.stop {
                let _ = tx.send(());
            }
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The thread's line is erased as it ends.
            let _ = t.join();
        }
    }
}
