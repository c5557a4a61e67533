//! Scheduled work without a cron daemon (issue 15): periodic jobs that
//! run once per slot.
//!
//! # Layout
//!
//! * [`slots`]: when a schedule's slots fall — five-field cron patterns on
//!   a time zone's wall clock (gaps and folds included) or plain
//!   intervals — and which slots have passed since the last one ran.
//!
//! The task itself (the schedules table, claiming a slot before its
//! command starts, catch-up, the command and event actions) builds on
//! these and is not here yet.

pub mod slots;
