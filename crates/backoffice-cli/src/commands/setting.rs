//! `backoffice setting`: show or change settings, checked against their one
//! definition: the engine's and each task's, gathered by
//! `Tasks::settings` (a host's own tasks included).

use std::process::ExitCode;

use anyhow::Result;
use backoffice::{Tasks, settings};

use crate::cli::SettingArgs;

/// Runs `backoffice setting`.
pub fn run(a: SettingArgs, tasks: &Tasks) -> Result<ExitCode> {
    let registry = tasks.settings();
    // Check the name before touching the repository, so a typo is reported
    // as a typo even when the repository has problems of its own.
    let def = a.name.as_deref().map(|n| registry.def(n)).transpose()?;
    if let Some(url) = super::pg::url(&a.repository)? {
        return super::pg::setting(&url, tasks, a.name.as_deref(), a.value, a.unset);
    }
    let repo = super::open(&a.repository)?;
    let show = |d: &settings::Def| -> Result<String> {
        Ok(match repo.get(d.name)? {
            Some(_) if d.secret => format!("{:<24} ********", d.name),
            Some(v) => format!("{:<24} {}", d.name, v),
            None => format!("{:<24} {} (default)", d.name, d.default),
        })
    };
    match (def, a.value) {
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
