//! The `relay` send method: SMTP to a mail submission agent.
//!
//! (Being written: `Relay`, a [`super::send::Transport`] over lettre's SMTP
//! client that reuses one connection for a whole run.)
