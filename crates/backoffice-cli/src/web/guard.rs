//! Guards for the HTML forms that change something (the sign-up pages):
//! cross-site request forgery tokens, the same-origin check, and reading
//! a form body. Like `respond.rs` it knows no route; it uses no other file
//! of the web front (its refusals are plain reasons, which the route turns
//! into a 403 page).
//!
//! # Forgery
//!
//! A page with a form sets a cookie `bo_csrf` holding a random nonce
//! (`HttpOnly; SameSite=Strict`, path `/r/NAME`; `Secure` when the
//! repository's `email-url` is https) and puts a token in a hidden field:
//! `TIME.MAC`, an HMAC-SHA-256 under the repository's signing key over the
//! repository's name, the nonce and the time. A POST is accepted only if
//! its field's MAC matches the nonce of the cookie it carries, and the
//! token is less than [`TOKEN_LIFETIME`] old. Another site can neither
//! read the field nor make the browser send the cookie (`SameSite`), and
//! a token taken from the page by an attacker is worthless without the
//! victim's cookie. Besides, a POST is refused when the browser says it
//! comes from another site (`Sec-Fetch-Site: cross-site`), or when its
//! `Origin` (or, without one, its `Referer`) names another host than the
//! request's `Host` or the repository's `email-url`. (Our pages are sent
//! with `Referrer-Policy: no-referrer`, so a browser sends `Origin: null`
//! from them; `null` is left to the token.)

use axum::http::{HeaderMap, HeaderValue, header};
use backoffice_tasks::notify::signup;

/// The cookie's name.
pub const COOKIE: &str = "bo_csrf";

/// How long a form's token is accepted, seconds.
pub const TOKEN_LIFETIME: i64 = 12 * 3600;

/// The nonce of the request's `bo_csrf` cookie, if it sent a well-formed one.
pub fn cookie_nonce(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A new random nonce: 128 bits from the kernel, in hex.
pub fn new_nonce() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The `Set-Cookie` value for `nonce` on repository `repo`.
pub fn set_cookie(repo: &str, nonce: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={nonce}; Path=/r/{repo}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// The hidden field's token for `nonce`, made at `now`.
pub fn token(key: &str, repo: &str, nonce: &str, now: i64) -> String {
    let t = now.to_string();
    format!("{t}.{}", signup::mac(key, &["csrf", repo, nonce, &t]))
}

/// Checks a POST's token against its cookie; the reason if it fails.
pub fn check_token(
    key: &str,
    repo: &str,
    headers: &HeaderMap,
    field: Option<&str>,
    now: i64,
) -> Result<(), &'static str> {
    let Some(nonce) = cookie_nonce(headers) else {
        return Err(
            "the form's cookie is missing: this browser must accept cookies from this site; load the form again",
        );
    };
    let Some((t, m)) = field.and_then(|f| f.split_once('.')) else {
        return Err("the form's token is missing: load the form again");
    };
    let Ok(when) = t.parse::<i64>() else {
        return Err("the form's token is not valid: load the form again");
    };
    if !signup::same(&signup::mac(key, &["csrf", repo, &nonce, t]), m) {
        return Err("the form's token is not valid: load the form again");
    }
    if now.saturating_sub(when) > TOKEN_LIFETIME || when > now.saturating_add(300) {
        return Err("the form is too old: load it again");
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL, lowercased, if it has one.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{}://{}", scheme, host).to_ascii_lowercase())
}

/// Refuses a POST that says it comes from another site; `base` is the
/// repository's `email-url` (may be empty).
pub fn same_origin(headers: &HeaderMap, base: &str) -> Result<(), &'static str> {
    let get = |h| headers.get(h).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site") == Some("cross-site") {
        return Err("this form was sent from another site");
    }
    let claimed = match get(header::ORIGIN.as_str()) {
        Some("null") => return Ok(()),
        Some(o) => origin_of(o).or_else(|| Some(o.to_ascii_lowercase())),
        None => get(header::REFERER.as_str()).and_then(origin_of),
    };
    let Some(claimed) = claimed else {
        return Ok(());
    };
    let host_of = |o: &str| o.split_once("://").map(|(_, h)| h.to_owned());
    let ours_host = get(header::HOST.as_str()).map(str::to_ascii_lowercase);
    let base = origin_of(base);
    let matches = host_of(&claimed).is_some_and(|h| Some(&h) == ours_host.as_ref())
        || base.as_deref() == Some(claimed.as_str());
    if matches {
        Ok(())
    } else {
        Err("this form was sent from another site")
    }
}

/// The fields of an `application/x-www-form-urlencoded` body, in order.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of field `name`.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Percent-decoding, `+` as a space; bad escapes are kept as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
