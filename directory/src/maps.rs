//! How Postfix reads MIAB's four `sqlite:` maps, over any store that answers single keys.
//!
//! A socketmap sees only the full address, so the walk Postfix itself would make through a
//! table (`user+ext@domain`, `user@domain`, `@domain`) and what it then does to the answer
//! (the extension put back, an `@domain` answer given the local part) are done here, once, for
//! both the SQL queries ([`crate::SqlMaps`]) and the in-memory directory
//! ([`crate::Snapshot`]), so the two cannot drift apart.

use std::borrow::Cow;
use userdb::address::{self, Delimiters, MAX_DOMAIN_KEY};

/// One key of each of MIAB's maps, exactly as its `sqlite:` queries answer it.
pub(crate) trait KeyTables {
    type Error;
    /// `virtual-mailbox-domains.cf`: a user, alias or auto-alias ends in `@domain` (ASCII
    /// case-insensitive). Only asked for non-empty keys without `@` of at most 255 bytes.
    fn domain_key(&self, domain: &str) -> Result<bool, Self::Error>;
    /// `virtual-mailbox-maps.cf`.
    fn mailbox_key(&self, key: &str) -> Result<bool, Self::Error>;
    /// `virtual-alias-maps.cf`.
    fn alias_key(&self, key: &str) -> Result<Option<Cow<'_, str>>, Self::Error>;
    /// `sender-login-maps.cf`.
    fn sender_key(&self, key: &str) -> Result<Option<Cow<'_, str>>, Self::Error>;
}

/// The keys Postfix tries for one address against an `sqlite:` table, in order.
pub(crate) struct Keys {
    pub(crate) full: String,
    /// The key with the extension removed, and the extension as the client wrote it.
    pub(crate) stripped: Option<(String, String)>,
    pub(crate) at_domain: Option<String>,
    /// The original local part (case kept), for `@domain` answers.
    pub(crate) local: String,
}

pub(crate) fn keys(address: &str, delims: &Delimiters) -> Keys {
    let (local, domain) = match address.rfind('@') {
        Some(i) => (&address[..i], Some(&address[i..])),
        None => (address, None),
    };
    let stripped = address::split_extension(local, delims).map(|(base, ext)| {
        let key = address::fold(&format!("{base}{}", domain.unwrap_or("")));
        (key, ext.to_owned())
    });
    let at_domain = domain.filter(|_| !local.is_empty()).map(address::fold);
    Keys {
        full: address::fold(address),
        stripped,
        at_domain,
        local: local.to_owned(),
    }
}

