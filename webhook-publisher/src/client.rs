//! The HTTP clients of the attempts: TLS, the egress guard, no redirects, no proxy, no retries
//! of their own.
//!
//! TLS is rustls with the Mozilla root store compiled in (`webpki-roots`, through reqwest), so the
//! publisher trusts the same public CAs on every host and in every image; `WEBHOOK_CA_FILE` (PEM)
//! adds roots for endpoints behind a private CA. A certificate the roots do not vouch for fails
//! the attempt like any other error, and the history says so.
//!
//! There are two clients: the *guarded* one, whose DNS resolver refuses forbidden addresses (see
//! `egress.rs`), for every subscription; and the *trusted* one for the operator's own
//! `NOTIFIER_URL`, which usually lives on the private network next to the publisher.

use std::error::Error;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::egress::{ForbiddenAddress, GuardedResolver, Policy, ip_literal};

/// Extra trusted roots (`WEBHOOK_CA_FILE`). Its `Debug` form only counts them.
#[derive(Clone, Default)]
pub struct TlsRoots(pub Vec<reqwest::Certificate>);

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsRoots({} extra)", self.0.len())
    }
}

impl TlsRoots {
    /// Reads every certificate of a PEM file; each must be usable as a trust anchor.
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let mut anchors = rustls::RootCertStore::empty();
        let mut roots = Vec::new();
        for item in CertificateDer::pem_slice_iter(pem) {
            let der = item.map_err(|e| format!("not a PEM certificate file: {e}"))?;
            anchors
                .add(der.clone())
                .map_err(|e| format!("a certificate is not usable as a root: {e}"))?;
            let cert = reqwest::Certificate::from_der(&der)
                .map_err(|e| format!("a certificate is not usable as a root: {e}"))?;
            roots.push(cert);
        }
        if roots.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
        }
        Ok(Self(roots))
    }
}

/// What the clients are built from.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Time limit of one request.
    pub timeout: Duration,
    /// `WEBHOOK_CA_FILE`.
    pub extra_roots: TlsRoots,
    /// `WEBHOOK_ALLOWED_NETWORKS`.
    pub policy: Arc<Policy>,
    /// `NOTIFIER_URL`: sent to without the address check.
    pub trusted_url: String,
}

/// Picks the client of each attempt.
#[derive(Clone)]
pub struct Clients {
    guarded: reqwest::Client,
    trusted: reqwest::Client,
    policy: Arc<Policy>,
    trusted_url: String,
    /// `trusted_url` parsed once (when it parses): most requests go there, and parsing it for
    /// each of them showed in the publisher's profile.
    trusted_parsed: Option<Url>,
}

impl Clients {
    pub fn new(settings: &ClientSettings) -> reqwest::Result<Self> {
        let resolver = Arc::new(GuardedResolver::new(settings.policy.clone()));
        Ok(Self {
            guarded: builder(settings).dns_resolver(resolver).build()?,
            trusted: builder(settings).build()?,
            policy: settings.policy.clone(),
            trusted_url: settings.trusted_url.clone(),
            trusted_parsed: Url::parse(&settings.trusted_url).ok(),
        })
    }

    /// The client for `url` and the parsed URL to send to, or why nothing may be sent there.
    /// Host names are checked by the guarded client's resolver when it connects; IP literals
    /// never reach a resolver, so they are checked here.
    pub fn for_url(&self, url: &str) -> Result<(&reqwest::Client, Url), String> {
        let parse = |url: &str| {
            Url::parse(url).map_err(|e| format!("the subscription URL is invalid: {e}"))
        };
        if url == self.trusted_url {
            let parsed = match &self.trusted_parsed {
                Some(parsed) => parsed.clone(),
                None => parse(url)?,
            };
            return Ok((&self.trusted, parsed));
        }
        let parsed = parse(url)?;
        if let Some(ip) = ip_literal(&parsed) {
            self.policy
                .check(ip)
                .map_err(|refused| ForbiddenAddress::of(&ip.to_string(), &[refused]).to_string())?;
        }
        Ok((&self.guarded, parsed))
    }
}

fn builder(settings: &ClientSettings) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Every request is an attempt in the history and retried on the delivery's schedule,
        // never behind its back. (reqwest's default would resend a request the server refused
        // at the protocol level, and to be able to, copies every request's head before sending:
        // a per-request cost in the profile. Zero retries per request skips that copy.)
        .retry(reqwest::retry::never().max_retries_per_request(0))
        // A proxy would resolve and connect on our behalf, out of the resolver's sight.
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("webhook-publisher/", env!("CARGO_PKG_VERSION")));
    settings
        .extra_roots
        .0
        .iter()
        .cloned()
        .fold(builder, reqwest::ClientBuilder::add_root_certificate)
}

/// An attempt's error in words for the history: a timeout, a forbidden address, a TLS failure
/// (such as a certificate no root vouches for), or the innermost cause of anything else.
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "the endpoint did not answer in time".to_owned();
    }
    if let Some(forbidden) = find::<ForbiddenAddress>(e) {
        return forbidden.to_string();
    }
    if let Some(tls) = find::<rustls::Error>(e) {
        return format!("the TLS handshake with the endpoint failed: {tls}");
    }
    let cause = innermost(e);
    if e.is_connect() {
        format!("could not connect to the endpoint: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

/// The first error of type `T` in `e`'s chain, looking inside `io::Error`s too (their `source`
/// skips the error they wrap).
fn find<'a, T: Error + 'static>(e: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(found) = find::<T>(inner)
        {
            return Some(found);
        }
        next = err.source();
    }
    None
}

fn innermost(e: &(dyn Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_usable_certificates() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let roots = TlsRoots::from_pem(ca.cert.pem().as_bytes()).unwrap();
        assert_eq!(roots.0.len(), 1);
        assert_eq!(format!("{roots:?}"), "TlsRoots(1 extra)");
        let e = TlsRoots::from_pem(b"").unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = TlsRoots::from_pem(broken.as_bytes()).unwrap_err();
        assert!(e.contains("not usable as a root"), "{e}");
        let e = TlsRoots::from_pem_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.starts_with("cannot read /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn ip_literals_are_checked_before_sending_and_the_notifier_is_trusted() {
        let clients = Clients::new(&ClientSettings {
            timeout: Duration::from_secs(1),
            extra_roots: TlsRoots::default(),
            policy: Arc::new(Policy::default()),
            trusted_url: "http://10.0.0.5:8085/webhooks".to_owned(),
        })
        .unwrap();
        let (_, trusted) = clients.for_url("http://10.0.0.5:8085/webhooks").unwrap();
        assert_eq!(trusted.as_str(), "http://10.0.0.5:8085/webhooks");
        let e = clients.for_url("http://10.0.0.5:8085/other").err().unwrap();
        assert_eq!(
            e,
            "forbidden address: 10.0.0.5 is a private-network address, not in WEBHOOK_ALLOWED_NETWORKS: not sent"
        );
        let e = clients
            .for_url("http://[::ffff:169.254.169.254]/")
            .err()
            .unwrap();
        assert!(
            e.starts_with("forbidden address: ::ffff:169.254.169.254 is a link-local"),
            "{e}"
        );
        assert!(clients.for_url("https://93.184.216.34/hook").is_ok());
        let (_, other) = clients.for_url("https://hooks.example.com/x").unwrap();
        assert_eq!(other.as_str(), "https://hooks.example.com/x");
        let e = clients.for_url("not a url").err().unwrap();
        assert!(e.starts_with("the subscription URL is invalid"), "{e}");
    }
}
