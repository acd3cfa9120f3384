//! `main.cf` as text, edited the way an operator would: one parameter's logical line
//! (continuation lines included) replaced in place, everything else byte for byte, and the
//! replaced text kept so that `disable` can put exactly that back. Pure functions.
//!
//! Postfix's syntax: a logical line starts with non-blank text; a line starting with a blank
//! continues it; blank lines and lines starting with `#` are ignored. The last definition of
//! a parameter wins.

/// One logical line's place: the byte range of its physical lines and its parameter name.
struct Entry<'a> {
    range: std::ops::Range<usize>,
    name: &'a str,
    text: &'a str,
}

fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut out: Vec<Entry<'_>> = Vec::new();
    let mut at = 0;
    let mut open = false;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let first = line.chars().next().unwrap_or('\n');
        if first == '#' || line.trim().is_empty() {
            open = false;
            continue;
        }
        if first == ' ' || first == '\t' {
            if open && let Some(e) = out.last_mut() {
                e.range.end = at;
                e.text = &text[e.range.clone()];
            }
            continue;
        }
        let name = line.split('=').next().unwrap_or("").trim();
        out.push(Entry {
            range: start..at,
            name,
            text: &text[start..at],
        });
        open = true;
    }
    out
}

fn last<'a>(text: &'a str, name: &str) -> Option<Entry<'a>> {
    entries(text).into_iter().rfind(|e| e.name == name)
}

/// The text of a parameter's last definition, continuation lines included (`None`: not set).
pub fn entry(text: &str, name: &str) -> Option<String> {
    last(text, name).map(|e| e.text.to_owned())
}

/// A parameter's value as Postfix reads it (continuation lines joined by one space), or ""
/// when it is not set.
pub fn value(text: &str, name: &str) -> String {
    last(text, name)
        .and_then(|e| e.text.split_once('=').map(|(_, v)| v.to_owned()))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `text` with `name = value` in place of the parameter's last definition (or appended), and
/// the text it replaced (`None`: it was not set).
pub fn set(text: &str, name: &str, value: &str) -> (String, Option<String>) {
    let line = format!("{name} = {value}\n");
    match last(text, name) {
        Some(e) => {
            let mut out = String::with_capacity(text.len() + line.len());
            out.push_str(&text[..e.range.start]);
            out.push_str(&line);
            out.push_str(&text[e.range.end..]);
            (out, Some(e.text.to_owned()))
        }
        None => {
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&line);
            (out, None)
        }
    }
}

/// Undoes [`set`]: where the parameter still has the value we set, puts `before` back (or
/// removes the line when it was not set). `None` when the value is no longer ours (someone
/// changed it since, and that change stays).
pub fn restore(text: &str, name: &str, ours: &str, before: Option<&str>) -> Option<String> {
    let e = last(text, name)?;
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    if value(text, name) != norm(ours) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..e.range.start]);
    if let Some(b) = before {
        out.push_str(b);
    }
    out.push_str(&text[e.range.end..]);
    Some(out)
}

/// Removes every line that is `#` followed by exactly `line`; returns how many.
pub fn drop_comment(text: &mut String, line: &str) -> usize {
    let want = format!("#{line}");
    let mut n = 0;
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| {
            let drop = l.trim_end_matches(['\n', '\r']) == want;
            n += usize::from(drop);
            !drop
        })
        .collect();
    *text = kept;
    n
}

/// Is this a whole `main.cf` as a writer leaves it, not one caught half-written? It ends with
/// a newline (every writer ends its last line) and is not empty.
pub fn looks_whole(text: &str) -> bool {
    !text.is_empty() && text.ends_with('\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "# MIAB\nsmtpd_banner = $myhostname ESMTP\n\nsmtpd_recipient_restrictions = permit_sasl_authenticated,\n  permit_mynetworks,\n\treject_unlisted_recipient\n# tail\nvirtual_alias_maps = sqlite:/etc/postfix/a.cf\nvirtual_alias_maps = sqlite:/etc/postfix/b.cf\n";

    #[test]
    fn values_join_continuations_and_the_last_definition_wins() {
        assert_eq!(
            value(MAIN, "smtpd_recipient_restrictions"),
            "permit_sasl_authenticated, permit_mynetworks, reject_unlisted_recipient"
        );
        assert_eq!(
            value(MAIN, "virtual_alias_maps"),
            "sqlite:/etc/postfix/b.cf"
        );
        assert_eq!(value(MAIN, "smtpd_banner"), "$myhostname ESMTP");
        assert_eq!(value(MAIN, "nothing"), "");
        assert_eq!(value("# x = y\n", "# x"), "");
    }

    #[test]
    fn set_then_restore_gives_back_every_byte() {
        let (a, before) = set(
            MAIN,
            "smtpd_recipient_restrictions",
            "check_policy_service x",
        );
        assert_eq!(
            value(&a, "smtpd_recipient_restrictions"),
            "check_policy_service x"
        );
        assert!(a.contains("# tail\n") && a.starts_with("# MIAB\nsmtpd_banner"));
        let (b, before2) = set(&a, "virtual_alias_maps", "socketmap:x");
        assert_eq!(
            before2.as_deref(),
            Some("virtual_alias_maps = sqlite:/etc/postfix/b.cf\n")
        );
        assert!(b.contains("virtual_alias_maps = sqlite:/etc/postfix/a.cf\n"));
        let (c, none) = set(&b, "milter_default_action", "tempfail");
        assert_eq!(none, None);
        let c = restore(&c, "milter_default_action", "tempfail", None).unwrap();
        let c = restore(&c, "virtual_alias_maps", "socketmap:x", before2.as_deref()).unwrap();
        let c = restore(
            &c,
            "smtpd_recipient_restrictions",
            "check_policy_service x",
            before.as_deref(),
        )
        .unwrap();
        assert_eq!(c, MAIN);
    }

    #[test]
    fn a_value_changed_since_stays() {
        let (a, before) = set(MAIN, "smtpd_banner", "ours");
        let (b, _) = set(&a, "smtpd_banner", "an upgrade's");
        assert_eq!(restore(&b, "smtpd_banner", "ours", before.as_deref()), None);
        assert_eq!(restore(MAIN, "absent", "ours", None), None);
    }

    #[test]
    fn our_lines_commented_by_an_upgrade_go() {
        let mut t = "a=1\n#x = ours\n#x=theirs\nx=theirs\n#x = ours\n#x = ours2\n".to_owned();
        assert_eq!(drop_comment(&mut t, "x = ours"), 2);
        assert_eq!(t, "a=1\n#x=theirs\nx=theirs\n#x = ours2\n");
        assert_eq!(drop_comment(&mut t, "x = none"), 0);
    }

    #[test]
    fn half_written_files_are_told_apart() {
        assert!(looks_whole(MAIN));
        assert!(!looks_whole(""));
        assert!(!looks_whole(&MAIN[..MAIN.len() - 3]));
    }
}
