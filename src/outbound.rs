//! Address safety for every request the server sends on a user's behalf (webhook deliveries,
//! sign-in providers, and function `fetch`): only `http` and `https` URLs, and never to a
//! loopback, private, link-local (cloud metadata), shared, documentation or multicast address
//! unless the host is allow-listed explicitly (named exactly, never by a wildcard). A function's
//! policy is also exclusive: only the hosts on its list are reached at all. Names are checked after DNS resolution, by the client's own
//! resolver, so the address checked is the address connected to; IP literals are checked
//! before the request; both happen again for every redirect that is followed.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a URL may not be requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// An allow-list entry: a name or an IP literal (which may also be reached at a private
/// address), or a wildcard, `*.example.com` or `*` (public addresses only); and, when given,
/// the only port allowed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    host: String,
    port: Option<u16>,
}

impl Allowed {
    fn is_wildcard(&self) -> bool {
        self.host.starts_with('*')
    }

    /// Whether this entry names `host`, exactly or by its wildcard.
    fn names(&self, host: &str) -> bool {
        match self.host.strip_prefix('*') {
            None => self.host == host,
            Some("") => true,
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        }
    }
}

/// Which hosts outbound requests may reach at private addresses, and, when exclusive, which
/// hosts they may reach at all.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    allowed: Arc<Vec<Allowed>>,
    exclusive: bool,
}

/// The host of a URL as allow-lists name it: lower case, IPv6 without brackets.
fn host_of(url: &reqwest::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(ip.to_string()),
    }
}

impl Policy {
    /// A policy from allow-list entries of hosts that may be reached at private addresses:
    /// `host`, `host:port`, an IP address, or `[v6]:port`. Other hosts are reached at public
    /// addresses.
    pub(crate) fn new(entries: &[String]) -> Result<Policy, String> {
        let allowed = entries
            .iter()
            .map(|entry| parse_entry(entry, false))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            allowed: Arc::new(allowed),
            exclusive: false,
        })
    }

    /// A policy that reaches only the hosts listed: entries as for [`Policy::new`], plus
    /// `*.example.com` (any name under it) and `*` (any host), both at public addresses only.
    pub(crate) fn only(entries: &[String]) -> Result<Policy, String> {
        let allowed = entries
            .iter()
            .map(|entry| parse_entry(entry, true))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            allowed: Arc::new(allowed),
            exclusive: true,
        })
    }

    fn allows_private(&self, host: &str) -> bool {
        self.allowed
            .iter()
            .any(|a| !a.is_wildcard() && a.host == host)
    }

    /// Checks a URL before it is requested (and each redirect before it is followed): its
    /// scheme, its port when its host is allow-listed with one, and an IP literal's address.
    /// A name's addresses are checked when it is resolved.
    pub(crate) fn check(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "only http and https URLs are allowed, not {}",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused("a URL may not carry credentials".into()));
        }
        let Some(host) = host_of(url) else {
            return Err(Refused("the URL has no host".into()));
        };
        let port = url.port_or_known_default();
        if self.exclusive
            && !self
                .allowed
                .iter()
                .any(|a| a.names(&host) && (a.port.is_none() || a.port == port))
        {
            return Err(Refused(format!(
                "{host}{} is not on the allow-list",
                port.map(|p| format!(":{p}")).unwrap_or_default()
            )));
        }
        let listed: Vec<&Allowed> = self
            .allowed
            .iter()
            .filter(|a| !a.is_wildcard() && a.host == host)
            .collect();
        if !listed.is_empty()
            && listed
                .iter()
                .all(|a| a.port.is_some_and(|p| Some(p) != port))
        {
            return Err(Refused(format!(
                "{host} is allow-listed only on other ports"
            )));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if listed.is_empty() && !is_public(ip) {
                return Err(Refused(format!(
                    "{ip} is a private or reserved address; allow-list the host to reach it"
                )));
            }
        }
        Ok(())
    }

    /// An HTTP client that enforces this policy: its resolver drops private addresses of names
    /// not allow-listed, it uses no proxy from the environment, and it follows at most
    /// `redirects` redirects, each checked like the first URL.
    pub(crate) fn client(&self, timeout: Duration, redirects: usize) -> reqwest::Client {
        let policy = self.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > redirects {
                attempt.error(Refused(format!("more than {redirects} redirects")))
            } else if let Err(refused) = policy.check(attempt.url()) {
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        });
        crate::tls::install_default_provider();
        let builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(redirect)
            .timeout(timeout)
            .connect_timeout(timeout)
            .dns_resolver(SafeResolver(self.clone()));
        builder.build().unwrap_or_else(|e| {
            // Only a broken TLS setup fails here; a client without the resolver would be unsafe,
            // so fall back to one that cannot connect anywhere.
            tracing::error!(error = %e, "cannot build the outbound HTTP client");
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(SafeResolver(Policy::default()))
                .build()
                .unwrap_or_default()
        })
    }
}

