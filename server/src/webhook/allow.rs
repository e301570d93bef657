//! Where webhooks may go: the operator's URL prefixes (`--webhook-allow`), and the addresses a
//! webhook never reaches unless the operator names them.
//!
//! A caller's `notify_url` is taken when it is an absolute `https` URL (or `http` under an
//! `http` prefix) without user info, under one of the prefixes: the same scheme, host and port,
//! and a path that is the prefix's path or goes on below it at a `/`. A host name must then
//! resolve to public addresses only: loopback, private, link-local, unspecified, broadcast,
//! multicast, shared (CGNAT) and reserved addresses, and IPv4-mapped or NAT64 forms of them, are
//! refused. The one way to such an address is a prefix that names it as an IP literal
//! (`http://127.0.0.1:8080/`, `https://[fd00::5]/`): the operator chose that address, not a DNS
//! record someone else may change. Resolution happens again at every delivery (see
//! [`super::delivery`]), so a name that changes its address after the check (DNS rebinding) is
//! not followed either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// The longest `notify_url` taken.
pub const MAX_URL_LEN: usize = 2048;

/// The longest a check waits for a host name's addresses.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The operator's prefixes. Empty (the default): webhooks are not enabled and every URL is
/// refused.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    prefixes: Vec<Prefix>,
    lookup: Lookup,
}

/// One `--webhook-allow` prefix, parsed.
#[derive(Debug, Clone)]
pub(super) struct Prefix {
    /// As written by the operator, normalised by the URL parser.
    text: String,
    scheme: String,
    host: Host<String>,
    port: u16,
    /// The path without its trailing `/`: `""` for the root.
    path: String,
}

/// How names are resolved at check time: the system's resolver, or a table in unit tests.
#[derive(Debug, Clone, Default)]
enum Lookup {
    #[default]
    System,
    #[cfg(test)]
    Table(std::collections::HashMap<String, Vec<IpAddr>>),
}

/// A `--webhook-allow` prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--webhook-allow {prefix:?}: {reason}")]
pub struct AllowListError {
    pub prefix: String,
    pub reason: String,
}

/// Why a webhook URL is refused. The messages are written for the caller who gave the URL (an
/// `INVALID_ARGUMENT` on `notify_url`): each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("webhooks are not enabled on this server: leave notify_url empty")]
    NotEnabled,
    #[error("notify_url is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("notify_url is not a valid absolute URL: {0}")]
    Unparsable(String),
    #[error("notify_url has the scheme `{0}`: webhook URLs must use https")]
    Scheme(String),
    #[error("notify_url must not contain a user name or password (webhooks are signed instead)")]
    UserInfo,
    #[error("notify_url's path must not contain an encoded `/` or `\\` (%2F, %5C)")]
    EncodedSeparator,
    #[error("notify_url is not under a prefix this server allows; allowed: {}", .allowed.join(", "))]
    NotAllowed { allowed: Vec<String> },
    #[error("notify_url's host {host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error(
        "notify_url's host {host} resolves to {addr}, a {class} address: webhooks go to public addresses only"
    )]
    SpecialAddress {
        host: String,
        addr: IpAddr,
        class: AddressClass,
    },
}

/// The kinds of address a webhook does not reach unless a prefix names the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Broadcast,
    Multicast,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    Shared,
    /// 240.0.0.0/4 (but the broadcast address).
    Reserved,
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Multicast => "multicast",
            AddressClass::Shared => "shared (carrier-grade NAT)",
            AddressClass::Reserved => "reserved",
        })
    }
}

/// The class of an address a webhook must not reach by a name, or `None` for a public one.
/// IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) addresses are classed as the
/// IPv4 address they carry.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = ip.octets();
    if a == 0 {
        // 0.0.0.0/8, "this network": connecting to 0.0.0.0 reaches the local host.
        Some(AddressClass::Unspecified)
    } else if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if ip.is_private() {
        Some(AddressClass::Private)
    } else if ip.is_link_local() {
        Some(AddressClass::LinkLocal)
    } else if ip.is_broadcast() {
        Some(AddressClass::Broadcast)
    } else if ip.is_multicast() {
        Some(AddressClass::Multicast)
    } else if a == 100 && (b & 0xc0) == 64 {
        Some(AddressClass::Shared)
    } else if a >= 240 {
        Some(AddressClass::Reserved)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        Some(AddressClass::Unspecified)
    } else if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        classify_v4(v4)
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        classify_v4(Ipv4Addr::new(a, b, c, d))
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        // fc00::/7, unique local.
        Some(AddressClass::Private)
    } else if (segments[0] & 0xffc0) == 0xfec0 {
        // fec0::/10, the deprecated site-local range: private in practice.
        Some(AddressClass::Private)
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        Some(AddressClass::LinkLocal)
    } else if ip.is_multicast() {
        Some(AddressClass::Multicast)
    } else {
        None
    }
}

