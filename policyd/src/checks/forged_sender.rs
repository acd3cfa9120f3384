//! `forged_sender`: unauthenticated mail from an untrusted client whose envelope sender is in
//! one of our domains is refused with Postfix's `reject_unauthenticated_sender_login_mismatch`
//! wording, unless the domain's own SPF authorises the client.

use super::{Ask, Building, Check, ConnState, Decision, Shared, Stage};
use crate::StartError;
use crate::verdict::{Action, Verdict};
use directory::Directory;
use mail_auth::SpfResult;
use std::sync::Arc;

pub const NAME: &str = "forged_sender";

/// Postfix's wording for `reject_unauthenticated_sender_login_mismatch`.
pub fn not_logged_in() -> Action {
    Action::reply(553, "5.7.1", "not logged in")
}

#[derive(Debug)]
struct ForgedSender;

pub fn build(_: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    Ok(Arc::new(ForgedSender))
}

impl Check for ForgedSender {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Sender
    }
    fn about_login(&self) -> bool {
        true
    }
    fn fails_closed(&self) -> bool {
        true
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
            if ask.login.is_some() || ask.trusted {
                return Ok(Verdict::Dunno);
            }
            if !shared.snapshot().await?.is_local_domain(&domain) {
                return Ok(Verdict::Dunno);
            }
            if let Some(ip) = ask.client_ip
                && shared.spf(ip, req).await == Some(SpfResult::Pass)
            {
                return Ok(Verdict::Dunno);
            }
            tracing::info!(sender = ?req.sender, client = ?req.client_address,
                "unauthenticated mail from one of our domains; rejected");
            Ok(Verdict::Stop(not_logged_in()))
        })
    }
}
