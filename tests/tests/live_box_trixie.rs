//! The Debian 13 live box: Postfix 3.10 and Dovecot 2.4 (no checkpassword) set up the way
//! Mail-in-a-Box sets up a box, switched to our sidecars with the Debian package, checked
//! through a Dovecot restart and a reboot, and switched back (`tests/live-box/trixie`).

#[test]
fn debian_13_live_box_with_dovecot_2_4() {
    miab_e2e::live_box::run("trixie");
}
