//! Who a client is, for per-client limits and for the upstream: its address, or, behind a proxy
//! listed in `server.trusted_proxies`, the address that proxy forwarded; and the forwarding
//! headers a proxied request carries. Pure: no I/O.

use crate::config::Cidr;
use http::header::{self, HeaderName};
use http::HeaderValue;
use pingora::http::StaticHeaderName;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;

/// The names of the headers a proxied request gets, parsed once and sent in the case proxies
/// write them in (pingora-http as patched in `vendor/`: no name is parsed or copied per request).
pub const X_FORWARDED_FOR: StaticHeaderName = StaticHeaderName::new(FORWARDED_FOR, "X-Forwarded-For");
pub const X_FORWARDED_PROTO: StaticHeaderName = StaticHeaderName::new(FORWARDED_PROTO, "X-Forwarded-Proto");
pub const X_FORWARDED_HOST: StaticHeaderName = StaticHeaderName::new(FORWARDED_HOST, "X-Forwarded-Host");
pub const VIA: StaticHeaderName = StaticHeaderName::new(header::VIA, "Via");
pub const CONNECTION: StaticHeaderName = StaticHeaderName::new(header::CONNECTION, "Connection");
/// The forwarding headers' names, to look them up without parsing a name for each lookup.
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// How many headers a proxied request may get: the four above and `Connection`.
pub const ADDED_HEADERS: usize = 5;

/// The client's address as limits count it. `peer` is the address the connection came from;
/// `forwarded` the values of its `X-Forwarded-For` headers, in order. Only a trusted peer's
/// forwarding is believed: the client is the rightmost address not itself a trusted proxy (an
/// address to the left of it could have been written by the client). IPv6 addresses are
/// counted by their /64, which one host can fill at will.
pub fn client_address<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.contains(*ip));
    let mut client = peer;
    if is_trusted(&peer) {
        let hops: Vec<IpAddr> = forwarded.flat_map(|v| v.split(',')).filter_map(parse_hop).collect();
        if let Some(hop) = hops.iter().rev().find(|ip| !is_trusted(ip)).or(hops.first()) {
            client = *hop;
        }
    }
    counted(client)
}

/// The forwarding headers of a proxied request, as they are sent upstream. Header values, so
/// that what is sent as it came (a single `Host`, a static scheme or hop) is not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    pub forwarded_for: HeaderValue,
    pub forwarded_proto: HeaderValue,
    pub forwarded_host: Option<HeaderValue>,
    pub via: HeaderValue,
}

/// How a request reached unpoll: over TLS or not, in which HTTP version, the authority of its
/// target (HTTP/2's `:authority`, which stands for `Host`), and where its connection keeps the
/// peer's address once written as a header value.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub tls: bool,
    pub version: http::Version,
    pub authority: Option<&'a str>,
    /// The connection's own `X-Forwarded-For` value, written by its first request that sends
    /// one and shared by the rest (an HTTP/1 connection's guard keeps it, see
    /// `HeadDeadline::address`); `None` writes it for this request alone.
    pub address: Option<&'a OnceLock<HeaderValue>>,
}

