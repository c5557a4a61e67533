//! The `backoffice` command. Everything lives in the `backoffice_cli` library
//! so that a Rust host can ship the same commands with its own tasks.

fn main() -> std::process::ExitCode {
    backoffice_cli::main(
        backoffice::Tasks::new()
            .with(backoffice::notify::Notify)
            .with(backoffice::hooks::Hooks)
            .with(backoffice::webhooks::Webhooks)
            .with(backoffice::replicate::Replicate)
            .with(backoffice::maintain::Maintenance),
    )
}