/// One allow-list entry; wildcards (`*`, `*.example.com`) only when `wildcards`.
fn parse_entry(entry: &str, wildcards: bool) -> Result<Allowed, String> {
    let (star, rest) = match entry.strip_prefix('*') {
        Some(rest) if wildcards => match rest.strip_prefix('.') {
            Some(domain) => ("*.", domain),
            None if rest.is_empty() || rest.starts_with(':') => ("*", rest),
            None => return Err(format!("{entry:?}: a wildcard is `*` or `*.domain`")),
        },
        _ => ("", entry),
    };
    let bad = || {
        let forms = if wildcards {
            "a host, host:port, IP address, *.domain or *"
        } else {
            "a host, host:port or IP address"
        };
        format!("{entry:?} is not {forms}")
    };
    // `*` alone (with or without a port) names every host; parse a stand-in for its port.
    let stand_in = if star == "*" {
        format!("any{rest}")
    } else {
        rest.to_string()
    };
    if stand_in.contains('*') {
        return Err(bad());
    }
    let url = reqwest::Url::parse(&format!("http://{stand_in}/"))
        .ok()
        .filter(|u| u.path() == "/" && u.username().is_empty() && u.query().is_none())
        .ok_or_else(bad)?;
    let host = host_of(&url).ok_or_else(bad)?;
    if star == "*." && host.parse::<IpAddr>().is_ok() {
        return Err(bad());
    }
    let port = url.port().or_else(|| {
        // `Url` drops the scheme's default port; keep one the entry wrote.
        entry.ends_with(":80").then_some(80)
    });
    let host = match star {
        "*" => "*".to_string(),
        "*." => format!("*.{host}"),
        _ => host,
    };
    Ok(Allowed { host, port })
}

/// An error with its causes, as the log shows it.
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Resolves with the system resolver, then keeps only the addresses the policy allows.
struct SafeResolver(Policy);

impl Resolve for SafeResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let private_ok = self.0.allows_private(&host);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| private_ok || is_public(a.ip()))
                .collect();
            if kept.is_empty() {
                let why = if found.is_empty() {
                    format!("{host} has no address")
                } else {
                    format!("{host} resolves only to private or reserved addresses; allow-list the host to reach it")
                };
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Whether an address is on the public internet: not loopback, private, link-local (where
/// cloud metadata services answer), shared (CGNAT), unspecified, documentation, benchmarking,
/// multicast or reserved; IPv6 forms that embed an IPv4 address are judged by that address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s[0] {
        // ::/96 (unspecified, loopback, IPv4-compatible) and 64:ff9b::/96 (NAT64).
        0 if s[1..6] == [0; 5] => false,
        0x64 if s[1] == 0xff9b && s[2..6] == [0; 4] => is_public_v4(embedded(s[6], s[7])),
        // 6to4 carries its IPv4 address in the next 32 bits.
        0x2002 => is_public_v4(embedded(s[1], s[2])),
        // Teredo, ORCHID, documentation.
        0x2001 if s[1] == 0 || (0x10..0x30).contains(&s[1]) || s[1] == 0xdb8 => false,
        // Discard-only 100::/64.
        0x100 if s[1..4] == [0; 3] => false,
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8.
        x if (0xfc00..=0xfdff).contains(&x) || x >= 0xfe80 => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn private_and_reserved_addresses_are_not_public() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.168.1.1",
            "198.18.0.1",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001::1",
            "2001:db8::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[test]
    fn urls_are_checked_against_the_allow_list() {
        let none = Policy::default();
        assert!(none.check(&url("https://example.com/hook")).is_ok());
        assert!(none.check(&url("http://127.0.0.1:8080/")).is_err());
        assert!(none.check(&url("http://[::1]/")).is_err());
        // The WHATWG parser turns other spellings of an address into the address.
        assert!(none.check(&url("http://2130706433/")).is_err());
        assert!(none.check(&url("http://0x7f.1/")).is_err());
        assert!(none.check(&url("ftp://example.com/")).is_err());
        assert!(none.check(&url("http://user:pw@example.com/")).is_err());

        let some = Policy::new(&[
            "127.0.0.1".into(),
            "Internal.Example:8443".into(),
            "[::1]:9000".into(),
        ])
        .unwrap();
        assert!(some.check(&url("http://127.0.0.1:1234/")).is_ok());
        assert!(some.check(&url("https://internal.example:8443/x")).is_ok());
        assert!(some.check(&url("https://internal.example/x")).is_err());
        assert!(some.check(&url("http://[::1]:9000/")).is_ok());
        assert!(some.check(&url("http://[::1]:9001/")).is_err());
        assert!(some.allows_private("internal.example"));
        assert!(!some.allows_private("example.com"));

        assert!(Policy::new(&["http://x/".into()]).is_err());
        assert!(Policy::new(&["a b".into()]).is_err());
        assert!(Policy::new(&["*.example.com".into()]).is_err());
    }

    #[test]
    fn an_exclusive_list_reaches_only_its_hosts_and_wildcards_stay_public() {
        let only = Policy::only(&[
            "api.example.com".into(),
            "*.cdn.example:443".into(),
            "127.0.0.1:9000".into(),
        ])
        .unwrap();
        assert!(only.check(&url("https://api.example.com/v1")).is_ok());
        assert!(only.check(&url("https://other.example.com/")).is_err());
        assert!(only.check(&url("https://a.b.cdn.example/x")).is_ok());
        assert!(only.check(&url("http://a.cdn.example/x")).is_err());
        assert!(only.check(&url("https://cdn.example/x")).is_err());
        assert!(only.check(&url("http://127.0.0.1:9000/")).is_ok());
        assert!(only.check(&url("http://127.0.0.1:9001/")).is_err());
        assert!(only.allows_private("api.example.com"));
        assert!(!only.allows_private("a.cdn.example"));

        let any = Policy::only(&["*".into()]).unwrap();
        assert!(any.check(&url("https://example.org/")).is_ok());
        assert!(any.check(&url("http://127.0.0.1/")).is_err());
        assert!(any.check(&url("http://169.254.169.254/")).is_err());
        assert!(!any.allows_private("localhost"));
        assert!(Policy::only(&["*:8080".into()])
            .unwrap()
            .check(&url("https://example.org/"))
            .is_err());
        assert!(Policy::only(&[])
            .unwrap()
            .check(&url("https://example.org/"))
            .is_err());
        for bad in ["*example.com", "*.10.0.0.1", "http://x/", "x/y"] {
            assert!(Policy::only(&[bad.into()]).is_err(), "{bad} was accepted");
        }
    }
}
