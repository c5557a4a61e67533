//! Email address validation, strict enough that an address can never carry
//! a header or a command line with it.

/// Longest address SMTP allows (RFC 5321: 254 octets in a path).
const MAX_LEN: usize = 254;

/// The validator of a setting holding one address (empty: unset).
pub fn setting(value: &str) -> Result<String, String> {
    let v = value.trim();
    if !v.is_empty() {
        check(v)?;
    }
    Ok(v.to_owned())
}

/// Checks an address: `local@domain`, printable ASCII only, no spaces,
/// no quotes, no angle brackets, a domain of dot-separated labels.
/// Returns what is wrong with it.
pub fn check(addr: &str) -> Result<(), String> {
    if addr.len() > MAX_LEN {
        return Err(format!("an address is at most {MAX_LEN} characters"));
    }
    if let Some(c) = addr.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("an address cannot contain {c:?}"));
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("an address needs an @".into());
    };
    const LOCAL_OK: &str = "!#$%&'*+-/=?^_`{|}~.";
    if local.is_empty() || local.len() > 64 {
        return Err("the part before @ must be 1 to 64 characters".into());
    }
    if let Some(c) = local
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || LOCAL_OK.contains(*c)))
    {
        return Err(format!("the part before @ cannot contain {c:?}"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("dots in the part before @ must separate words".into());
    }
    if domain.is_empty() {
        return Err("the domain after @ is empty".into());
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("bad domain {domain:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn good_and_bad_addresses() {
        for ok in [
            "a@b.c",
            "first.last+tag@example.org",
            "x@localhost",
            "o'neil@ex-ample.co.uk",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@",
            "a b@example.org",
            "a@exa mple.org",
            "a@example..org",
            ".a@example.org",
            "a\r\nBcc: x@y.z@example.org",
            "<a@example.org>",
            "\"q\"@example.org",
            "a@-x.org",
            "ü@example.org",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check(&format!("{}@x.org", "a".repeat(65))).is_err());
    }
}