impl AllowList {
    /// The prefixes of `--webhook-allow`: absolute `http` or `https` URLs with a host, without
    /// user info, query or fragment. No prefixes: webhooks are not enabled.
    pub fn new<I, S>(prefixes: I) -> Result<Self, AllowListError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let prefixes = prefixes
            .into_iter()
            .map(|text| Prefix::parse(text.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList {
            prefixes,
            lookup: Lookup::System,
        })
    }

    /// Whether any prefix is configured (webhooks are enabled).
    pub fn is_enabled(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// The prefixes, normalised (`https://hooks.example.com` shows as `https://hooks.example.com/`).
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.prefixes.iter().map(|p| p.text.as_str())
    }

    /// Checks a caller's webhook URL: its form, its prefix and, for a host name, the addresses
    /// it resolves to now. Returns the parsed URL.
    pub async fn check(&self, url: &str) -> Result<Url, WebhookUrlError> {
        let (url, prefix) = self.check_form(url)?;
        match url.host() {
            Some(Host::Domain(domain)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                let addrs = self.resolve(domain, port).await?;
                if let Some((addr, class)) = addrs
                    .iter()
                    .find_map(|&addr| classify(addr).map(|class| (addr, class)))
                {
                    return Err(WebhookUrlError::SpecialAddress {
                        host: domain.to_owned(),
                        addr,
                        class,
                    });
                }
            }
            Some(Host::Ipv4(v4)) => check_literal(IpAddr::V4(v4), prefix)?,
            Some(Host::Ipv6(v6)) => check_literal(IpAddr::V6(v6), prefix)?,
            None => return Err(WebhookUrlError::Unparsable("it has no host".into())),
        }
        Ok(url)
    }

    /// Everything [`AllowList::check`] looks at but the addresses, and the prefix matched: the
    /// check of a delivery, whose connections go to public addresses only (its resolver drops
    /// the others).
    pub(super) fn check_form(&self, text: &str) -> Result<(Url, &Prefix), WebhookUrlError> {
        if self.prefixes.is_empty() {
            return Err(WebhookUrlError::NotEnabled);
        }
        if text.len() > MAX_URL_LEN {
            return Err(WebhookUrlError::TooLong);
        }
        let url =
            Url::parse(text.trim()).map_err(|e| WebhookUrlError::Unparsable(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookUrlError::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(WebhookUrlError::UserInfo);
        }
        let path = url.path().to_ascii_lowercase();
        if ["%2f", "%5c"].iter().any(|encoded| path.contains(encoded)) {
            return Err(WebhookUrlError::EncodedSeparator);
        }
        if let Some(prefix) = self.prefixes.iter().find(|p| p.matches(&url)) {
            return Ok((url, prefix));
        }
        // An `http` URL that an `https` prefix would take, or with no `http` prefix at all: the
        // scheme is what to change.
        if url.scheme() != "https" {
            let same_scheme = self.prefixes.iter().any(|p| p.scheme == url.scheme());
            let other_scheme = self
                .prefixes
                .iter()
                .any(|p| p.scheme != url.scheme() && p.matches_but_scheme(&url));
            if !same_scheme || other_scheme {
                return Err(WebhookUrlError::Scheme(url.scheme().to_owned()));
            }
        }
        Err(WebhookUrlError::NotAllowed {
            allowed: self.prefixes().map(str::to_owned).collect(),
        })
    }

    async fn resolve(&self, domain: &str, port: u16) -> Result<Vec<IpAddr>, WebhookUrlError> {
        let unresolvable = |reason: String| WebhookUrlError::Unresolvable {
            host: domain.to_owned(),
            reason,
        };
        let addrs: Vec<IpAddr> = match &self.lookup {
            Lookup::System => {
                tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((domain, port)))
                    .await
                    .map_err(|_| unresolvable(format!("no answer within {LOOKUP_TIMEOUT:?}")))?
                    .map_err(|e| unresolvable(e.to_string()))?
                    .map(|addr| addr.ip())
                    .collect()
            }
            #[cfg(test)]
            Lookup::Table(table) => table
                .get(domain)
                .cloned()
                .ok_or_else(|| unresolvable("no such host".into()))?,
        };
        if addrs.is_empty() {
            return Err(unresolvable("it has no addresses".into()));
        }
        Ok(addrs)
    }

