//! Outgoing HTTP(S) to addresses tenants choose (webhook endpoints, CAPTCHA verify URLs,
//! identity providers): one client whose resolver drops loopback, private, link-local,
//! CGNAT and metadata addresses, so what it connects to is what was checked, and a literal
//! check for IP-address URLs (which never reach the resolver). Redirects are never
//! followed. `allow_private` (`PORTCULLIS_EGRESS_ALLOW_PRIVATE`) lifts the guard for tests
//! and on-premises targets, except for link-local and metadata addresses ([`metadata`]),
//! which stay refused.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

/// Whether `ip` is an address outgoing calls must not reach: loopback, private (RFC 1918,
/// ULA), link-local (the cloud metadata services live there), CGNAT, unspecified,
/// multicast, broadcast, documentation, or an IPv4 address embedded in IPv6 that is one
/// of those.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [first, second, third, _] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || first == 0
                || first >= 240
                || (first == 100 && (second & 0xc0) == 64)
                || (first == 198 && (second & 0xfe) == 18)
                || (first == 192 && second == 0 && third == 0)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // NAT64 local use, 64:ff9b:1::/48, whole.
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || embedded_v4(a).is_some_and(|v4| forbidden(IpAddr::V4(v4)))
        }
    }
}

/// Whether `ip` is a link-local or cloud metadata address (169.254.0.0/16, where
/// 169.254.169.254 serves instance credentials; fe80::/10; AWS's fd00:ec2::254), in any
/// IPv6 spelling. Refused even when private targets are allowed: no tenant setting is a
/// reason to reach the instance's credentials.
pub fn metadata(ip: IpAddr) -> bool {
    const AWS_IMDS_V6: std::net::Ipv6Addr =
        std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => {
            a == AWS_IMDS_V6
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || embedded_v4(a).is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms that route to it:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated, still routed by
/// some stacks), NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(a: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = a.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    if let Some(mapped) = a.to_ipv4_mapped() {
        return Some(mapped);
    }
    match s {
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// Whether outgoing calls may reach `ip`.
fn reachable(ip: IpAddr, allow_private: bool) -> bool {
    !metadata(ip) && (allow_private || !forbidden(ip))
}

/// The DNS resolver of guarded connections: the system's, with forbidden addresses
/// dropped.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| reachable(a.ip(), allow_private))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other(
                    "the host resolves to no address an outgoing call may reach",
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

type GuardedClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// Why an outgoing call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the URL names an address outgoing calls may not reach")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

/// The guarded client. Cheap to clone (one connection pool, the system roots read once).
#[derive(Clone)]
pub struct Egress {
    client: GuardedClient,
    allow_private: bool,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

/// An answer read in full (bounded).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Egress {
    pub fn new(allow_private: bool) -> Result<Self, String> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("no TLS root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            allow_private,
        })
    }

    /// Whether private targets are allowed (plain `http://` is then allowed too).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Whether `uri` names a forbidden address literally: hyper connects to an IP literal
    /// without asking the resolver, so [`GuardedResolver`] never sees it.
    pub fn refuses(&self, uri: &http::Uri) -> bool {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.parse::<IpAddr>()
            .is_ok_and(|ip| !reachable(ip, self.allow_private))
    }

    /// Sends `request` and reads at most `max_body` bytes of the answer (0: the body is not
    /// read), all within `timeout`. A redirect is an answer like any other (never followed).
    pub async fn call(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, EgressError> {
        if self.refuses(request.uri()) {
            return Err(EgressError::Refused);
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| EgressError::Failed(e.to_string()))?;
            let status = response.status().as_u16();
            if max_body == 0 {
                return Ok(Answer {
                    status,
                    body: Bytes::new(),
                });
            }
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| EgressError::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| EgressError::Timeout)?
    }

    /// Checks a target URL a tenant gives: absolute `http(s)`, at most 2,000 characters, no
    /// credentials, and (unless private targets are allowed) a host that is not, and does
    /// not resolve only to, forbidden addresses. The reason names what is wrong.
    pub async fn check_url(&self, url: &str) -> Result<(), &'static str> {
        let uri: http::Uri = url.parse().map_err(|_| "is not a URL")?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || url.len() > 2000 {
            return Err("must be an http(s) URL of at most 2000 characters");
        }
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry credentials");
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| "does not resolve")?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() || addrs.iter().any(|ip| !reachable(*ip, self.allow_private)) {
            return Err("resolves to a loopback, private, link-local or metadata address");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        let egress = Egress::new(false).unwrap();
        assert_eq!(
            egress.check_url("ftp://x").await,
            Err("must be an http(s) URL of at most 2000 characters")
        );
        assert_eq!(
            egress.check_url("https://u:p@example.com").await,
            Err("must not carry credentials")
        );
        assert!(egress.check_url("http://127.0.0.1/hook").await.is_err());
        assert!(egress.refuses(&"http://[::1]/x".parse().unwrap()));
        let open = Egress::new(true).unwrap();
        assert!(!open.refuses(&"http://[::1]/x".parse().unwrap()));
        assert!(open.check_url("http://127.0.0.1/hook").await.is_ok());
        // Metadata stays out of reach with private targets allowed, in every spelling.
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[fe80::1]/",
        ] {
            assert!(open.refuses(&url.parse().unwrap()), "{url}");
            assert!(open.check_url(url).await.is_err(), "{url}");
        }
    }

    #[test]
    fn metadata_addresses() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::a9fe:a9fe",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(metadata(bad.parse().unwrap()), "{bad}");
        }
        for fine in ["10.0.0.1", "127.0.0.1", "fd00:ec2::253", "::1", "::"] {
            assert!(!metadata(fine.parse().unwrap()), "{fine}");
        }
    }
}
