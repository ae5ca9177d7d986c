//! Where proxyd may send a request whose URL came from upstream metadata or an upstream
//! redirect: the configured upstream's origin, hosts the operator allowed, or public addresses,
//! checked on the address actually connected to (a resolver that drops every other address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// How a URL may be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The configured upstream's origin or an allowed host: any address.
    Trusted,
    /// Anything else: only public addresses.
    PublicOnly,
}

/// `upstream.allowed_hosts` entries: `host` (any port) or `host:port`.
#[derive(Debug, Clone, Default)]
pub(crate) struct EgressRule {
    allowed: Vec<(String, Option<u16>)>,
}

impl EgressRule {
    pub(crate) fn new(allowed_hosts: &[String]) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for entry in allowed_hosts {
            let entry = entry.trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            let parsed = Url::parse(&format!("http://{entry}/"))
                .ok()
                .filter(|u| u.path() == "/" && u.username().is_empty())
                .ok_or_else(|| format!("{entry:?} is not a host or host:port"))?;
            let host = parsed.host_str().unwrap_or_default().to_owned();
            let port = entry.rsplit_once(':').and_then(|(h, p)| {
                (!h.ends_with(']') || entry.starts_with('[')).then_some(())?;
                p.parse::<u16>().ok()
            });
            allowed.push((host, port));
        }
        Ok(Self { allowed })
    }

    /// How `url` may be fetched by an instance whose upstream is `upstream`, or why not.
    pub(crate) fn classify(&self, url: &Url, upstream: Option<&Url>) -> Result<Route, String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {:?} is never fetched", url.scheme()));
        }
        let Some(host) = url.host() else {
            return Err("the URL has no host".into());
        };
        if upstream.is_some_and(|u| u.origin() == url.origin()) {
            return Ok(Route::Trusted);
        }
        let name = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default();
        if self
            .allowed
            .iter()
            .any(|(h, p)| *h == name && p.is_none_or(|p| Some(p) == port))
        {
            return Ok(Route::Trusted);
        }
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        };
        match literal {
            Some(ip) if !is_public(ip) => Err(format!(
                "{ip} is not a public address (add the host to upstream.allowed_hosts to allow it)"
            )),
            _ => Ok(Route::PublicOnly),
        }
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, CGNAT,
/// unspecified, multicast, broadcast, documentation, benchmarking or reserved.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: may reach any IPv4 address
        || s[0] == 0) // IPv4-compatible and other reserved forms
}

/// A resolver that answers only public addresses, so a name cannot smuggle in a private one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to non-public addresses (add it to upstream.allowed_hosts to allow it)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn origins_allowed_hosts_and_schemes() {
        let upstream = url("http://127.0.0.1:4873/registry/");
        let rule = EgressRule::new(&["files.internal".into(), "10.0.0.5:8081".into()]).unwrap();
        let ok = |u: &str| rule.classify(&url(u), Some(&upstream));
        assert_eq!(ok("http://127.0.0.1:4873/a.tgz"), Ok(Route::Trusted));
        assert!(ok("http://127.0.0.1:4874/a.tgz").is_err(), "another port");
        assert!(ok("http://169.254.169.254/latest/meta-data").is_err());
        assert!(ok("http://[::1]:4873/a").is_err());
        assert_eq!(ok("https://files.internal/x"), Ok(Route::Trusted));
        assert_eq!(ok("http://10.0.0.5:8081/x"), Ok(Route::Trusted));
        assert!(ok("http://10.0.0.5:8082/x").is_err());
        assert_eq!(ok("https://registry.example/x"), Ok(Route::PublicOnly));
        assert!(ok("file:///etc/passwd").is_err());
        assert!(ok("ftp://registry.example/x").is_err());
        assert!(EgressRule::new(&["http://x/".into()]).is_err());
    }
}
