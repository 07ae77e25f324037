//! Where the publisher may send: no request to the operator's own network unless allowed.
//!
//! A subscription URL could point at loopback, a private network or the cloud metadata address
//! (169.254.169.254) and make the publisher a proxy into places its callers cannot reach
//! (server-side request forgery). So an address is *forbidden* when it is loopback, private
//! (RFC 1918, fc00::/7), link-local (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0/8, ::),
//! multicast, broadcast, CGNAT shared space (100.64.0.0/10), or the IPv4-mapped IPv6 form of any
//! of those — unless it lies in one of the `WEBHOOK_ALLOWED_NETWORKS`.
//!
//! The check runs twice: when a subscription is registered (on the IP literal, or on every address
//! its host resolves to), and on every delivery on the address actually connected to — the
//! client's DNS resolver ([`GuardedResolver`]) drops forbidden answers, since a DNS answer can
//! change after registration, and IP-literal hosts (which skip DNS) are checked before sending.
//! The operator's own `NOTIFIER_URL` is trusted and never checked. The client follows no
//! redirects and uses no proxy, so neither can lead a request elsewhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address may not be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Private,
    LinkLocal,
    Unspecified,
    Multicast,
    Broadcast,
    SharedCgnat,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private-network address",
            Self::LinkLocal => "a link-local address (such as the cloud metadata service)",
            Self::Unspecified => "an unspecified address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::SharedCgnat => "a carrier-grade NAT address (100.64.0.0/10)",
        })
    }
}

/// The class of a forbidden address, or `None` for an address on the public internet.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if ip.is_private() {
        Some(AddressClass::Private)
    } else if ip.is_link_local() {
        Some(AddressClass::LinkLocal)
    } else if a == 0 {
        // 0.0.0.0/8 "this network": a connect to 0.0.0.0 reaches the local host.
        Some(AddressClass::Unspecified)
    } else if ip.is_multicast() {
        Some(AddressClass::Multicast)
    } else if ip.is_broadcast() {
        Some(AddressClass::Broadcast)
    } else if a == 100 && (b & 0b1100_0000) == 64 {
        Some(AddressClass::SharedCgnat)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if ip.is_unspecified() {
        Some(AddressClass::Unspecified)
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0 {
        // Unique local fc00::/7, and the deprecated site-local fec0::/10.
        Some(AddressClass::Private)
    } else if (first & 0xffc0) == 0xfe80 {
        Some(AddressClass::LinkLocal)
    } else if ip.is_multicast() {
        Some(AddressClass::Multicast)
    } else {
        None
    }
}

/// `WEBHOOK_ALLOWED_NETWORKS`: comma-separated CIDRs (or single addresses) that are allowed
/// although they are forbidden by class.
pub fn parse_allowed_networks(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not a network in CIDR notation such as 10.0.0.0/8"))
        })
        .collect()
}

/// An address the policy refuses: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub ip: IpAddr,
    pub class: AddressClass,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {}", self.ip, self.class)
    }
}

/// Which addresses deliveries may go to.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `WEBHOOK_ALLOWED_NETWORKS`.
    pub allowed: Vec<IpNet>,
}

impl Policy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// `Ok` when `ip` may be sent to.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        // An allowed IPv4 network also allows its IPv4-mapped IPv6 form.
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = |ip: IpAddr| self.allowed.iter().any(|net| net.contains(&ip));
        if allowed(ip) || mapped.is_some_and(allowed) {
            Ok(())
        } else {
            Err(Refused { ip, class })
        }
    }
}

const ALLOWED_VAR: &str = "WEBHOOK_ALLOWED_NETWORKS";

/// Why a delivery was not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("forbidden address: {host} {reason}")]
pub struct ForbiddenAddress {
    pub host: String,
    pub reason: String,
}

impl ForbiddenAddress {
    /// `host` (a name, or an IP literal) and the refusal of each of its addresses.
    pub fn of(host: &str, refused: &[Refused]) -> Self {
        let reason = match refused {
            [one] if one.ip.to_string() == host => {
                format!("is {}, not in {ALLOWED_VAR}: not sent", one.class)
            }
            _ => {
                let each: Vec<String> = refused.iter().map(Refused::to_string).collect();
                format!(
                    "resolves only to refused addresses ({}), none in {ALLOWED_VAR}: not sent",
                    each.join("; ")
                )
            }
        };
        Self {
            host: host.to_owned(),
            reason,
        }
    }
}