/// What a request from `peer`, arrived as `arrival` says, carries upstream. A trusted peer's
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` are kept (the peer's address
/// appended to the first); anyone else's are replaced, so that a client cannot pass for another
/// address or scheme: the scheme is then `https` for a request that came over TLS, else
/// `http`, and the host the request's own (`Host`, or its authority). `Via` always gets
/// unpoll's hop appended, with the protocol version the request came in (RFC 9110 §7.6.3).
pub fn forwarding(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Cidr], arrival: Arrival) -> Forwarding {
    let trusted = trusted.iter().any(|c| c.contains(peer));
    let kept = |name: &HeaderName| if trusted { joined(headers, name) } else { None };
    let forwarded_for = match kept(&FORWARDED_FOR) {
        Some(chain) => text(format!("{}, {peer}", chain.to_str().unwrap_or_default())),
        None => match arrival.address {
            Some(kept) => kept.get_or_init(|| address(peer)).clone(),
            None => address(peer),
        },
    };
    let scheme = HeaderValue::from_static(if arrival.tls { "https" } else { "http" });
    let forwarded_proto = kept(&FORWARDED_PROTO).unwrap_or(scheme);
    let forwarded_host = kept(&FORWARDED_HOST)
        .or_else(|| joined(headers, &header::HOST))
        .or_else(|| arrival.authority.and_then(|a| HeaderValue::from_str(a).ok()));
    let hop = match arrival.version {
        http::Version::HTTP_09 => "0.9 unpoll",
        http::Version::HTTP_10 => "1.0 unpoll",
        http::Version::HTTP_2 => "2 unpoll",
        http::Version::HTTP_3 => "3 unpoll",
        _ => "1.1 unpoll",
    };
    let via = match joined(headers, &header::VIA) {
        Some(before) => text(format!("{}, {hop}", before.to_str().unwrap_or_default())),
        None => HeaderValue::from_static(hop),
    };
    Forwarding { forwarded_for, forwarded_proto, forwarded_host, via }
}

/// The values of header `name` that are text, joined with ", " (a single one as it is).
fn joined(headers: &http::HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter().filter(|v| v.to_str().is_ok());
    let first = values.next()?;
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first.clone());
    }
    let mut all = first.to_str().unwrap_or_default().to_string();
    for value in rest {
        all.push_str(", ");
        all.push_str(value.to_str().unwrap_or_default());
    }
    Some(text(all))
}

/// An address as a header value. An IPv4 address, which every proxied request from it
/// carries, is written digit by digit, without the formatting machinery.
fn address(peer: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = peer else { return text(peer.to_string()) };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A header value of text made of header values and addresses (always valid).
fn text(value: String) -> HeaderValue {
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

/// The address as counted: IPv4 whole, IPv6 by its /64 (an IPv4-mapped one as IPv4).
fn counted(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_written_as_the_standard_library_writes_them() {
        let mut octets = [0u8, 9, 10, 99, 100, 109, 110, 199, 200, 255].into_iter().cycle();
        for _ in 0..2_000 {
            let v4 = std::net::Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|_| octets.next().unwrap()));
            octets.next();
            assert_eq!(address(IpAddr::V4(v4)).to_str().unwrap(), v4.to_string());
        }
        let v6 = ip("2001:db8::7");
        assert_eq!(address(v6).to_str().unwrap(), "2001:db8::7");
    }

    #[test]
    fn forwarding_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("192.0.2.1").unwrap()];
        let none = std::iter::empty();
        assert_eq!(client_address(ip("203.0.113.9"), none, &trusted), ip("203.0.113.9"));
        // An untrusted peer cannot claim another address.
        let claim = ["1.1.1.1"].into_iter();
        assert_eq!(client_address(ip("203.0.113.9"), claim, &trusted), ip("203.0.113.9"));
        // Behind a trusted proxy: the rightmost untrusted hop; a spoofed leftmost one is ignored.
        let chain = ["6.6.6.6, 198.51.100.7", "10.1.2.3"].into_iter();
        assert_eq!(client_address(ip("192.0.2.1"), chain, &trusted), ip("198.51.100.7"));
        let ports = ["[2001:db8::1]:443, 198.51.100.8:1234"].into_iter();
        assert_eq!(client_address(ip("10.0.0.1"), ports, &trusted), ip("198.51.100.8"));
        // Everyone trusted: the first hop. Nothing usable: the peer.
        assert_eq!(client_address(ip("10.0.0.1"), ["10.9.9.9"].into_iter(), &trusted), ip("10.9.9.9"));
        assert_eq!(client_address(ip("10.0.0.1"), ["garbage"].into_iter(), &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn forwarding_headers_are_trusted_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("host", "app.example".parse().unwrap());
        h.insert("via", "1.1 cdn".parse().unwrap());
        let plain = Arrival { tls: false, version: http::Version::HTTP_11, authority: None, address: None };
        let from_client = forwarding(ip("203.0.113.9"), &h, &trusted, plain);
        assert_eq!(from_client.forwarded_for, "203.0.113.9", "a client's own X-Forwarded-For is replaced");
        assert_eq!(from_client.forwarded_proto, "http");
        assert_eq!(from_client.forwarded_host.unwrap(), "app.example");
        assert_eq!(from_client.via, "1.1 cdn, 1.1 unpoll");
        let from_proxy = forwarding(ip("10.1.1.1"), &h, &trusted, plain);
        assert_eq!(from_proxy.forwarded_for, "6.6.6.6, 10.1.1.1");
        assert_eq!(from_proxy.forwarded_proto, "https");
        assert_eq!(forwarding(ip("10.1.1.1"), &http::HeaderMap::new(), &trusted, plain).via, "1.1 unpoll");
    }

    #[test]
    fn the_scheme_version_and_host_come_from_how_the_request_arrived() {
        let h2 = Arrival { tls: true, version: http::Version::HTTP_2, authority: Some("app.example"), address: None };
        let mut claims = http::HeaderMap::new();
        claims.insert("x-forwarded-proto", "http".parse().unwrap());
        let f = forwarding(ip("203.0.113.9"), &claims, &[], h2);
        assert_eq!(f.forwarded_proto, "https", "over TLS, whatever an untrusted client claims");
        assert_eq!(f.forwarded_host.unwrap(), "app.example", "HTTP/2's authority stands for Host");
        assert_eq!(f.via, "2 unpoll");
        let old = Arrival { tls: false, version: http::Version::HTTP_10, authority: None, address: None };
        let f = forwarding(ip("203.0.113.9"), &http::HeaderMap::new(), &[], old);
        assert_eq!((f.forwarded_proto.to_str().unwrap(), f.via.to_str().unwrap()), ("http", "1.0 unpoll"));
        assert_eq!(f.forwarded_host, None);
    }

    #[test]
    fn a_connection_writes_its_address_once_and_shares_it() {
        let kept = OnceLock::new();
        let arrival = Arrival { tls: false, version: http::Version::HTTP_11, authority: None, address: Some(&kept) };
        let first = forwarding(ip("203.0.113.9"), &http::HeaderMap::new(), &[], arrival).forwarded_for;
        assert_eq!(first, "203.0.113.9");
        assert_eq!(kept.get().map(|v| v.as_bytes().as_ptr()), Some(first.as_bytes().as_ptr()), "kept as written");
        let second = forwarding(ip("203.0.113.9"), &http::HeaderMap::new(), &[], arrival).forwarded_for;
        assert_eq!(second.as_bytes().as_ptr(), first.as_bytes().as_ptr(), "the second request shares the bytes");
        // A trusted proxy's chain is the request's own, never the kept value.
        let trusted = [Cidr::parse("203.0.113.0/24").unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        assert_eq!(forwarding(ip("203.0.113.9"), &h, &trusted, arrival).forwarded_for, "6.6.6.6, 203.0.113.9");
        assert_eq!(kept.get().unwrap(), "203.0.113.9");
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = client_address(ip("2001:db8:1:2:aaaa::1"), std::iter::empty(), &[]);
        let b = client_address(ip("2001:db8:1:2:bbbb::2"), std::iter::empty(), &[]);
        let c = client_address(ip("2001:db8:1:3::1"), std::iter::empty(), &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(client_address(ip("::ffff:198.51.100.1"), std::iter::empty(), &[]), ip("198.51.100.1"));
    }
}
