//! Per-repository API bearer tokens, for a web front that serves
//! `status` and metrics over HTTP.
//!
//! A repository has at most one token. Only its SHA-256 is stored, in the
//! `config` row [`TOKEN_ROW`] as `sha256:` and 64 lowercase hex digits, so
//! anyone who can read the repository file (a backup, a clone of the
//! database) still cannot call the API. [`create`] returns the token itself
//! exactly once; the caller shows it to the operator and forgets it.
//!
//! The token has 256 bits from SQLite's `randomblob()`, whose generator is
//! seeded by the operating system, so no extra crate is needed and guessing
//! is hopeless; a plain hash (no salt, no slow KDF) is therefore enough, as
//! for any high-entropy API key.

use crate::db::{Db, DbError};
use sha2::{Digest, Sha256};

/// The `config` row holding `sha256:` + the lowercase hex SHA-256 of the
/// token (never the token itself).
pub const TOKEN_ROW: &str = "backoffice-api-token";

/// The `config` row holding the hash of the read-only metrics token
/// (`backoffice token --metrics`): it opens `/metrics` for this
/// repository to a scraper, and nothing else.
pub const METRICS_TOKEN_ROW: &str = "backoffice-metrics-token";

/// What every token starts with, so that a leaked one is recognisable (to
/// secret scanners and to people).
const PREFIX: &str = "bo_";

/// What the stored hash starts with; names the algorithm so that another
/// can be introduced without guessing what an old row holds.
const HASH_PREFIX: &str = "sha256:";

/// The answer of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The presented token is the repository's token.
    Valid,
    /// The repository has a token and this is not it (or the stored row is
    /// malformed: see [`verify`]).
    Invalid,
    /// The repository has no token: the API is not enabled for it.
    NoToken,
}

/// Makes a new token, stores its hash (replacing any earlier one, which
/// thereby stops working) and returns the token: `bo_` and 64 lowercase hex
/// digits. This is the only time the token exists outside the caller.
pub fn create<'a>(db: impl Into<Db<'a>>) -> Result<String, DbError> {
    create_in(db, TOKEN_ROW)
}

/// [`create`] for the token kept in `row` ([`TOKEN_ROW`] or
/// [`METRICS_TOKEN_ROW`]).
pub fn create_in<'a>(db: impl Into<Db<'a>>, row: &str) -> Result<String, DbError> {
    let token = format!("{PREFIX}{}", random_hex()?);
    db.into().config_set(row, &stored_form(&token))?;
    Ok(token)
}

/// 32 random bytes from the kernel, as 64 lowercase hex digits (a web
/// session's id, say).
pub fn random() -> Result<String, DbError> {
    random_hex()
}

/// The lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// True if `a` and `b` are equal, compared in constant time.
pub fn same(a: &str, b: &str) -> bool {
    ct_eq(a.as_bytes(), b.as_bytes())
}

/// 32 bytes from the kernel's random source, as 64 lowercase hex digits.
fn random_hex() -> Result<String, DbError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| DbError::Unsupported(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes the token; true if there was one. A repository without a
/// `config` table has none.
pub fn revoke<'a>(db: impl Into<Db<'a>>) -> Result<bool, DbError> {
    revoke_in(db, TOKEN_ROW)
}

/// [`revoke`] for the token kept in `row`.
pub fn revoke_in<'a>(db: impl Into<Db<'a>>, row: &str) -> Result<bool, DbError> {
    match db
        .into()
        .execute("DELETE FROM config WHERE name = ?1", &[row.into()])
    {
        Ok(n) => Ok(n > 0),
        Err(DbError::Sqlite(e)) if crate::repo::is_no_such_table(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// True if the repository has a token row (well-formed or not: a malformed
/// row still locks the API, see [`verify`]).
pub fn is_set<'a>(db: impl Into<Db<'a>>) -> Result<bool, DbError> {
    is_set_in(db, TOKEN_ROW)
}

/// [`is_set`] for the token kept in `row`.
pub fn is_set_in<'a>(db: impl Into<Db<'a>>, row: &str) -> Result<bool, DbError> {
    // config_get reads a missing config table as "no row".
    Ok(db.into().config_get(row)?.is_some())
}

/// Checks a presented token (exactly as sent; the caller strips `Bearer `)
/// against the stored hash, in constant time.
///
/// A stored row that is not `sha256:` and 64 hex digits makes every token
/// [`Verdict::Invalid`]: it fails closed, because treating a damaged row as
/// "no token" could open an API the operator meant to protect. A missing
/// row or `config` table is [`Verdict::NoToken`].
pub fn verify<'a>(db: impl Into<Db<'a>>, presented: &str) -> Result<Verdict, DbError> {
    verify_in(db, TOKEN_ROW, presented)
}

