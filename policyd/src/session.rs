//! One connection: policy requests in, actions out, through the shared request loop
//! (`daemon::session`), which owns the timeouts and the shutdown rules. Postfix keeps the
//! connection and sends one request at a time; a malformed request closes it without a reply,
//! as the protocol asks.

use crate::State;
use crate::checks::ConnState;
use crate::proto::{self, FrameError, Request, encode_reply};
use crate::verdict::Action;
use daemon::Conn;
use daemon::session::{Decoder, Handler};
use std::sync::Arc;

pub(crate) async fn run(state: Arc<State>, conn: Conn, greylist_only: bool) {
    let answers = Answers {
        state: Arc::clone(&state),
        conn_state: if greylist_only {
            ConnState::greylist_only()
        } else {
            ConnState::default()
        },
    };
    daemon::session::run(conn, &state.limits, proto::Decoder::new(), answers).await;
}

impl Decoder for proto::Decoder {
    type Frame = Request;
    type Error = FrameError;

    fn push(&mut self, bytes: &[u8]) {
        proto::Decoder::push(self, bytes);
    }

    fn next_frame(&mut self) -> Result<Option<Request>, FrameError> {
        self.next_request()
    }

    fn buffered(&self) -> usize {
        proto::Decoder::buffered(self)
    }
}

struct Answers {
    state: Arc<State>,
    conn_state: ConnState,
}

impl Handler<Request> for Answers {
    async fn answer(&mut self, req: Request, out: &mut Vec<u8>) {
        let policy = &self.state.policy;
        let action = if req.is_policy_request() {
            policy.evaluate(&req, &mut self.conn_state).await
        } else {
            tracing::warn!(request = ?req.request,
                    "not a request=smtpd_access_policy; answering the fail action");
            Action::configured(&policy.fail_action)
        };
        let action = action.to_string();
        tracing::debug!(request = ?req, %action, "answered");
        encode_reply(&action, out);
    }

    fn temp_failure(&self, _req: &Request, out: &mut Vec<u8>) {
        encode_reply(TEMP_FAILURE, out);
    }
}

/// What a request gets when answering it failed inside: Postfix defers (4xx) whatever the
/// check; nothing is accepted by accident.
const TEMP_FAILURE: &str = "DEFER_IF_PERMIT 4.3.0 Service temporarily unavailable";
