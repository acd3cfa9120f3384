//! The one DNS resolver the daemon shares (`daemon::dns::authenticator`: hickory, caching
//! answers for their TTL), and SPF through mail-auth over it.

pub use daemon::dns::authenticator;

use hickory_resolver::TokioResolver;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};
use std::net::IpAddr;
use std::time::Duration;

/// The resolver inside an authenticator, for plain lookups.
pub fn resolver(auth: &MessageAuthenticator) -> TokioResolver {
    auth.resolver().clone()
}

/// Does the sender's domain's SPF record authorise `ip`? `None` when no answer came in
/// `limit` (SPF may take up to ten lookups).
pub async fn spf_passes(
    auth: &MessageAuthenticator,
    ip: IpAddr,
    helo: &str,
    host: &str,
    sender: &str,
    limit: Duration,
) -> Option<SpfResult> {
    let params = SpfParameters::verify_mail_from(ip, helo, host, sender);
    tokio::time::timeout(limit, auth.verify_spf(params))
        .await
        .ok()
        .map(|o| o.result())
}