/// Splits a map answer into addresses as Postfix does (commas and white space).
pub(crate) fn split_list(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What Postfix's `mail_addr_map()` makes of a virtual alias answer: `@domain` gets the original
/// local part (without an unmatched extension), then the extension goes onto every address.
pub(crate) fn map_alias_answer(value: &str, local: &str, ext: Option<&str>) -> Vec<String> {
    let value = if value.starts_with('@') {
        let base = match ext {
            Some(e) => &local[..local.len() - e.len()],
            None => local,
        };
        format!("{base}{value}")
    } else {
        value.to_owned()
    };
    let mut out = split_list(&value);
    if let Some(ext) = ext {
        for a in &mut out {
            match a.rfind('@') {
                Some(i) => a.insert_str(i, ext),
                None => a.push_str(ext),
            }
        }
    }
    out
}

/// Is `domain` one of ours (`virtual_mailbox_domains`)? Case-insensitive. Parent-style keys
/// (`.example.org`) and bare names are never found.
pub(crate) fn is_local_domain<T: KeyTables>(t: &T, domain: &str) -> Result<bool, T::Error> {
    if domain.is_empty()
        || domain.len() > MAX_DOMAIN_KEY
        || domain.starts_with('.')
        || domain.contains('@')
    {
        return Ok(false);
    }
    t.domain_key(&address::fold(domain))
}

/// Is `address` a mailbox (`virtual_mailbox_maps`), trying `user+ext@d`, `user@d`, `@d`?
pub(crate) fn is_mailbox<T: KeyTables>(
    t: &T,
    address: &str,
    delims: &Delimiters,
) -> Result<bool, T::Error> {
    let k = keys(address, delims);
    if k.full.is_empty() {
        return Ok(false);
    }
    if t.mailbox_key(&k.full)? {
        return Ok(true);
    }
    if let Some((key, _)) = &k.stripped
        && t.mailbox_key(key)?
    {
        return Ok(true);
    }
    match &k.at_domain {
        Some(key) => t.mailbox_key(key),
        None => Ok(false),
    }
}

/// The addresses `address` is rewritten to (`virtual_alias_maps`): the first of `user+ext@d`,
/// `user@d`, `@d` that answers wins; a match without the extension puts it back on every
/// result; an `@domain` answer keeps the local part. A user maps to itself. `None`: unlisted.
pub(crate) fn resolve_alias<T: KeyTables>(
    t: &T,
    address: &str,
    delims: &Delimiters,
) -> Result<Option<Vec<String>>, T::Error> {
    let k = keys(address, delims);
    if k.full.is_empty() {
        return Ok(None);
    }
    if let Some(v) = t.alias_key(&k.full)? {
        return Ok(Some(map_alias_answer(&v, &k.local, None)));
    }
    if let Some((key, ext)) = &k.stripped
        && let Some(v) = t.alias_key(key)?
    {
        return Ok(Some(map_alias_answer(&v, &k.local, Some(ext))));
    }
    if let Some(key) = &k.at_domain
        && let Some(v) = t.alias_key(key)?
    {
        return Ok(Some(map_alias_answer(&v, &k.local, None)));
    }
    Ok(None)
}

/// The raw owner list of a sender address (`smtpd_sender_login_maps`), trying `user+ext@d`,
/// `user@d`, `@d`. `None`: nobody owns it. Entries may be addresses that match no login
/// (an alias's external destinations, a domain alias's `@b`).
pub(crate) fn sender_owners<T: KeyTables>(
    t: &T,
    address: &str,
    delims: &Delimiters,
) -> Result<Option<Vec<String>>, T::Error> {
    let k = keys(address, delims);
    if k.full.is_empty() {
        return Ok(None);
    }
    let tries = std::iter::once(k.full.as_str())
        .chain(k.stripped.as_ref().map(|(key, _)| key.as_str()))
        .chain(k.at_domain.as_deref());
    for key in tries {
        if let Some(v) = t.sender_key(key)? {
            return Ok(Some(split_list(&v)));
        }
    }
    Ok(None)
}

/// Would `reject_authenticated_sender_login_mismatch` let `login` use `sender`? Postfix
/// compares logins case-insensitively.
pub(crate) fn may_send_as<T: KeyTables>(
    t: &T,
    login: &str,
    sender: &str,
    delims: &Delimiters,
) -> Result<bool, T::Error> {
    Ok(sender_owners(t, sender, delims)?
        .is_some_and(|owners| owners.iter().any(|o| o.eq_ignore_ascii_case(login))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sequence() {
        let d = Delimiters::default();
        let k = keys("Hello+Tag@Example.ORG", &d);
        assert_eq!(k.full, "hello+tag@example.org");
        assert_eq!(
            k.stripped,
            Some(("hello@example.org".into(), "+Tag".into()))
        );
        assert_eq!(k.at_domain.as_deref(), Some("@example.org"));
        let k = keys("@example.org", &d);
        assert!(k.stripped.is_none() && k.at_domain.is_none());
        let k = keys("bare", &d);
        assert!(k.stripped.is_none() && k.at_domain.is_none());
    }

    #[test]
    fn alias_answers_as_postfix_maps_them() {
        assert_eq!(
            map_alias_answer("a@x,b@y", "hello+t", Some("+t")),
            ["a+t@x", "b+t@y"]
        );
        assert_eq!(map_alias_answer("a@x, b@y", "hello", None), ["a@x", "b@y"]);
        assert_eq!(
            map_alias_answer("@b.org", "Random+Tag", None),
            ["Random+Tag@b.org"]
        );
        assert_eq!(map_alias_answer("@b.org", "a+t", Some("+t")), ["a+t@b.org"]);
    }
}
