//! What miab-authd counts: authentications by service, mechanism, how the password was
//! checked and the result (the brake's refusals among them). Labels come from fixed sets: a
//! peer's own service or mechanism name is never a label.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Service {
    smtp,
    imap,
    pop3,
    sieve,
    other,
}

impl Service {
    pub fn of(name: &str) -> Service {
        match name.to_ascii_lowercase().as_str() {
            "smtp" | "submission" => Service::smtp,
            "imap" => Service::imap,
            "pop3" => Service::pop3,
            "sieve" | "managesieve" => Service::sieve,
            _ => Service::other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Mechanism {
    plain,
    login,
    other,
}

impl Mechanism {
    pub fn of(name: &str) -> Mechanism {
        match name {
            "PLAIN" => Mechanism::plain,
            "LOGIN" => Mechanism::login,
            _ => Mechanism::other,
        }
    }
}

/// How an authentication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Result_ {
    /// With the main password.
    ok_password,
    /// With an app password.
    ok_app_password,
    /// From the success cache ("remembered password").
    ok_cached,
    /// Wrong password, unknown user, suspended, app password required, malformed.
    failed,
    /// Refused by the brake while its login or address cools off.
    braked,
    /// The user DB could not be asked: a temporary failure.
    tempfail,
    /// A mechanism we do not offer.
    unsupported,
    /// A cleartext password without TLS, refused before it was checked.
    insecure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthLabel {
    pub service: Service,
    pub mechanism: Mechanism,
    pub result: Result_,
}

pub fn authentications() -> &'static Family<AuthLabel, Counter> {
    static F: LazyLock<Family<AuthLabel, Counter>> = LazyLock::new(|| {
        let f = Family::default();
        daemon::metrics::register(
            "authd_authentications",
            "Authentications by service, mechanism and result (braked: refused by the brake)",
            f.clone(),
        );
        f
    });
    &F
}

/// Counts one authentication.
pub fn authenticated(service: &str, mechanism: &str, result: Result_) {
    authentications()
        .get_or_create(&AuthLabel {
            service: Service::of(service),
            mechanism: Mechanism::of(mechanism),
            result,
        })
        .inc();
}

/// The result for a success, from how the password was checked (`verify`'s words).
pub fn success(how: &str) -> Result_ {
    match how {
        "app password" => Result_::ok_app_password,
        "remembered password" => Result_::ok_cached,
        _ => Result_::ok_password,
    }
}
