//! `backoffice setting`: show or change settings, checked against their one
//! definition: the engine's and each task's, gathered by
//! `Tasks::settings` (a host's own tasks included).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use backoffice::{Tasks, settings};

use crate::cli::SettingArgs;

/// Runs `backoffice setting`.
pub fn run(a: SettingArgs, tasks: &Tasks) -> Result<ExitCode> {
    // The first argument is the repository unless -R named it; then the
    // arguments are NAME VALUE. Which it is depends only on -R, never on
    // what the words look like, so no name can be taken for a file.
    let flagged = a.repository.is_some();
    let (path, name, value) =
        match a.repository {
            Some(_) if a.value.is_some() => {
                bail!("too many arguments: with -R REPO, `setting` takes NAME [VALUE]")
            }
            Some(r) => (r, a.repo, a.name),
            None => (
                PathBuf::from(a.repo.context(
                    "no repository given; name one with -R REPO or as the first argument",
                )?),
                a.name,
                a.value,
            ),
        };
    let text = |what: &str, v: Option<OsString>| -> Result<Option<String>> {
        v.map(|v| {
            v.into_string()
                .map_err(|v| anyhow!("the setting {what} {v:?} is not UTF-8 text"))
        })
        .transpose()
    };
    let name = text("name", name)?;
    let mut value = text("value", value)?;
    if let Some(f) = a.value_file.as_deref() {
        if value.is_some() {
            bail!("give the new value once: as VALUE or with --value-file");
        }
        let what = match name.as_deref() {
            Some(n) => format!("the value of {n}"),
            None => bail!("--value-file needs the NAME of the setting to change"),
        };
        value = super::secret::read(&what, None, Some(f), None)?;
    }
    if a.unset && name.is_none() {
        bail!("--unset needs the NAME of the setting to unset");
    }
    if a.unset && value.is_some() {
        bail!("--unset takes no VALUE: it removes the stored one");
    }
    let registry = tasks.settings();
    // The rule is fixed, but a slip against it gets a message about the
    // slip: a repository named both ways reads as an unknown setting that
    // is a file, and a forgotten repository as a missing file that is a
    // setting's name.
    if let Some(n) = name.as_deref() {
        if flagged && registry.def(n).is_err() && std::path::Path::new(n).exists() {
            bail!("the repository is given twice, as REPO and with -R REPO; give it once");
        }
    }
    if !flagged && !path.exists() {
        if let Some(p) = path.to_str().filter(|p| registry.def(p).is_ok()) {
            bail!(
                "no repository given (`{p}` is a setting); name it first, \
                 `setting REPO {p}`, or with -R REPO"
            );
        }
    }
    // Check the name before touching the repository, so a typo is reported
    // as a typo even when the repository has problems of its own.
    let def = name.as_deref().map(|n| registry.def(n)).transpose()?;
    if let Some(url) = super::pg::url(&path)? {
        return super::pg::setting(&url, tasks, name.as_deref(), value, a.unset);
    }
    let repo = super::open(&path)?;
    let show = |d: &settings::Def| -> Result<String> {
        Ok(match repo.get(d.name)? {
            Some(_) if d.secret => format!("{:<24} ********", d.name),
            Some(v) => format!("{:<24} {}", d.name, v),
            None => format!("{:<24} {} (default)", d.name, d.default),
        })
    };
    match (def, value) {
        (None, _) => {
            for d in registry.iter() {
                println!("{}", show(d)?);
            }
        }
        (Some(d), None) if a.unset => {
            repo.unset(d.name)?;
            println!("{}", show(d)?);
        }
        (Some(d), None) => println!("{}", show(d)?),
        (Some(d), Some(v)) => {
            let v = d.validate(&v)?;
            repo.set(d.name, &v)?;
            println!("{}", show(d)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
