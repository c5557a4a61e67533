//! `backoffice completions` and `backoffice man`: shell completion scripts
//! and manual pages, generated from the one definition of every command and
//! flag (`cli.rs`), so they never disagree with `--help`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

/// `backoffice completions SHELL`: the script on stdout.
pub fn completions(a: CompletionsArgs) -> Result<ExitCode> {
    // The internal commands (`worker`, the guards) are not offered: the
    // script is made from the visible ones only (clap's generators list
    // hidden subcommands too).
    let full = Cli::command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let mut cmd = clap::Command::new("backoffice")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommands(visible);
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "backoffice", &mut out);
    print(&out).context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an
/// error.
fn print(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `backoffice man [--dir DIR]`: `backoffice.1` on stdout, or every page
/// (the command's and one per visible subcommand) into DIR.
pub fn man(a: ManArgs) -> Result<ExitCode> {
    let cmd = Cli::command();
    let Some(dir) = a.dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("rendering the manual page")?;
        print(&out).context("writing the manual page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("rendering {name}(1)"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("backoffice-{}", sub.get_name());
        // A subcommand's page is titled by its full name. (clap takes
        // names as `&'static str`; these few strings live until this
        // command exits, moments later.)
        let title: &'static str = Box::leak(name.clone().into_boxed_str());
        write(name, sub.clone().name(title))?;
    }
    write("backoffice".into(), cmd)?;
    for p in &written {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
