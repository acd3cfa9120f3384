//! What the sidecars change in Postfix's and Dovecot's configuration, as pure functions of
//! what is there: the same input always gives the same output, and applying a change twice
//! changes nothing more, so `repair` can run after every rewrite by Mail-in-a-Box.

/// miab-lookup's socket, relative to Postfix's queue directory (chrooted daemons see only it).
pub const LOOKUP_SOCKET: &str = "miab-lookup/socketmap";
/// miab-authd's socket for Postfix, relative to the queue directory.
pub const AUTHD_SOCKET: &str = "miab-authd/auth";
/// The policy service, on a socket in the queue directory that only Postfix can reach
/// (group `postfix`, mode 0660): it acts on the `sasl_username` it is told.
pub const POLICY: &str = "unix:miab-policyd/policy";
/// postgrey's port, where MIAB's own line points and miab-policyd greylists only.
const POSTGREY: &str = "inet:127.0.0.1:10023";

/// `check_policy_service` for the sender list: sender login, containment, rate limits and
/// the sender's domain list. It fails closed: with miab-policyd down, mail is deferred, never
/// sent as someone else.
pub const SENDER_POLICY: &str = "check_policy_service { unix:miab-policyd/policy, timeout=10s, default_action=DEFER_IF_PERMIT, policy_context=sender }";
/// `check_policy_service` at the end of data: containment counts the message Postfix now has
/// whole. Fails closed, as the sender reference does.
pub const DATA_POLICY: &str = "check_policy_service { unix:miab-policyd/policy, timeout=10s, default_action=DEFER_IF_PERMIT, policy_context=data }";
/// `check_policy_service` for the recipient list: greylisting and the client list. It fails
/// open, as postgrey's line does: a stopped daemon must not stop inbound mail.
pub const RECIPIENT_POLICY: &str = "check_policy_service { unix:miab-policyd/policy, timeout=10s, default_action=DUNNO, policy_context=recipient }";

/// The `main.cf` parameters the sidecars set, given their current values (`current` answers
/// `postconf -h NAME`). Only parameters that differ are returned.
pub fn main_cf_changes(current: impl Fn(&str) -> String) -> Vec<(&'static str, String)> {
    main_cf_wanted(&current)
        .into_iter()
        .filter(|(name, value)| current(name) != *value)
        .collect()
}

/// Every `main.cf` parameter the sidecars set, with the value they want given the current
/// values.
pub fn main_cf_wanted(current: impl Fn(&str) -> String) -> Vec<(&'static str, String)> {
    let map = |name: &str| format!("socketmap:unix:{LOOKUP_SOCKET}:{name}");
    let want: Vec<(&'static str, String)> = vec![
        ("virtual_mailbox_domains", map("domains")),
        ("virtual_mailbox_maps", map("mailboxes")),
        ("virtual_alias_maps", map("aliases")),
        ("smtpd_sender_login_maps", map("senders")),
        ("smtpd_sasl_type", "dovecot".into()),
        ("smtpd_sasl_path", AUTHD_SOCKET.into()),
        // OpenDMARC's work is done on 8891 too; 8893 only answers "accept".
        ("smtpd_milters", "inet:127.0.0.1:8891".into()),
        ("non_smtpd_milters", "$smtpd_milters".into()),
        // A milter that is down defers mail instead of letting it leave unsigned under the
        // box's own DMARC policy.
        ("milter_default_action", "tempfail".into()),
        (
            "smtpd_sender_restrictions",
            sender_restrictions(&current("smtpd_sender_restrictions")),
        ),
        (
            "smtpd_recipient_restrictions",
            recipient_restrictions(&current("smtpd_recipient_restrictions")),
        ),
        (
            "smtpd_end_of_data_restrictions",
            end_of_data_restrictions(&current("smtpd_end_of_data_restrictions")),
        ),
    ];
    want
}