/// [`verify`] against the token kept in `row`.
pub fn verify_in<'a>(
    db: impl Into<Db<'a>>,
    row: &str,
    presented: &str,
) -> Result<Verdict, DbError> {
    let Some(stored) = db.into().config_get(row)? else {
        return Ok(Verdict::NoToken);
    };
    let Some(want) = parse_stored(&stored) else {
        return Ok(Verdict::Invalid);
    };
    // Hashing first makes the comparison's length fixed and its input
    // unrelated to the token's bytes, so even a leaky compare would tell an
    // attacker nothing useful; ct_eq is belt and braces.
    let got = Sha256::digest(presented.as_bytes());
    Ok(if ct_eq(&got, &want) {
        Verdict::Valid
    } else {
        Verdict::Invalid
    })
}

/// `sha256:` + lowercase hex of the token's SHA-256.
fn stored_form(token: &str) -> String {
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in Sha256::digest(token.as_bytes()) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// True if `presented` is `expected`, compared through their SHA-256 in
/// constant time (for a token kept outside a repository, such as the one a
/// server takes replicas with).
pub fn matches(expected: &str, presented: &str) -> bool {
    use sha2::{Digest, Sha256};
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    !expected.is_empty() && ct_eq(&a, &b)
}

/// The 32 hash bytes of a stored row, or None if it is not in our form.
fn parse_stored(stored: &str) -> Option<[u8; 32]> {
    let hex = stored.strip_prefix(HASH_PREFIX)?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Compares two byte strings in time that depends only on their lengths:
/// every byte pair is xor-ed into an accumulator, with no early exit, and
/// `black_box` keeps the optimiser from turning that back into a
/// short-circuiting compare. Different lengths are unequal.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(acc) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, crate::Repo) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.db");
        rusqlite::Connection::open(&p).unwrap();
        let r = crate::Repo::open(&p).unwrap();
        (dir, r)
    }

    #[test]
    fn create_then_verify() {
        let (_d, r) = repo();
        let c = r.conn();
        assert!(!is_set(c).unwrap());
        assert_eq!(verify(c, "bo_anything").unwrap(), Verdict::NoToken);
        let t = create(c).unwrap();
        assert!(t.starts_with("bo_") && t.len() == 67, "{t}");
        assert!(
            t[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{t}"
        );
        assert!(is_set(c).unwrap());
        assert_eq!(verify(c, &t).unwrap(), Verdict::Valid);
        assert_eq!(verify(c, "").unwrap(), Verdict::Invalid);
        assert_eq!(verify(c, &t[..66]).unwrap(), Verdict::Invalid);
        assert_eq!(verify(c, &format!("{t} ")).unwrap(), Verdict::Invalid);
        let other = create(c).unwrap();
        assert_ne!(t, other, "two tokens from randomblob must differ");
        assert_eq!(
            verify(c, &t).unwrap(),
            Verdict::Invalid,
            "old token revoked"
        );
        assert_eq!(verify(c, &other).unwrap(), Verdict::Valid);
    }

    #[test]
    fn the_row_holds_the_hash_not_the_token() {
        let (_d, r) = repo();
        let t = create(r.conn()).unwrap();
        let row = r.get(TOKEN_ROW).unwrap().unwrap();
        assert!(!row.contains(&t[3..]), "{row}");
        assert_eq!(row, stored_form(&t));
        // The known SHA-256 of "abc", so the stored form is checkable by
        // other tools (sha256sum).
        assert_eq!(
            stored_form("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn revoke_removes_it() {
        let (_d, r) = repo();
        let c = r.conn();
        assert!(!revoke(c).unwrap());
        let t = create(c).unwrap();
        assert!(revoke(c).unwrap());
        assert!(!is_set(c).unwrap());
        assert_eq!(verify(c, &t).unwrap(), Verdict::NoToken);
    }

    #[test]
    fn a_malformed_row_fails_closed() {
        let (_d, r) = repo();
        let c = r.conn();
        for bad in [
            "",
            "bo_plaintext",
            "sha256:",
            "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015",
            "md5:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            r.set(TOKEN_ROW, bad).unwrap();
            assert!(is_set(c).unwrap());
            for presented in ["", "abc", bad] {
                assert_eq!(verify(c, presented).unwrap(), Verdict::Invalid, "{bad:?}");
            }
        }
    }

    #[test]
    fn no_config_table_means_no_token() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        assert_eq!(verify(&c, "x").unwrap(), Verdict::NoToken);
        assert!(!is_set(&c).unwrap());
        assert!(!revoke(&c).unwrap());
    }

    #[test]
    fn ct_eq_cases() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"bbc"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
        let a = [7u8; 32];
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!ct_eq(&a, &b), "byte {i}");
        }
    }
}
