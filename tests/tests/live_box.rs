//! The Debian 12 live box: a Mail-in-a-Box v75 box built by MIAB's own setup scripts under
//! real systemd, switched to our sidecars with the Debian package, put through MIAB's own
//! maintenance, then upgraded in place to Dovecot 2.4 while switched (`tests/live-box/run`).

#[test]
fn mail_in_a_box_live_box_with_sidecars() {
    miab_e2e::live_box::run("run");
}