/// A restriction list's items: split at commas and white space outside `{ }`, with each
/// restriction kept together with its arguments (`reject_rbl_client zen.spamhaus.org=...`).
pub fn items(list: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut depth = 0usize;
    for c in list.chars() {
        match c {
            '{' => {
                depth += 1;
                word.push(c);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                word.push(c);
            }
            ',' | ' ' | '\t' | '\n' | '\r' if depth == 0 => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    // Restrictions that take one argument.
    const WITH_ARG: [&str; 8] = [
        "check_policy_service",
        "reject_rbl_client",
        "reject_rhsbl_client",
        "reject_rhsbl_sender",
        "reject_rhsbl_recipient",
        "reject_rhsbl_helo",
        "reject_rhsbl_reverse_client",
        "permit_dnswl_client",
    ];
    let mut out: Vec<String> = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        if WITH_ARG.contains(&w.as_str())
            && let Some(arg) = words.next()
        {
            out.push(format!("{w} {arg}"));
        } else {
            out.push(w);
        }
    }
    out
}

fn squash(item: &str) -> String {
    item.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Is this item a reference to the policy service (ours, or postgrey's port), in any form?
fn is_policy(item: &str) -> bool {
    let s = squash(item);
    [POLICY, POSTGREY].iter().any(|p| {
        s == format!("check_policy_service {p}")
            || s.starts_with(&format!("check_policy_service {{ {p},"))
            || s.starts_with(&format!("check_policy_service {{{p},"))
    })
}

/// MIAB's Spamhaus lines, which miab-policyd's own lists replace.
fn is_spamhaus(item: &str) -> bool {
    let s = squash(item);
    s.starts_with("reject_rhsbl_sender dbl.spamhaus.org")
        || s.starts_with("reject_rbl_client zen.spamhaus.org")
}

/// `smtpd_sender_restrictions`: MIAB's list without its DBL line, then the sender policy.
/// Postfix's own `reject_authenticated_sender_login_mismatch` stays (it asks miab-lookup).
pub fn sender_restrictions(current: &str) -> String {
    let mut out: Vec<String> = items(current)
        .into_iter()
        .filter(|i| !is_spamhaus(i) && !is_policy(i))
        .collect();
    out.push(SENDER_POLICY.into());
    out.join(",")
}

/// `smtpd_end_of_data_restrictions`: what is there (MIAB sets nothing), then ours.
pub fn end_of_data_restrictions(current: &str) -> String {
    let mut out: Vec<String> = items(current)
        .into_iter()
        .filter(|i| !is_policy(i))
        .collect();
    out.push(DATA_POLICY.into());
    out.join(",")
}

/// `smtpd_recipient_restrictions`: MIAB's list without its ZEN line, with the recipient policy
/// where postgrey's line was (else before Dovecot's quota service, else last).
pub fn recipient_restrictions(current: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for i in items(current) {
        if is_spamhaus(&i) {
            continue;
        }
        if is_policy(&i) {
            if !placed {
                out.push(RECIPIENT_POLICY.into());
                placed = true;
            }
            continue;
        }
        out.push(i);
    }
    if !placed {
        let quota = out
            .iter()
            .position(|i| squash(i) == "check_policy_service inet:127.0.0.1:12340");
        match quota {
            Some(at) => out.insert(at, RECIPIENT_POLICY.into()),
            None => out.push(RECIPIENT_POLICY.into()),
        }
    }
    out.join(",")
}

/// The line of MIAB's `10-auth.conf` that pulls in Dovecot's SQL passdb and userdb.
const SQL_INCLUDE: &str = "!include auth-sql.conf.ext";

/// What ends a line we commented out, so that `disable` uncomments exactly those.
const AUTH_MARK: &str = " # miab-sidecars: disable uncomments this line";

/// `10-auth.conf` with the SQL include commented out (and marked as ours); `None` if nothing
/// needs to change.
pub fn auth_conf_without_sql(text: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(SQL_INCLUDE) {
            let indent = line.len() - line.trim_start().len();
            let (body, end) = split_end(line);
            out.push_str(&body[..indent]);
            out.push('#');
            // MIAB's upgrade uncomments our line and leaves the mark: one mark only.
            out.push_str(unmarked(&body[indent..]));
            out.push_str(AUTH_MARK);
            out.push_str(end);
            changed = true;
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
}

/// Undoes [`auth_conf_without_sql`] on the file as it is now: every line we marked, and
/// nothing else, is uncommented. `legacy` also uncomments a plain `#!include
/// auth-sql.conf.ext` (what versions before the mark wrote) when no include is active.
pub fn auth_conf_with_sql(text: &str, legacy: bool) -> Option<String> {
    let legacy = legacy && !auth_conf_has_sql(text) && !text.contains(AUTH_MARK);
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = split_end(line);
        let indent = body.len() - body.trim_start().len();
        let rest = &body[indent..];
        let uncommented = rest.strip_prefix('#').unwrap_or(rest);
        let ours = Some(uncommented)
            .filter(|r| r.starts_with(SQL_INCLUDE))
            .and_then(|r| {
                if r.ends_with(AUTH_MARK) {
                    Some(unmarked(r))
                } else {
                    (legacy && rest.starts_with('#')).then_some(r)
                }
            });
        match ours {
            Some(original) => {
                out.push_str(&body[..indent]);
                out.push_str(original);
                out.push_str(end);
                changed = true;
            }
            None => out.push_str(line),
        }
    }
    changed.then_some(out)
}

/// `s` without our marks at its end.
fn unmarked(mut s: &str) -> &str {
    while let Some(r) = s.strip_suffix(AUTH_MARK) {
        s = r;
    }
    s
}

/// A line without its line end, and the line end.
fn split_end(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

/// Z-Push's IMAP backend configuration as MIAB installs it (`setup/zpush.sh`).
pub const ZPUSH_IMAP_CONF: &str = "/usr/local/lib/z-push/backend/imap/config.php";
/// What marks our lines in it.
const ZPUSH_MARK: &str = "// miab-sidecars";

/// Z-Push's configuration sending through SMTP AUTH on 127.0.0.1:465 with the user's own
/// credentials (its `$imap_smtp_params` already say so) instead of `sendmail`, which no login
/// and so no containment or From: check would ever see. The loopback TLS connection is not
/// checked against the certificate's name (127.0.0.1 is not in it). `None` if nothing needs
/// to change.
pub fn zpush_via_smtp(text: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        let (body, end) = split_end(line);
        if is_sendmail_method(body) {
            out.push_str(&format!("{ZPUSH_MARK} was: {body}{end}"));
            out.push_str(&format!(
                "define('IMAP_SMTP_METHOD', 'smtp'); {ZPUSH_MARK}{end}"
            ));
            changed = true;
        } else if body.trim_start().starts_with("$imap_smtp_params = ")
            && !text.contains(&format!("{ZPUSH_MARK}: loopback TLS"))
        {
            out.push_str(line);
            let end = if end.is_empty() { "\n" } else { end };
            out.push_str(&format!(
                "$imap_smtp_params['socket_options'] = array('ssl' => array('verify_peer' => false, 'verify_peer_name' => false)); {ZPUSH_MARK}: loopback TLS{end}"
            ));
            changed = true;
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
}

/// Undoes [`zpush_via_smtp`]: our lines out, the original line back.
pub fn zpush_via_sendmail(text: &str) -> Option<String> {
    let was = format!("{ZPUSH_MARK} was: ");
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = split_end(line);
        if let Some(original) = body.strip_prefix(&was) {
            out.push_str(original);
            out.push_str(end);
            changed = true;
        } else if body.ends_with(ZPUSH_MARK)
            || body.ends_with(&format!("{ZPUSH_MARK}: loopback TLS"))
        {
            changed = true;
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
}

/// Does Z-Push's configuration still send through `sendmail`?
pub fn zpush_uses_sendmail(text: &str) -> bool {
    text.lines().any(is_sendmail_method)
}

fn is_sendmail_method(line: &str) -> bool {
    let squashed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    squashed.starts_with("define(")
        && squashed.contains("IMAP_SMTP_METHOD")
        && squashed.contains("sendmail")
}

/// Does `10-auth.conf` still pull in the SQL passdb?
pub fn auth_conf_has_sql(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with(SQL_INCLUDE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// MIAB v75's values (setup/mail-postfix.sh, mail-users.sh, dkim.sh).
    fn stock() -> HashMap<&'static str, String> {
        HashMap::from([
            ("virtual_mailbox_domains", "sqlite:/etc/postfix/virtual-mailbox-domains.cf".into()),
            ("virtual_mailbox_maps", "sqlite:/etc/postfix/virtual-mailbox-maps.cf".into()),
            ("virtual_alias_maps", "sqlite:/etc/postfix/virtual-alias-maps.cf".into()),
            ("smtpd_sender_login_maps", "sqlite:/etc/postfix/sender-login-maps.cf".into()),
            ("smtpd_sasl_type", "dovecot".into()),
            ("smtpd_sasl_path", "private/auth".into()),
            ("smtpd_milters", "inet:127.0.0.1:8891 inet:127.0.0.1:8893".into()),
            ("non_smtpd_milters", "$smtpd_milters".into()),
            ("milter_default_action", "accept".into()),
            ("smtpd_sender_restrictions", "reject_non_fqdn_sender,reject_unknown_sender_domain,reject_authenticated_sender_login_mismatch,reject_rhsbl_sender dbl.spamhaus.org=127.0.1.[2..99]".into()),
            ("smtpd_recipient_restrictions", "permit_sasl_authenticated,permit_mynetworks,reject_rbl_client zen.spamhaus.org=127.0.0.[2..11],reject_unlisted_recipient,check_policy_service inet:127.0.0.1:10023,check_policy_service inet:127.0.0.1:12340".into()),
        ])
    }

    fn apply(conf: &mut HashMap<&'static str, String>) -> usize {
        let snapshot = conf.clone();
        let changes = main_cf_changes(|n| snapshot.get(n).cloned().unwrap_or_default());
        let n = changes.len();
        for (k, v) in changes {
            conf.insert(k, v);
        }
        n
    }

    #[test]
    fn stock_miab_is_rewired_once() {
        let mut conf = stock();
        assert_eq!(
            apply(&mut conf),
            10,
            "smtpd_sasl_type and non_smtpd_milters stay"
        );
        assert_eq!(conf["smtpd_end_of_data_restrictions"], DATA_POLICY);
        assert_eq!(
            conf["smtpd_sender_restrictions"],
            format!(
                "reject_non_fqdn_sender,reject_unknown_sender_domain,reject_authenticated_sender_login_mismatch,{SENDER_POLICY}"
            )
        );
        assert_eq!(
            conf["smtpd_recipient_restrictions"],
            format!(
                "permit_sasl_authenticated,permit_mynetworks,reject_unlisted_recipient,{RECIPIENT_POLICY},check_policy_service inet:127.0.0.1:12340"
            )
        );
        assert_eq!(
            conf["virtual_alias_maps"],
            "socketmap:unix:miab-lookup/socketmap:aliases"
        );
        assert_eq!(apply(&mut conf), 0, "a second pass changes nothing");
    }

    #[test]
    fn postconf_folding_and_spaces_are_understood() {
        // postconf -h prints a multi-line value joined; items may be separated by white space.
        let folded = format!(
            "permit_sasl_authenticated, permit_mynetworks\n    reject_unlisted_recipient,   {RECIPIENT_POLICY}"
        );
        assert_eq!(
            recipient_restrictions(&folded),
            format!(
                "permit_sasl_authenticated,permit_mynetworks,reject_unlisted_recipient,{RECIPIENT_POLICY}"
            )
        );
        let list = items(&format!(
            "a b,{SENDER_POLICY} , reject_rbl_client  x.example"
        ));
        assert_eq!(
            list,
            ["a", "b", SENDER_POLICY, "reject_rbl_client x.example"]
        );
    }

    #[test]
    fn a_list_without_postgrey_gets_the_policy_before_the_quota_service() {
        let r =
            recipient_restrictions("permit_mynetworks,check_policy_service inet:127.0.0.1:12340");
        assert_eq!(
            r,
            format!(
                "permit_mynetworks,{RECIPIENT_POLICY},check_policy_service inet:127.0.0.1:12340"
            )
        );
        assert_eq!(recipient_restrictions(""), RECIPIENT_POLICY);
    }

    #[test]
    fn the_sql_include_is_commented_and_found_again() {
        let miab = "auth_mechanisms = plain login\n#!include auth-system.conf.ext\n!include auth-sql.conf.ext\n#!include auth-ldap.conf.ext\n";
        assert!(auth_conf_has_sql(miab));
        let ours = auth_conf_without_sql(miab).unwrap();
        assert_eq!(
            ours,
            "auth_mechanisms = plain login\n#!include auth-system.conf.ext\n#!include auth-sql.conf.ext # miab-sidecars: disable uncomments this line\n#!include auth-ldap.conf.ext\n"
        );
        assert!(!auth_conf_has_sql(&ours));
        assert_eq!(auth_conf_without_sql(&ours), None);
        assert_eq!(auth_conf_with_sql(&ours, false).as_deref(), Some(miab));
        // An upgrade's own change elsewhere stays; an include someone else commented stays.
        let later = format!("{ours}#!include auth-sql.conf.ext\nauth_verbose = yes\n");
        let back = auth_conf_with_sql(&later, true).unwrap();
        assert_eq!(
            back,
            format!("{miab}#!include auth-sql.conf.ext\nauth_verbose = yes\n")
        );
        // MIAB's upgrade (mail-users.sh: sed 's/#*\(!include auth-sql.conf.ext\)/\1/')
        // uncomments our line and leaves the mark; repair comments it with one mark, and
        // disable gives back MIAB's line either way.
        let sed = ours.replace("#!include auth-sql", "!include auth-sql");
        assert!(auth_conf_has_sql(&sed));
        assert_eq!(auth_conf_without_sql(&sed).as_deref(), Some(ours.as_str()));
        assert_eq!(auth_conf_with_sql(&sed, false).as_deref(), Some(miab));
        // What versions before the mark left: uncommented only when asked (legacy).
        let old = miab.replace("\n!include auth-sql", "\n#!include auth-sql");
        assert_eq!(auth_conf_with_sql(&old, false), None);
        assert_eq!(auth_conf_with_sql(&old, true).as_deref(), Some(miab));
    }

    const ZPUSH: &str = "<?php\ndefine('IMAP_FOLDER_CONFIGURED', true);\n\ndefine('IMAP_SMTP_METHOD', 'sendmail');\n\nglobal $imap_smtp_params;\n$imap_smtp_params = array('host' => 'ssl://127.0.0.1', 'port' => 465, 'auth' => true, 'username' => 'imap_username', 'password' => 'imap_password');\n\n?>\n";

    #[test]
    fn zpush_is_switched_to_smtp_auth_and_back_byte_for_byte() {
        assert!(zpush_uses_sendmail(ZPUSH));
        let ours = zpush_via_smtp(ZPUSH).unwrap();
        assert!(!zpush_uses_sendmail(&ours));
        assert!(ours.contains("define('IMAP_SMTP_METHOD', 'smtp');"));
        assert!(ours.contains("'verify_peer_name' => false"));
        assert_eq!(zpush_via_smtp(&ours), None);
        assert_eq!(zpush_via_sendmail(&ours).as_deref(), Some(ZPUSH));
        assert_eq!(zpush_via_sendmail(ZPUSH), None);
        // An upgrade copies MIAB's file again: switched again, once.
        let again = zpush_via_smtp(ZPUSH).unwrap();
        assert_eq!(again, ours);
    }
}
