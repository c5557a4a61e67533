//! Notifications: events, subscribers, immediate alerts, daily digests.
//!
//! (Being written.)

pub mod schedule;
pub mod send;
pub mod smtp;
