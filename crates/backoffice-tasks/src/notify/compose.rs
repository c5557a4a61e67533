//! The text of alerts and digests: plain text a person reads in any mail
//! client, one event per block.

use backoffice::clock;

/// One event as it appears in a message.
pub use backoffice::events::StoredEvent as EventText;

/// A message's subject and body, before headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    /// Subject, without the `email-subname` prefix.
    pub subject: String,
    /// Body text, LF line ends.
    pub body: String,
}

/// Most body lines shown per event; the rest is behind its link.
const MAX_BODY_LINES: usize = 30;

fn event_block(out: &mut String, e: &EventText) {
    out.push_str(&format!("== {}: {}\n", e.kind, e.title));
    let when = format!("{} UTC", &clock::format_utc(e.time)[..16]);
    match &e.author {
        Some(a) => out.push_str(&format!("   by {a}, {when}\n")),
        None => out.push_str(&format!("   {when}\n")),
    }
    if let Some(u) = &e.url {
        out.push_str(&format!("   {u}\n"));
    }
    let lines: Vec<&str> = e.body.lines().collect();
    if !lines.iter().all(|l| l.trim().is_empty()) {
        out.push('\n');
        for l in lines.iter().take(MAX_BODY_LINES) {
            let l = l.trim_end();
            if l.is_empty() {
                out.push('\n');
            } else {
                out.push_str("   ");
                out.push_str(l);
                out.push('\n');
            }
        }
        if lines.len() > MAX_BODY_LINES {
            out.push_str(&format!(
                "   [... {} more lines]\n",
                lines.len() - MAX_BODY_LINES
            ));
        }
    }
    out.push('\n');
}

fn footer(out: &mut String, why: &str, unsubscribe: Option<&str>) {
    out.push_str("-- \n");
    out.push_str(why);
    out.push('\n');
    if let Some(u) = unsubscribe {
        out.push_str(&format!("To stop them: {u}\n"));
    }
}

/// An immediate alert about one or more events.
pub fn alert(project: &str, events: &[EventText], unsubscribe: Option<&str>) -> Composed {
    let subject = match events {
        [one] => one.title.clone(),
        [first, rest @ ..] => format!("{} (and {} more)", first.title, rest.len()),
        [] => "No new events".to_owned(),
    };
    let mut body = format!(
        "{} new in {project}:\n\n",
        if events.len() == 1 {
            "Something".to_owned()
        } else {
            format!("{} events", events.len())
        }
    );
    for e in events {
        event_block(&mut body, e);
    }
    footer(
        &mut body,
        &format!("You get these alerts because you subscribed to {project}."),
        unsubscribe,
    );
    Composed { subject, body }
}

/// A daily digest of the events between `from` and `to` (Unix seconds).
pub fn digest(
    project: &str,
    events: &[EventText],
    from: i64,
    to: i64,
    unsubscribe: Option<&str>,
) -> Composed {
    let n = events.len();
    let subject = format!("Daily digest: {n} event{}", if n == 1 { "" } else { "s" });
    let mut body = format!(
        "{project}: {n} event{} from {} to {} UTC.\n\n",
        if n == 1 { "" } else { "s" },
        &clock::format_utc(from)[..16],
        &clock::format_utc(to)[..16]
    );
    for e in events {
        event_block(&mut body, e);
    }
    footer(
        &mut body,
        &format!("You get this digest because you subscribed to {project}."),
        unsubscribe,
    );
    Composed { subject, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, title: &str, body: &str) -> EventText {
        EventText {
            eventid: id,
            kind: "wiki".into(),
            title: title.into(),
            body: body.into(),
            url: Some(format!("https://example.org/wiki/{id}")),
            author: Some("alice".into()),
            time: 1_795_262_400,
        }
    }

    /// Snapshot: what a person reads.
    #[test]
    fn alert_text() {
        let c = alert(
            "Demo",
            &[
                ev(1, "Front page edited", "Fixed a typo.\n\nAnd another."),
                ev(2, "New page: Roadmap", ""),
            ],
            Some("https://example.org/unsubscribe/abc"),
        );
        assert_eq!(c.subject, "Front page edited (and 1 more)");
        assert_eq!(
            c.body,
            "2 events new in Demo:

== wiki: Front page edited
   by alice, 2026-11-21 12:00 UTC
   https://example.org/wiki/1

   Fixed a typo.

   And another.

== wiki: New page: Roadmap
   by alice, 2026-11-21 12:00 UTC
   https://example.org/wiki/2

-- 
You get these alerts because you subscribed to Demo.
To stop them: https://example.org/unsubscribe/abc
"
        );
    }

    #[test]
    fn digest_text_and_long_bodies() {
        let long: String = (1..=40).map(|i| format!("line {i}\n")).collect();
        let c = digest(
            "Demo",
            &[ev(3, "Big change", &long)],
            1_795_176_000,
            1_795_262_400,
            None,
        );
        assert_eq!(c.subject, "Daily digest: 1 event");
        assert!(
            c.body
                .starts_with("Demo: 1 event from 2026-11-20 12:00 to 2026-11-21 12:00 UTC.\n")
        );
        assert!(
            c.body.contains("   line 30\n   [... 10 more lines]\n"),
            "{}",
            c.body
        );
        assert!(!c.body.contains("line 31"));
        assert!(!c.body.contains("To stop them"));
    }
}
