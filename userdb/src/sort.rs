//! MIAB's display order for domains and addresses (`utils.sort_domains`,
//! `utils.sort_email_addresses`), so listings come out in the order `cli.py` prints them.

use std::collections::{BTreeMap, BTreeSet};

/// Domains grouped by zone, the zone holding `primary_hostname` first, then as MIAB orders them.
pub fn sort_domains<S: AsRef<str>>(domains: &[S], primary_hostname: &str) -> Vec<String> {
    let mut by_len: Vec<&str> = domains.iter().map(AsRef::as_ref).collect();
    by_len.sort_by_key(|d| d.chars().count());
    let mut zone_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut zones: Vec<&str> = Vec::new();
    for d in by_len {
        let parent = zones
            .iter()
            .find(|z| d.ends_with(&format!(".{z}")))
            .copied();
        match parent {
            Some(z) => {
                zone_of.insert(d, z);
            }
            None => {
                zone_of.insert(d, d);
                if !zones.contains(&d) {
                    zones.push(d);
                }
            }
        }
    }
    let holds_primary =
        |z: &str| z == primary_hostname || primary_hostname.ends_with(&format!(".{z}"));
    zones.sort_by(|a, b| (!holds_primary(a), *a).cmp(&(!holds_primary(b), *b)));
    let key = |d: &str| {
        let zone_index = zones
            .iter()
            .position(|z| *z == zone_of[d])
            .unwrap_or(usize::MAX);
        let rev: Vec<String> = d.split('.').rev().map(str::to_owned).collect();
        (
            zone_index,
            d != primary_hostname,
            !d.ends_with(&format!(".{primary_hostname}")),
            rev,
        )
    };
    let mut out: Vec<&str> = domains.iter().map(AsRef::as_ref).collect();
    // The key allocates; compute it once per domain, not once per comparison.
    out.sort_by_cached_key(|d| key(d));
    out.into_iter().map(str::to_owned).collect()
}

/// Addresses deduplicated, grouped by [`sort_domains`] order, sorted within each domain.
pub fn sort_email_addresses<S: AsRef<str>>(addrs: &[S], primary_hostname: &str) -> Vec<String> {
    let mut rest: BTreeSet<&str> = addrs.iter().map(AsRef::as_ref).collect();
    let domains: BTreeSet<&str> = rest
        .iter()
        .filter_map(|a| a.split_once('@').map(|(_, d)| d))
        .collect();
    let domains: Vec<&str> = domains.into_iter().collect();
    let mut out = Vec::with_capacity(rest.len());
    for d in sort_domains(&domains, primary_hostname) {
        let suffix = format!("@{d}");
        let mine: Vec<&str> = rest
            .iter()
            .copied()
            .filter(|a| a.ends_with(&suffix))
            .collect();
        for a in mine {
            rest.remove(a);
            out.push(a.to_owned());
        }
    }
    out.extend(rest.into_iter().map(str::to_owned));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_zone_first_then_reverse_labels() {
        let d = [
            "zeta.org",
            "box.example.com",
            "example.com",
            "alpha.net",
            "www.example.com",
            "a.box.example.com",
            "mail.zeta.org",
        ];
        assert_eq!(
            sort_domains(&d, "box.example.com"),
            [
                "box.example.com",
                "a.box.example.com",
                "example.com",
                "www.example.com",
                "alpha.net",
                "zeta.org",
                "mail.zeta.org",
            ]
        );
    }

    #[test]
    fn addresses_by_domain_then_name() {
        let a = [
            "b@x.org",
            "a@x.org",
            "z@box.example",
            "@x.org",
            "b@x.org",
            "odd",
        ];
        assert_eq!(
            sort_email_addresses(&a, "box.example"),
            ["z@box.example", "@x.org", "a@x.org", "b@x.org", "odd"]
        );
    }
}
