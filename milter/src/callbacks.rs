//! indymilter's callbacks: what the milter asks Postfix for at negotiation, and each stage a
//! thin step into the connection's [`Session`].

use crate::State;
use crate::message::Session;
use indymilter::{Actions, Callbacks, MacroStage, ProtoOpts, SocketInfo, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument as _;

/// Connection numbers for log lines, unique per process.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// The stages that answer nothing when the MTA offers it: none of them ever fails on its own.
const NO_REPLY: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_HELO)
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH)
    .union(ProtoOpts::NOREPLY_BODY);

/// The callbacks, each a thin step into the connection's [`Session`].
pub(crate) fn callbacks(state: Arc<State>) -> Callbacks<Session> {
    Callbacks::new()
        .on_negotiate(move |cx, _, offered| {
            let s = Arc::clone(&state);
            Box::pin(async move {
                cx.requested_actions |= Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                // Header values arrive byte-exact (DKIM), and nothing we never use is sent.
                cx.requested_opts |= ProtoOpts::LEADING_SPACE
                    | ProtoOpts::NO_UNKNOWN
                    | ProtoOpts::NO_DATA
                    | ProtoOpts::NO_RCPT;
                // Every answer before end-of-message is "continue" (a failure waits for it),
                // so when the MTA allows it, those answers are not sent at all: a round trip
                // per header costs more CPU than the DKIM work.
                let quiet = offered.contains(NO_REPLY);
                if quiet {
                    cx.requested_opts |= NO_REPLY;
                }
                // Only the macros we read; the others would be sent and parsed for nothing.
                cx.requested_macros
                    .insert(MacroStage::Mail, c"{auth_authen}".to_owned());
                cx.requested_macros.insert(MacroStage::Eoh, c"i".to_owned());
                for stage in [MacroStage::Connect, MacroStage::Helo, MacroStage::Eom] {
                    cx.requested_macros.insert(stage, c"".to_owned());
                }
                cx.data = Some(Session::new(
                    s,
                    quiet,
                    NEXT_CONN.fetch_add(1, Ordering::Relaxed),
                ));
                Status::Continue
            })
        })
        .on_connect(|cx, _host, info| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                if let SocketInfo::Inet(addr) = info {
                    s.connect(addr.ip());
                }
                s.carry_on()
            })
        })
        .on_helo(|cx, helo| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                s.helo(&helo.to_string_lossy());
                s.carry_on()
            })
        })
        .on_mail(|cx, args| {
            Box::pin(async move {
                let login = cx
                    .macros
                    .get(c"{auth_authen}")
                    .map(|v| v.to_string_lossy().into_owned())
                    .filter(|v| !v.is_empty());
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                let sender = args
                    .first()
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default();
                s.mail(&sender, login);
                s.carry_on()
            })
        })
        .on_header(|cx, name, value| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                s.header(name.as_bytes(), value.as_bytes());
                s.carry_on()
            })
        })
        .on_eoh(|cx| {
            Box::pin(async move {
                let queue_id = cx
                    .macros
                    .get(c"i")
                    .map(|v| v.to_string_lossy().into_owned());
                match cx.data.as_mut() {
                    Some(s) => {
                        s.queue_id(queue_id.as_deref().unwrap_or_default());
                        let span = s.span();
                        s.end_of_headers().instrument(span).await
                    }
                    None => Status::Continue,
                }
            })
        })
        .on_body(|cx, chunk| {
            Box::pin(async move {
                match cx.data.as_mut() {
                    Some(s) => {
                        let span = s.span();
                        s.body(&chunk).instrument(span).await
                    }
                    None => Status::Continue,
                }
            })
        })
        .on_eom(|cx| {
            Box::pin(async move {
                match cx.data.as_mut() {
                    Some(s) => {
                        let span = s.span();
                        s.end_of_message(&cx.actions, &mut cx.reply)
                            .instrument(span)
                            .await
                    }
                    None => Status::Continue,
                }
            })
        })
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.abort();
                }
                Status::Continue
            })
        })
}

/// Callbacks that accept every connection at once and change nothing.
pub(crate) fn accept_only() -> Callbacks<()> {
    Callbacks::new().on_connect(|_, _, _| Box::pin(async { Status::Accept }))
}
