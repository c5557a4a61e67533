//! The `relay` send method: SMTP to a mail submission agent.
//!
//! (Being written: a [`super::send::Transport`] over lettre's SMTP client
//! that reuses one connection for a whole run.)

use super::config::EmailConfig;
use super::send::Transport;

/// Opens the relay transport for a run.
pub fn open(cfg: &EmailConfig) -> Result<Box<dyn Transport>, String> {
    Err(format!(
        "email-send-method relay ({}) is not available in this build yet",
        cfg.relay_host
    ))
}