    /// Resolves names from `table` instead of DNS (unit tests).
    #[cfg(test)]
    fn with_table(mut self, table: &[(&str, &[IpAddr])]) -> Self {
        self.lookup = Lookup::Table(
            table
                .iter()
                .map(|(name, addrs)| (name.to_string(), addrs.to_vec()))
                .collect(),
        );
        self
    }
}

/// An IP literal in a URL: under a prefix that names this very address (the only way such a URL
/// matches, since prefixes compare hosts), so any class is taken. Kept as a check of its own so
/// that the rule does not hang on how prefixes match.
fn check_literal(addr: IpAddr, prefix: &Prefix) -> Result<(), WebhookUrlError> {
    if prefix.names_address(addr) {
        return Ok(());
    }
    match classify(addr) {
        Some(class) => Err(WebhookUrlError::SpecialAddress {
            host: addr.to_string(),
            addr,
            class,
        }),
        None => Ok(()),
    }
}

impl Prefix {
    fn parse(text: &str) -> Result<Prefix, AllowListError> {
        let error = |reason: &str| AllowListError {
            prefix: text.to_owned(),
            reason: reason.to_owned(),
        };
        let url = Url::parse(text.trim()).map_err(|e| error(&format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(error("the scheme must be https (or http)"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(error("a prefix has no user name or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(error("a prefix has no query or fragment"));
        }
        let host = url
            .host()
            .ok_or_else(|| error("a prefix needs a host"))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| error("a prefix needs a port"))?;
        Ok(Prefix {
            text: url.as_str().to_owned(),
            scheme: url.scheme().to_owned(),
            host,
            port,
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether the prefix's host is this IP address, written as a literal.
    fn names_address(&self, addr: IpAddr) -> bool {
        match &self.host {
            Host::Ipv4(v4) => IpAddr::V4(*v4) == addr,
            Host::Ipv6(v6) => IpAddr::V6(*v6) == addr,
            Host::Domain(_) => false,
        }
    }

    fn matches(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.port_or_known_default() == Some(self.port)
            && self.matches_but_scheme(url)
    }

    /// The host and the path (ports differ with the scheme's default).
    fn matches_but_scheme(&self, url: &Url) -> bool {
        let host_matches = match url.host() {
            Some(host) => host.to_owned() == self.host,
            None => false,
        };
        let path = url.path();
        host_matches
            && (path == self.path
                || path
                    .strip_prefix(&self.path)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn list(prefixes: &[&str]) -> AllowList {
        AllowList::new(prefixes).unwrap().with_table(&[
            (
                "hooks.example.com",
                &[ip("93.184.215.14"), ip("2606:2800:21f::1")],
            ),
            ("hooks.example.com.evil.org", &[ip("203.0.113.9")]),
            ("localhost", &[ip("127.0.0.1"), ip("::1")]),
            ("loopback.example.com", &[ip("127.0.0.2")]),
            ("ten.example.com", &[ip("10.1.2.3")]),
            ("rfc1918-172.example.com", &[ip("172.20.0.1")]),
            ("rfc1918-192.example.com", &[ip("192.168.1.1")]),
            ("ula.example.com", &[ip("fd12:3456::1")]),
            ("metadata.example.com", &[ip("169.254.169.254")]),
            ("fe80.example.com", &[ip("fe80::1")]),
            ("zero.example.com", &[ip("0.0.0.0")]),
            ("v6zero.example.com", &[ip("::")]),
            ("broadcast.example.com", &[ip("255.255.255.255")]),
            ("multicast.example.com", &[ip("224.0.0.1")]),
            ("v6multicast.example.com", &[ip("ff02::1")]),
            ("cgnat.example.com", &[ip("100.64.0.1")]),
            ("mapped.example.com", &[ip("::ffff:127.0.0.1")]),
            ("mapped-private.example.com", &[ip("::ffff:10.0.0.1")]),
            ("nat64.example.com", &[ip("64:ff9b::a9fe:a9fe")]),
            ("mixed.example.com", &[ip("93.184.215.14"), ip("10.0.0.7")]),
            ("empty.example.com", &[]),
        ])
    }

    /// Every host of the table above under an https prefix of its own.
    fn every_host() -> AllowList {
        list(&[
            "https://localhost/",
            "https://loopback.example.com/",
            "https://ten.example.com/",
            "https://rfc1918-172.example.com/",
            "https://rfc1918-192.example.com/",
            "https://ula.example.com/",
            "https://metadata.example.com/",
            "https://fe80.example.com/",
            "https://zero.example.com/",
            "https://v6zero.example.com/",
            "https://broadcast.example.com/",
            "https://multicast.example.com/",
            "https://v6multicast.example.com/",
            "https://cgnat.example.com/",
            "https://mapped.example.com/",
            "https://mapped-private.example.com/",
            "https://nat64.example.com/",
            "https://mixed.example.com/",
            "https://empty.example.com/",
            "https://unknown.example.com/",
        ])
    }

    #[tokio::test]
    async fn takes_urls_under_a_prefix() {
        let allow = list(&[
            "https://hooks.example.com/exports",
            "https://hooks.example.com:8443/",
        ]);
        for url in [
            "https://hooks.example.com/exports",
            "https://hooks.example.com/exports/",
            "https://hooks.example.com/exports/done?token=abc#frag",
            "https://HOOKS.example.com:443/exports/a/b",
            "https://hooks.example.com:8443/anything",
            "https://hooks.example.com/exports/./x",
        ] {
            let parsed = allow
                .check(url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(parsed.host_str(), Some("hooks.example.com"), "{url}");
        }
    }

    #[tokio::test]
    async fn prefixes_match_on_host_port_and_whole_path_segments() {
        let allow = list(&["https://hooks.example.com/exports/"]);
        let not_allowed = WebhookUrlError::NotAllowed {
            allowed: vec!["https://hooks.example.com/exports/".to_owned()],
        };
        for url in [
            // The host boundary trick: a longer host that starts with the prefix's.
            "https://hooks.example.com.evil.org/exports/",
            "https://hooks.example.com.evil.org/",
            // Path boundaries.
            "https://hooks.example.com/exportsX",
            "https://hooks.example.com/exports-evil/",
            "https://hooks.example.com/",
            "https://hooks.example.com/exports/../admin",
            "https://hooks.example.com/exports/%2e%2e/admin",
            // Another port, another host.
            "https://hooks.example.com:444/exports/",
            "https://evil.org/exports/",
        ] {
            assert_eq!(allow.check(url).await, Err(not_allowed.clone()), "{url}");
        }
        // Without a trailing slash in the prefix the boundary holds the same.
        let allow = list(&["https://hooks.example.com"]);
        assert!(
            allow
                .check("https://hooks.example.com.evil.org/")
                .await
                .is_err()
        );
        assert!(allow.check("https://hooks.example.com/x").await.is_ok());
        let allow = list(&["https://hooks.example.com/exports"]);
        assert!(
            allow
                .check("https://hooks.example.com/exportsX")
                .await
                .is_err()
        );
        assert!(
            allow
                .check("https://hooks.example.com/exports/x")
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn without_prefixes_every_webhook_is_refused() {
        let allow = AllowList::default();
        assert!(!allow.is_enabled());
        for url in [
            "https://hooks.example.com/",
            "not a url",
            "http://127.0.0.1/",
        ] {
            let error = allow.check(url).await.unwrap_err();
            assert_eq!(error, WebhookUrlError::NotEnabled);
            assert!(error.to_string().contains("not enabled on this server"));
        }
    }

    #[tokio::test]
    async fn refuses_unparsable_and_overlong_urls() {
        let allow = list(&["https://hooks.example.com/"]);
        for url in [
            "",
            "hooks.example.com/x",
            "/relative",
            "https://",
            "https://exa mple.com/",
        ] {
            assert!(
                matches!(allow.check(url).await, Err(WebhookUrlError::Unparsable(_))),
                "{url}"
            );
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(allow.check(&long).await, Err(WebhookUrlError::TooLong));
    }

    #[tokio::test]
    async fn refuses_other_schemes_than_https_unless_the_prefix_is_http() {
        let allow = list(&["https://hooks.example.com/"]);
        for (url, scheme) in [
            ("http://hooks.example.com/", "http"),
            ("ftp://hooks.example.com/", "ftp"),
            ("file:///etc/passwd", "file"),
            ("ws://hooks.example.com/", "ws"),
        ] {
            let error = allow.check(url).await.unwrap_err();
            assert_eq!(error, WebhookUrlError::Scheme(scheme.to_owned()), "{url}");
            assert!(error.to_string().contains("must use https"));
        }
        let allow = list(&[
            "http://hooks.example.com/plain/",
            "https://hooks.example.com/",
        ]);
        assert!(
            allow
                .check("http://hooks.example.com/plain/x")
                .await
                .is_ok()
        );
        assert_eq!(
            allow.check("http://hooks.example.com/other").await,
            Err(WebhookUrlError::Scheme("http".to_owned()))
        );
    }

    #[tokio::test]
    async fn refuses_user_info_and_encoded_separators() {
        let allow = list(&["https://hooks.example.com/"]);
        for url in [
            "https://user@hooks.example.com/",
            "https://user:pass@hooks.example.com/",
            "https://:pass@hooks.example.com/",
        ] {
            assert_eq!(
                allow.check(url).await,
                Err(WebhookUrlError::UserInfo),
                "{url}"
            );
        }
        for url in [
            "https://hooks.example.com/a%2F..%2Fadmin",
            "https://hooks.example.com/a%5c..%5cadmin",
        ] {
            assert_eq!(
                allow.check(url).await,
                Err(WebhookUrlError::EncodedSeparator),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_names_that_resolve_to_internal_addresses() {
        let allow = every_host();
        for (host, addr, class) in [
            ("localhost", "127.0.0.1", AddressClass::Loopback),
            ("loopback.example.com", "127.0.0.2", AddressClass::Loopback),
            ("ten.example.com", "10.1.2.3", AddressClass::Private),
            (
                "rfc1918-172.example.com",
                "172.20.0.1",
                AddressClass::Private,
            ),
            (
                "rfc1918-192.example.com",
                "192.168.1.1",
                AddressClass::Private,
            ),
            ("ula.example.com", "fd12:3456::1", AddressClass::Private),
            (
                "metadata.example.com",
                "169.254.169.254",
                AddressClass::LinkLocal,
            ),
            ("fe80.example.com", "fe80::1", AddressClass::LinkLocal),
            ("zero.example.com", "0.0.0.0", AddressClass::Unspecified),
            ("v6zero.example.com", "::", AddressClass::Unspecified),
            (
                "broadcast.example.com",
                "255.255.255.255",
                AddressClass::Broadcast,
            ),
            (
                "multicast.example.com",
                "224.0.0.1",
                AddressClass::Multicast,
            ),
            (
                "v6multicast.example.com",
                "ff02::1",
                AddressClass::Multicast,
            ),
            ("cgnat.example.com", "100.64.0.1", AddressClass::Shared),
            (
                "mapped.example.com",
                "::ffff:127.0.0.1",
                AddressClass::Loopback,
            ),
            (
                "mapped-private.example.com",
                "::ffff:10.0.0.1",
                AddressClass::Private,
            ),
            (
                "nat64.example.com",
                "64:ff9b::a9fe:a9fe",
                AddressClass::LinkLocal,
            ),
            // One internal address among public ones is enough to refuse.
            ("mixed.example.com", "10.0.0.7", AddressClass::Private),
        ] {
            let url = format!("https://{host}/hook");
            let error = allow.check(&url).await.unwrap_err();
            assert_eq!(
                error,
                WebhookUrlError::SpecialAddress {
                    host: host.to_owned(),
                    addr: ip(addr),
                    class,
                },
                "{url}"
            );
            assert!(
                error.to_string().contains("public addresses only"),
                "{error}"
            );
        }
        for host in ["empty.example.com", "unknown.example.com"] {
            let url = format!("https://{host}/hook");
            assert!(
                matches!(
                    allow.check(&url).await,
                    Err(WebhookUrlError::Unresolvable { .. })
                ),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn ip_literals_pass_only_under_a_prefix_naming_them() {
        let allow = list(&[
            "http://127.0.0.1:8080/",
            "https://[fd00::5]/hooks/",
            "https://hooks.example.com/",
        ]);
        assert!(allow.check("http://127.0.0.1:8080/hook").await.is_ok());
        assert!(allow.check("https://[fd00::5]/hooks/x").await.is_ok());
        for url in [
            "http://127.0.0.1:8081/hook",
            "http://127.0.0.2:8080/hook",
            "https://10.0.0.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://0x7f.1/",
            "https://2130706433/",
            "https://[fd00::6]/hooks/x",
        ] {
            assert!(
                matches!(
                    allow.check(url).await,
                    Err(WebhookUrlError::NotAllowed { .. } | WebhookUrlError::Scheme(_))
                ),
                "{url}"
            );
        }
        // The literal rule on its own, whatever the prefix matching.
        let domain = Prefix::parse("https://hooks.example.com/").unwrap();
        let literal = Prefix::parse("http://127.0.0.1/").unwrap();
        assert_eq!(
            check_literal(ip("127.0.0.1"), &domain),
            Err(WebhookUrlError::SpecialAddress {
                host: "127.0.0.1".to_owned(),
                addr: ip("127.0.0.1"),
                class: AddressClass::Loopback,
            })
        );
        assert_eq!(check_literal(ip("127.0.0.1"), &literal), Ok(()));
        assert_eq!(check_literal(ip("93.184.215.14"), &domain), Ok(()));
    }

    #[test]
    fn classifies_addresses() {
        for (addr, class) in [
            ("0.0.0.0", Some(AddressClass::Unspecified)),
            ("0.1.2.3", Some(AddressClass::Unspecified)),
            ("127.255.0.1", Some(AddressClass::Loopback)),
            ("10.255.255.255", Some(AddressClass::Private)),
            ("172.16.0.0", Some(AddressClass::Private)),
            ("172.31.255.255", Some(AddressClass::Private)),
            ("172.32.0.0", None),
            ("192.168.0.1", Some(AddressClass::Private)),
            ("169.254.0.1", Some(AddressClass::LinkLocal)),
            ("255.255.255.255", Some(AddressClass::Broadcast)),
            ("239.255.255.250", Some(AddressClass::Multicast)),
            ("100.64.0.0", Some(AddressClass::Shared)),
            ("100.127.255.255", Some(AddressClass::Shared)),
            ("100.128.0.0", None),
            ("100.63.255.255", None),
            ("240.0.0.1", Some(AddressClass::Reserved)),
            ("8.8.8.8", None),
            ("::", Some(AddressClass::Unspecified)),
            ("::1", Some(AddressClass::Loopback)),
            ("fc00::1", Some(AddressClass::Private)),
            ("fdff:ffff::1", Some(AddressClass::Private)),
            ("fec0::1", Some(AddressClass::Private)),
            ("fe80::1", Some(AddressClass::LinkLocal)),
            ("febf::1", Some(AddressClass::LinkLocal)),
            ("ff05::2", Some(AddressClass::Multicast)),
            ("::ffff:192.168.0.1", Some(AddressClass::Private)),
            ("::ffff:100.64.1.1", Some(AddressClass::Shared)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::7f00:1", Some(AddressClass::Loopback)),
            ("64:ff9b::808:808", None),
            ("2001:4860:4860::8888", None),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn refuses_unusable_prefixes() {
        for prefix in [
            "hooks.example.com",
            "ftp://hooks.example.com/",
            "https://user@hooks.example.com/",
            "https://hooks.example.com/?a=b",
            "https://hooks.example.com/#x",
            "",
        ] {
            let error = AllowList::new([prefix]).unwrap_err();
            assert_eq!(error.prefix, prefix);
            assert!(error.to_string().starts_with("--webhook-allow"), "{error}");
        }
        let allow = AllowList::new(["https://Hooks.Example.com"]).unwrap();
        assert_eq!(
            allow.prefixes().collect::<Vec<_>>(),
            ["https://hooks.example.com/"]
        );
    }

    #[tokio::test]
    async fn the_system_resolver_is_asked_for_names() {
        // `localhost` resolves without a network, to loopback addresses.
        let allow = AllowList::new(["http://localhost:8080/"]).unwrap();
        assert!(matches!(
            allow.check("http://localhost:8080/hook").await,
            Err(WebhookUrlError::SpecialAddress {
                class: AddressClass::Loopback,
                ..
            })
        ));
    }
}
