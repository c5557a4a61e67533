//! The `backoffice` command. Everything lives in the `backoffice_cli` library
//! so that a Rust host can ship the same commands with its own tasks.

fn main() -> std::process::ExitCode {
    backoffice_cli::main(
        backoffice::Tasks::new()
            .with(backoffice_tasks::notify::Notify)
            .with(backoffice_tasks::hooks::Hooks)
            .with(backoffice_tasks::webhooks::Webhooks)
            .with(backoffice_tasks::replicate::Replicate)
            .with(backoffice_tasks::maintain::Maintenance)
            .with(backoffice_tasks::schedules::Schedules),
    )
}
