//! `sender_login`: Postfix's `reject_authenticated_sender_login_mismatch` over MIAB's sender
//! map, from the directory snapshot, with Postfix's own wording.

use super::{Ask, Building, Check, ConnState, Decision, Shared, Stage};
use crate::StartError;
use crate::verdict::{Action, Verdict};
use directory::Directory;
use std::sync::Arc;

pub const NAME: &str = "sender_login";

/// Postfix's wording for `reject_authenticated_sender_login_mismatch`; Postfix adds
/// `<addr>: Sender address rejected: ` in front.
pub fn not_owned(login: &str) -> Action {
    Action::reply(553, "5.7.1", format!("not owned by user {login}"))
}

#[derive(Debug)]
struct SenderLogin;

pub fn build(_: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    Ok(Arc::new(SenderLogin))
}

impl Check for SenderLogin {
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
            // Postfix skips the null sender, and unauthenticated clients are not its business.
            let Some(login) = &ask.login else {
                return Ok(Verdict::Dunno);
            };
            if req.sender.is_empty() {
                return Ok(Verdict::Dunno);
            }
            let owned =
                shared
                    .snapshot()
                    .await?
                    .may_send_as(login.as_sent(), &req.sender, &shared.delims);
            if owned {
                return Ok(Verdict::Dunno);
            }
            tracing::info!(login = ?login.as_sent(), sender = ?req.sender, client = ?req.client_address,
                "sender address not owned by the login; rejected");
            Ok(Verdict::Stop(not_owned(login.as_sent())))
        })
    }
}
