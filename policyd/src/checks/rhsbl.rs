//! `rhsbl`: the sender's domain against domain block lists (Spamhaus's DBL), in the sender
//! stage, with Postfix's `reject_rhsbl_sender` wording.

use super::{Ask, Building, Check, ConnState, Decision, Shared, Stage};
use crate::StartError;
use crate::dnsbl::List;
use crate::verdict::Verdict;
use std::sync::Arc;

pub const NAME: &str = "rhsbl";

#[derive(Debug)]
struct Rhsbl {
    lists: Vec<List>,
}

pub fn build(b: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    let d = &b.settings.dnsbl;
    Ok(Arc::new(Rhsbl {
        lists: crate::dnsbl::lists(&d.sender_lists, d.dqs_key.as_deref()),
    }))
}

impl Check for Rhsbl {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Sender
    }

    fn decide<'a>(
        &'a self,
        ask: &'a Ask<'a>,
        shared: &'a Shared,
        _: &'a mut ConnState,
    ) -> Decision<'a> {
        Box::pin(async move {
            let req = ask.req;
            let Some(domain) = crate::domain_of(&req.sender) else {
                return Ok(Verdict::Dunno);
            };
            Ok(shared
                .first_listing(
                    &self.lists,
                    &domain,
                    crate::metrics::ListKind::sender,
                    &req.sender,
                    req,
                )
                .await)
        })
    }
}
