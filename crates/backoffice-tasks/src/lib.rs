//! The tasks the `backoffice` binary ships, built on the engine's public
//! API (the `backoffice` crate) and nothing else of it.
//!
//! # Layout
//!
//! * [`notify`]: subscribers, email alerts and daily digests, the outbox
//!   and its send methods (the `alerts` task).
//! * [`hooks`]: shell hooks run on new events (the `hooks` task).
//! * [`webhooks`]: signed HTTP deliveries of events (the `webhooks` task).
//! * [`replicate`]: consistent copies of the repository on peers (the
//!   `replicate` task).
//! * [`maintain`]: the database's own upkeep (the `maintenance` task).
//! * [`schedules`]: periodic jobs, once per slot (issue 15; so far the
//!   slot arithmetic).

#![deny(missing_docs)]

pub mod hooks;
pub mod maintain;
pub mod notify;
pub mod replicate;
pub mod schedules;
pub mod webhooks;

#[cfg(test)]
mod tests {
    /// The README's settings table documents every task's settings: same
    /// names, defaults, help (the engine checks its own the same way).
    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../../README.md");
        for d in [
            crate::notify::config::SETTINGS,
            crate::hooks::SETTINGS,
            crate::webhooks::SETTINGS,
            crate::replicate::SETTINGS,
            crate::maintain::SETTINGS,
            crate::schedules::task::SETTINGS,
        ]
        .concat()
        {
            let row = format!("| `{}` | `{}` | {} |", d.name, d.default, d.help);
            assert!(readme.contains(&row), "README.md lacks the row:\n{row}");
        }
    }
}
