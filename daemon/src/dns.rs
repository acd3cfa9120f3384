//! The DNS resolver policyd and the milter build from `[dns]`: mail-auth's authenticator over
//! hickory, asking the configured servers (or `/etc/resolv.conf`) once each, with one timeout.

use crate::DnsConfig;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::MessageAuthenticator;
use std::net::SocketAddr;

/// Builds the resolver: the configured name servers, else `/etc/resolv.conf`; one attempt
/// per server with the configured timeout, so a dead server costs one timeout, not five.
pub fn authenticator(config: &DnsConfig) -> Result<MessageAuthenticator, String> {
    let system = config
        .nameservers
        .is_empty()
        .then(hickory_resolver::system_conf::read_system_conf);
    let (resolver_config, mut opts) = match system {
        Some(Ok(conf)) => conf,
        Some(Err(e)) => {
            // DNS trouble never rejects mail, so a box without a usable resolv.conf still
            // starts, asking MIAB's local resolver.
            tracing::warn!(error = %e, "cannot read /etc/resolv.conf; asking 127.0.0.1:53");
            servers(&[SocketAddr::from(([127, 0, 0, 1], 53))])
        }
        None => servers(&config.nameservers),
    };
    opts.timeout = config.timeout();
    opts.attempts = 1;
    // Block lists answer inside 127.0.0.0/8; nothing may be filtered out.
    opts.deny_answers.clear();
    MessageAuthenticator::new(resolver_config, opts).map_err(|e| e.to_string())
}

/// A resolver configuration for explicit servers.
fn servers(addrs: &[SocketAddr]) -> (ResolverConfig, ResolverOpts) {
    let servers = addrs
        .iter()
        .map(|sa| {
            let conn = |mut c: ConnectionConfig| {
                c.port = sa.port();
                c
            };
            NameServerConfig::new(
                sa.ip(),
                true,
                vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
            )
        })
        .collect();
    (
        ResolverConfig::from_name_servers(servers),
        ResolverOpts::default(),
    )
}
