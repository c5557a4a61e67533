//! Secrets from somewhere other than the command line.
//!
//! A command line is public on a Unix machine: every user sees it in `ps`
//! and `/proc/PID/cmdline` while the command runs, and shells keep it in
//! their history. So every option that takes a secret (a webhook's signing
//! key, a peer's replica token, a secret setting such as the SMTP password)
//! also reads it from a file (`--secret-file`, `--token-file`,
//! `--value-file`), from standard input (the file `-`), or, where one
//! names it, from an environment variable. The secret itself is never in
//! a message: errors say where it came from and what is wrong with it.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// One secret, from the first source given: the inline value (kept for
/// compatibility), then the file (`-`: standard input), then the
/// environment variable `env`. `what` names it in errors (e.g. "the
/// webhook secret"). `None` if no source gave one.
///
/// One line end at the end of a file or of standard input is dropped (what
/// `echo` and editors add); anything else is kept as it is, and an empty
/// secret is an error rather than a silent "no secret".
pub(crate) fn read(
    what: &str,
    inline: Option<String>,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<String>> {
    if let Some(v) = inline {
        return non_empty(what, "the command line", v).map(Some);
    }
    if let Some(f) = file {
        let (from, mut v) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .with_context(|| format!("reading {what} from standard input"))?;
            ("standard input".to_owned(), s)
        } else {
            let s = std::fs::read_to_string(f)
                .with_context(|| format!("reading {what} from {}", f.display()))?;
            (f.display().to_string(), s)
        };
        if v.ends_with('\n') {
            v.pop();
            if v.ends_with('\r') {
                v.pop();
            }
        }
        return non_empty(what, &from, v).map(Some);
    }
    match env.map(|name| (name, std::env::var(name))) {
        Some((name, Ok(v))) => non_empty(what, &format!("${name}"), v).map(Some),
        Some((name, Err(std::env::VarError::NotUnicode(_)))) => {
            bail!("{what} in ${name} is not UTF-8 text")
        }
        _ => Ok(None),
    }
}

fn non_empty(what: &str, from: &str, v: String) -> Result<String> {
    if v.is_empty() {
        bail!("{what} from {from} is empty");
    }
    Ok(v)
}
