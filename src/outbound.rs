//! Outbound calls to URLs that tenants or operators configure (webhook endpoints, an agent's
//! business API): a way into our network unless checked. Loopback, private, link-local, shared and
//! metadata addresses are refused, at configuration time for IP literals and names, and again at
//! connect time by a resolver that keeps only public addresses (so DNS rebinding gets nowhere),
//! unless the operator sets `ALLOW_PRIVATE_URLS=true`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Whether an address is one a tenant's URL may reach without `ALLOW_PRIVATE_URLS`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
            // IPv4-mapped and -compatible (::ffff:a.b.c.d, ::a.b.c.d), NAT64 (64:ff9b::/96) and
            // 6to4 (2002::/16) addresses reach the IPv4 address they carry.
            if let Some(v4) = v6.to_ipv4() {
                return !v6.is_loopback() && !v6.is_unspecified() && is_public(IpAddr::V4(v4));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            let first = s[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The address of a URL whose host is an IP literal (no resolver is asked for those).
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    url.host_str()?.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

pub const REFUSED: &str = "refused: the target resolves only to loopback, private or link-local addresses";

/// Resolves names like the system does, keeping only public addresses: the check happens at connect
/// time, so a name that changes its answer (DNS rebinding) cannot reach an internal service.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(REFUSED.into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client builder with the connect-time check (unless private targets are allowed) and no
/// proxy (a proxy would resolve the target itself) or redirects (one could lead inside).
pub fn guarded(builder: reqwest::ClientBuilder, allow_private: bool) -> reqwest::ClientBuilder {
    let builder = builder.redirect(reqwest::redirect::Policy::none()).no_proxy();
    if allow_private { builder } else { builder.dns_resolver(Arc::new(PublicOnly)) }
}

/// Checks a tenant's URL when it is configured: http(s), and (unless private targets are allowed)
/// not an address inside our network, as a literal or as a name that resolves only there. A name
/// that does not resolve yet is accepted: the connect-time check still applies.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{:?} is not a URL: {e}", crate::redact::url(raw)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{} is not an http(s) URL", crate::redact::url(raw)));
    }
    if allow_private {
        return Ok(url);
    }
    let refused = || {
        format!(
            "{} is a loopback, private or link-local address (set ALLOW_PRIVATE_URLS=true to allow it)",
            crate::redact::url(raw)
        )
    };
    if let Some(ip) = literal_ip(&url) {
        return if is_public(ip) { Ok(url) } else { Err(refused()) };
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if !addrs.is_empty() && addrs.iter().all(|a| !is_public(a.ip())) { Err(refused()) } else { Ok(url) }
        }
        Err(_) => Ok(url),
    }
}