/// The DNS resolver of the delivery client: resolves with the system resolver, then keeps only
/// the addresses the policy allows. A host left with none fails with [`ForbiddenAddress`].
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<Policy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused) = sort_addresses(&policy, resolved);
            if allowed.is_empty() {
                return Err(ForbiddenAddress::of(&host, &refused).into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Splits resolved addresses into allowed ones and refusals.
fn sort_addresses(policy: &Policy, resolved: Vec<SocketAddr>) -> (Vec<SocketAddr>, Vec<Refused>) {
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for addr in resolved {
        match policy.check(addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(why) => refused.push(why),
        }
    }
    (allowed, refused)
}

/// The host of `url` when it is an IP literal (these skip DNS, so the resolver never sees them).
pub fn ip_literal(url: &Url) -> Option<IpAddr> {
    // The URL parser has already normalised every IPv4 spelling (`2130706433`, `0x7f.1`) to
    // dotted form, and an IPv6 host is in brackets; a domain never parses as an address.
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// How long registration waits for the host of a new subscription to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The registration check of a subscription URL: its IP literal, or every address its host
/// resolves to, must be allowed. `Err` says why not, in words for the `url` field.
pub async fn check_subscription_url(policy: &Policy, url: &Url) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default();
    if let Some(ip) = ip_literal(url) {
        return policy.check(ip).map_err(|refused| {
            format!("{refused}, not in {ALLOWED_VAR}: webhooks may not go there")
        });
    }
    let port = url.port_or_known_default().unwrap_or(0);
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
    let resolved: Vec<SocketAddr> = match lookup.await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Err(format!("its host {host} could not be resolved: {e}")),
        Err(_) => {
            return Err(format!(
                "its host {host} did not resolve within {RESOLVE_TIMEOUT:?}"
            ));
        }
    };
    let (_, refused) = sort_addresses(policy, resolved);
    match refused.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "its host {host} resolves to {}, which is {}, not in {ALLOWED_VAR}: webhooks may not go there",
            first.ip, first.class
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Every forbidden class, in IPv4 and (where it exists) IPv6, plus the IPv4-mapped forms.
    const FORBIDDEN: [(&str, AddressClass); 31] = [
        ("127.0.0.1", AddressClass::Loopback),
        ("127.255.255.254", AddressClass::Loopback),
        ("::1", AddressClass::Loopback),
        ("::ffff:127.0.0.1", AddressClass::Loopback),
        ("10.0.0.1", AddressClass::Private),
        ("172.16.0.1", AddressClass::Private),
        ("172.31.255.255", AddressClass::Private),
        ("192.168.1.1", AddressClass::Private),
        ("fc00::1", AddressClass::Private),
        ("fd12:3456::1", AddressClass::Private),
        ("fec0::1", AddressClass::Private),
        ("::ffff:10.1.2.3", AddressClass::Private),
        ("::ffff:192.168.0.1", AddressClass::Private),
        ("169.254.169.254", AddressClass::LinkLocal),
        ("169.254.0.1", AddressClass::LinkLocal),
        ("fe80::1", AddressClass::LinkLocal),
        ("febf::1", AddressClass::LinkLocal),
        ("::ffff:169.254.169.254", AddressClass::LinkLocal),
        ("0.0.0.0", AddressClass::Unspecified),
        ("0.1.2.3", AddressClass::Unspecified),
        ("::", AddressClass::Unspecified),
        ("::ffff:0.0.0.0", AddressClass::Unspecified),
        ("224.0.0.1", AddressClass::Multicast),
        ("239.255.255.250", AddressClass::Multicast),
        ("ff02::1", AddressClass::Multicast),
        ("::ffff:224.0.0.251", AddressClass::Multicast),
        ("255.255.255.255", AddressClass::Broadcast),
        ("100.64.0.1", AddressClass::SharedCgnat),
        ("100.127.255.255", AddressClass::SharedCgnat),
        ("::ffff:100.100.100.200", AddressClass::SharedCgnat),
        ("::ffff:172.20.0.5", AddressClass::Private),
    ];

    #[test]
    fn every_forbidden_class_is_recognised_in_each_form() {
        for (text, class) in FORBIDDEN {
            assert_eq!(classify(ip(text)), Some(class), "{text}");
            let refused = Policy::default().check(ip(text)).unwrap_err();
            assert_eq!(refused.class, class, "{text}");
        }
    }

    #[test]
    fn public_addresses_and_near_misses_are_allowed() {
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "1.0.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2001:db8::1",
        ] {
            assert_eq!(classify(ip(text)), None, "{text}");
            assert!(Policy::default().check(ip(text)).is_ok(), "{text}");
        }
    }

    #[test]
    fn allowed_networks_open_exceptions_also_for_mapped_forms() {
        let policy =
            Policy::new(parse_allowed_networks("127.0.0.0/8, 10.1.0.0/16,fd00::1").unwrap());
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(policy.check(ip("10.1.200.3")).is_ok());
        assert!(policy.check(ip("fd00::1")).is_ok());
        assert!(policy.check(ip("fd00::2")).is_err());
        assert!(policy.check(ip("10.2.0.1")).is_err());
        assert!(
            policy.check(ip("::1")).is_err(),
            "127.0.0.0/8 does not open ::1"
        );
        assert_eq!(
            policy.check(ip("169.254.169.254")).unwrap_err().to_string(),
            "169.254.169.254 is a link-local address (such as the cloud metadata service)"
        );
    }

    #[test]
    fn a_malformed_network_list_is_refused() {
        assert!(parse_allowed_networks("").unwrap().is_empty());
        assert!(parse_allowed_networks("10.0.0.0/33").is_err());
        let e = parse_allowed_networks("127.0.0.0/8,localhost").unwrap_err();
        assert!(e.contains("\"localhost\""), "{e}");
    }

    #[tokio::test]
    async fn registration_checks_literals_and_resolved_hosts() {
        let strict = Policy::default();
        let url = |s: &str| Url::parse(s).unwrap();
        let e = check_subscription_url(&strict, &url("http://169.254.169.254/latest"))
            .await
            .unwrap_err();
        assert!(e.contains("link-local"), "{e}");
        // The URL parser normalises the other spellings of an IPv4 literal.
        for sneaky in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let e = check_subscription_url(&strict, &url(sneaky))
                .await
                .unwrap_err();
            assert!(e.contains("loopback"), "{sneaky}: {e}");
        }
        let e = check_subscription_url(&strict, &url("http://localhost:9/hook"))
            .await
            .unwrap_err();
        assert!(e.contains("resolves to") && e.contains("loopback"), "{e}");
        let open = Policy::new(parse_allowed_networks("127.0.0.0/8,::1/128").unwrap());
        assert!(
            check_subscription_url(&open, &url("http://localhost:9/hook"))
                .await
                .is_ok()
        );
        assert!(
            check_subscription_url(&open, &url("https://127.0.0.1/"))
                .await
                .is_ok()
        );
        let e = check_subscription_url(&open, &url("http://no-such-host.invalid/"))
            .await
            .unwrap_err();
        assert!(e.contains("could not be resolved"), "{e}");
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_answers() {
        let resolver = GuardedResolver::new(Arc::new(Policy::default()));
        let e = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        let forbidden = e
            .downcast_ref::<ForbiddenAddress>()
            .expect("a ForbiddenAddress");
        let text = forbidden.to_string();
        assert!(
            text.starts_with("forbidden address: localhost resolves only to refused addresses (127.0.0.1 is a loopback address")
                && text.ends_with("), none in WEBHOOK_ALLOWED_NETWORKS: not sent"),
            "{text}"
        );
        let open = GuardedResolver::new(Arc::new(Policy::new(
            parse_allowed_networks("127.0.0.0/8").unwrap(),
        )));
        let addrs: Vec<_> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()),
            "{addrs:?}"
        );
    }
}
