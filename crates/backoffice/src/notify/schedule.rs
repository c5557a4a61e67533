//! When daily digests are due: `email-digest-time` ("07:00 Europe/Paris").
//!
//! (A minimal stand-in; the full module with DST-aware boundaries is being
//! written.)

/// A daily time in a time zone.
#[derive(Clone, Debug)]
pub struct DigestTime {
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute, 0-59.
    pub minute: u8,
    /// The time zone.
    pub tz: jiff::tz::TimeZone,
}

impl DigestTime {
    /// Parses `HH:MM [ZONE]`.
    pub fn parse(text: &str) -> Result<DigestTime, String> {
        let mut parts = text.split_whitespace();
        let hm = parts.next().ok_or("expected HH:MM and a time zone")?;
        let (h, m) = hm.split_once(':').ok_or("expected HH:MM")?;
        let hour: u8 = h
            .parse()
            .ok()
            .filter(|h| *h < 24)
            .ok_or("hour must be 0-23")?;
        let minute: u8 = m
            .parse()
            .ok()
            .filter(|m| *m < 60)
            .ok_or("minute must be 0-59")?;
        let tz = match parts.next() {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => {
                jiff::tz::TimeZone::get(name).map_err(|_| format!("unknown time zone `{name}`"))?
            }
        };
        Ok(DigestTime { hour, minute, tz })
    }
}
