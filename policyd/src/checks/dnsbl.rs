//! `dnsbl`: an unauthenticated, untrusted client's address against address block lists
//! (Spamhaus's ZEN), in the recipient stage, with Postfix's `reject_rbl_client` wording.

use super::{Ask, Building, Check, ConnState, Decision, Shared, Stage};
use crate::StartError;
use crate::dnsbl::{self, List};
use crate::verdict::Verdict;
use std::sync::Arc;

pub const NAME: &str = "dnsbl";

#[derive(Debug)]
struct Dnsbl {
    lists: Vec<List>,
}

pub fn build(b: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    let d = &b.settings.dnsbl;
    Ok(Arc::new(Dnsbl {
        lists: dnsbl::lists(&d.client_lists, d.dqs_key.as_deref()),
    }))
}

impl Check for Dnsbl {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Recipient
    }

    fn decide<'a>(
        &'a self,
        ask: &'a Ask<'a>,
        shared: &'a Shared,
        _: &'a mut ConnState,
    ) -> Decision<'a> {
        Box::pin(async move {
            let req = ask.req;
            let Some(ip) = ask.client_ip else {
                return Ok(Verdict::Dunno);
            };
            if ask.login.is_some() || ask.trusted {
                return Ok(Verdict::Dunno);
            }
            let name = dnsbl::reversed(ip);
            Ok(shared
                .first_listing(
                    &self.lists,
                    &name,
                    crate::metrics::ListKind::client,
                    &req.client_address,
                    req,
                )
                .await)
        })
    }
}
