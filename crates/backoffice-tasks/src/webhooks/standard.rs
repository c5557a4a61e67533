//! The [Standard Webhooks](https://www.standardwebhooks.com/) headers, sent
//! with every delivery beside our own `X-Backoffice-*` headers.
//!
//! # Why both header sets, always
//!
//! The two sets do not collide, cost a few dozen bytes per request, and let
//! each receiver choose: one written against the `X-Backoffice-Signature`
//! of earlier releases keeps working unchanged, and a new one verifies with
//! an off-the-shelf Standard Webhooks library (Python, JavaScript, Go, Ruby,
//! …) instead of code of its own. An endpoint option would only add a way
//! to pick the wrong format; nothing is stored per endpoint.
//!
//! # The headers
//!
//! - `webhook-id`: the delivery id ([`super::delivery_id`]), the same on
//!   every attempt of one delivery, so the receiver can drop duplicates;
//! - `webhook-timestamp`: Unix seconds at sending (each attempt its own;
//!   the libraries refuse one more than 5 minutes away from their clock);
//! - `webhook-signature`: `v1,` and the base64 of the HMAC-SHA256 of
//!   `ID.TIMESTAMP.BODY` ([`signature`]).
//!
//! # The key
//!
//! The specification's secrets look like `whsec_` followed by the base64 of
//! random bytes, and those bytes are the HMAC key; `backoffice webhook
//! secret` makes one ([`generate`]). Such a secret is checked when the
//! endpoint is added ([`check`]): standard base64 with its `=` padding (what
//! every library decodes the same way) of at least 16 bytes. Any other
//! secret (at least 16 characters, as before) is used as it is: its UTF-8
//! bytes are the key, which a receiver passes to its library as bytes (in
//! Python, `Webhook(secret.encode())`).
//!
//! `X-Backoffice-Signature` is keyed with the secret's text in both cases,
//! as it always was, so no receiver of an existing endpoint changes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a secret in the specification's form.
pub const PREFIX: &str = "whsec_";

/// Random bytes in a secret made by [`generate`] (the specification
/// recommends 24 to 64).
pub const GENERATED_BYTES: usize = 32;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 §4) with `=` padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with its padding; `None` for anything else
/// (another alphabet, missing or misplaced `=`, spaces, stray bits), so a
/// secret is accepted only in the form every library reads the same way.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let s = text.as_bytes();
    if s.is_empty() || s.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (q, quad) in s.chunks(4).enumerate() {
        let last = q + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // The bits past the last byte must be zero: otherwise two texts
        // would decode to the same key.
        match pad {
            0 => out.extend_from_slice(&bytes),
            1 if n & 0xff == 0 => out.extend_from_slice(&bytes[..2]),
            2 if n & 0xffff == 0 => out.push(bytes[0]),
            _ => return None,
        }
    }
    Some(out)
}

/// Why a `whsec_` secret was refused, or `Ok` for any other secret (whose
/// length [`super::add`] checks).
pub fn check(secret: &str) -> Result<(), String> {
    let Some(encoded) = secret.strip_prefix(PREFIX) else {
        return Ok(());
    };
    match unbase64(encoded) {
        None => Err(format!(
            "a {PREFIX} secret must be followed by standard base64 with its = padding \
             (make one with `backoffice webhook secret`)"
        )),
        Some(key) if key.len() < super::MIN_SECRET => Err(format!(
            "a {PREFIX} secret must hold at least {} random bytes; this one holds {} \
             (make one with `backoffice webhook secret`)",
            super::MIN_SECRET,
            key.len()
        )),
        Some(_) => Ok(()),
    }
}

/// The HMAC key of `secret`: the decoded bytes of a valid `whsec_` secret,
/// otherwise the secret's own bytes (see [the key](self#the-key)).
pub fn key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(PREFIX)
        .and_then(unbase64)
        .filter(|k| k.len() >= super::MIN_SECRET)
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,BASE64`: the HMAC-SHA256 of `ID.TIMESTAMP.BODY` keyed with
/// [`key`]`(secret)`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key(secret)).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64(&mac.finalize().into_bytes()))
}

/// A new secret, `whsec_` and the base64 of [`GENERATED_BYTES`] bytes from
/// the system's random source.
pub fn generate() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; GENERATED_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{PREFIX}{}", base64(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors_both_ways() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
            if !coded.is_empty() {
                assert_eq!(
                    unbase64(coded).as_deref(),
                    Some(plain.as_bytes()),
                    "{coded}"
                );
            }
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unbase64(&base64(&all)), Some(all));
    }

    #[test]
    fn unbase64_refuses_what_libraries_could_read_differently() {
        for bad in [
            "Zg",
            "Zg=",
            "Zm9v=",
            "Z===",
            "Zh==",
            "Zm9vYg==Zg==",
            "Zm9v Yg==",
            "Zm-_",
            "",
        ] {
            assert_eq!(unbase64(bad), None, "{bad:?}");
        }
    }

    /// The example of the specification's reference libraries (their test
    /// suites sign this message with this secret).
    #[test]
    fn signature_matches_the_reference_example() {
        assert_eq!(
            signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn whsec_secrets_are_checked_and_decoded_others_used_as_they_are() {
        let generated = generate().unwrap();
        assert!(generated.starts_with(PREFIX));
        assert_eq!(check(&generated), Ok(()));
        assert_eq!(key(&generated).len(), GENERATED_BYTES);
        assert_ne!(generate().unwrap(), generated);
        // 12 bytes: too few.
        let e = check("whsec_MTIzNDU2Nzg5MDEy").unwrap_err();
        assert!(
            e.contains("at least 16 random bytes; this one holds 12"),
            "{e}"
        );
        let e = check("whsec_not base64 at all!").unwrap_err();
        assert!(e.contains("standard base64"), "{e}");
        assert_eq!(check("a-plain-secret-0123456789"), Ok(()));
        assert_eq!(
            key("a-plain-secret-0123456789"),
            b"a-plain-secret-0123456789"
        );
    }

    /// `add` refuses a malformed `whsec_` secret with the reason, and keeps
    /// a good one as it was given.
    #[test]
    fn add_checks_whsec_secrets() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let new = |secret: &str| super::super::New {
            url: "http://127.0.0.1:9/h".into(),
            secret: secret.into(),
            kinds: "*".into(),
            from_start: false,
        };
        match super::super::add(&conn, &new("whsec_MTIzNDU2Nzg5MDEyMzQ1Ng")) {
            Err(super::super::WebhookError::StandardSecret(e)) => {
                assert!(e.contains("standard base64 with its = padding"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let good = generate().unwrap();
        let w = super::super::add(&conn, &new(&good)).unwrap();
        assert_eq!(w.secret, good);
        assert_eq!(super::super::mask(&w.secret), "whse****");
    }
}
