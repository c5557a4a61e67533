//! When daily digests are due: `email-digest-time` ("07:00 Europe/Paris").
//!
//! (Being written: parsing the setting and computing digest boundaries in
//! a time zone, DST included.)
