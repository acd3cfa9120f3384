//! The SASL login Postfix names (`sasl_username`), folded once: every check that keys on a
//! login (limits, containment, the directory) uses [`Login::key`], and every text quotes the
//! name as Postfix sent it.

use crate::proto::Request;

/// An authenticated request's login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    sent: String,
    key: String,
}

impl Login {
    /// The request's login; `None` for a client that did not authenticate.
    pub fn of(req: &Request) -> Option<Login> {
        req.is_authenticated().then(|| Login {
            sent: req.sasl_username.clone(),
            key: req.sasl_username.to_lowercase(),
        })
    }

    /// Lowercased: what counters, holds and the directory key on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// As Postfix sent it, for texts that quote it.
    pub fn as_sent(&self) -> &str {
        &self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_once() {
        let mut req = Request::default();
        assert_eq!(Login::of(&req), None);
        req.sasl_username = "Me@Example.COM".into();
        let l = Login::of(&req).unwrap();
        assert_eq!((l.key(), l.as_sent()), ("me@example.com", "Me@Example.COM"));
    }
}
