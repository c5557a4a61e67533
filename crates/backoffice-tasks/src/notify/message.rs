//! Building a well-formed MIME message with lettre.
//!
//! Subjects and bodies may hold any Unicode; lettre encodes headers per
//! RFC 2047 and picks a transfer encoding for the body (quoted-printable
//! or base64), so long lines and non-ASCII text survive any relay. Every
//! value that reaches a header has been reduced to one line before (see
//! [`super::one_line`]), so no event title or name can add a header.

use std::time::{Duration, UNIX_EPOCH};

use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};

use super::send::Envelope;

/// What goes into one message.
#[derive(Clone, Debug)]
pub struct Parts<'a> {
    /// From: (`email-self`).
    pub from: &'a str,
    /// To:.
    pub to: &'a str,
    /// Subject:, already prefixed.
    pub subject: &'a str,
    /// The text.
    pub body: &'a str,
    /// Message-ID:, with angle brackets.
    pub message_id: &'a str,
    /// Date:, Unix seconds.
    pub date: i64,
    /// List-Id:, if any.
    pub list_id: Option<&'a str>,
    /// List-Unsubscribe: target, if any (one-click, RFC 8058).
    pub unsubscribe: Option<&'a str>,
}

fn header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

/// Builds the message; returns its envelope and its bytes (CRLF line ends).
pub fn build(p: &Parts<'_>) -> Result<(Envelope, Vec<u8>), String> {
    let from: Mailbox = p
        .from
        .parse()
        .map_err(|e| format!("bad From address {:?}: {e}", p.from))?;
    let to: Mailbox =
        p.to.parse()
            .map_err(|e| format!("bad To address {:?}: {e}", p.to))?;
    let mut b = Message::builder()
        .from(from)
        .to(to)
        .subject(super::one_line(p.subject))
        .date(UNIX_EPOCH + Duration::from_secs(p.date.max(0) as u64))
        .message_id(Some(p.message_id.to_owned()))
        .header(ContentType::TEXT_PLAIN);
    if let Some(l) = p.list_id {
        b = b.raw_header(header("List-Id", super::one_line(l)));
    }
    if let Some(u) = p.unsubscribe {
        b = b.raw_header(header(
            "List-Unsubscribe",
            format!("<{}>", super::one_line(u)),
        ));
        b = b.raw_header(header(
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click".into(),
        ));
    }
    let m = b
        .body(p.body.replace("\r\n", "\n"))
        .map_err(|e| format!("cannot build the message: {e}"))?;
    let env = Envelope {
        from: p.from.to_owned(),
        to: vec![p.to.to_owned()],
    };
    Ok((env, m.formatted()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(subject: &'a str, body: &'a str) -> Parts<'a> {
        Parts {
            from: "bo@example.org",
            to: "ann@example.org",
            subject,
            body,
            message_id: "<1.abcd@example.org>",
            date: 1_795_262_400,
            list_id: Some("Demo <demo.example.org>"),
            unsubscribe: Some("https://example.org/unsubscribe/abc"),
        }
    }

    fn headers(raw: &[u8]) -> String {
        let s = String::from_utf8_lossy(raw);
        s.split("\r\n\r\n").next().unwrap().to_owned()
    }

    #[test]
    fn headers_are_complete() {
        let (env, raw) = build(&parts("[demo] Hello", "Body\n")).unwrap();
        assert_eq!(env.to, vec!["ann@example.org".to_owned()]);
        let h = headers(&raw);
        for want in [
            "From: bo@example.org",
            "To: ann@example.org",
            "Subject: [demo] Hello",
            "Message-ID: <1.abcd@example.org>",
            "Date: Sat, 21 Nov 2026 12:00:00 +0000",
            "List-Id: Demo <demo.example.org>",
            "List-Unsubscribe: <https://example.org/unsubscribe/abc>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Content-Type: text/plain; charset=utf-8",
        ] {
            assert!(h.contains(want), "missing {want:?} in\n{h}");
        }
    }

    #[test]
    fn header_injection_is_impossible() {
        let (_, raw) = build(&parts("Hi\r\nBcc: victim@example.org\r\n\r\nspoof", "x")).unwrap();
        let h = headers(&raw);
        assert!(!h.lines().any(|l| l.starts_with("Bcc:")), "{h}");
        assert!(
            h.contains("Subject: Hi Bcc: victim@example.org spoof"),
            "{h}"
        );
    }

    #[test]
    fn unicode_and_long_lines_are_encoded() {
        let long = "x".repeat(2000);
        let (_, raw) = build(&parts("Déjà vu — 日本", &format!("Grüße\n{long}\n"))).unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(text.is_ascii(), "8-bit data must be encoded");
        assert!(text.contains("Subject: =?utf-8?"), "{text}");
        assert!(
            text.lines().all(|l| l.len() <= 998),
            "a line exceeds RFC 5322's limit"
        );
    }
}
