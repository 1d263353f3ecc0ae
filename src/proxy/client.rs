//! Who a client is, for per-client limits: its address, or, behind a proxy listed in
//! `server.trusted_proxies`, the address that proxy forwarded. Pure: no I/O.

use crate::config::Cidr;
use std::net::{IpAddr, Ipv6Addr};

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
    fn ipv6_clients_count_by_their_64() {
        let a = client_address(ip("2001:db8:1:2:aaaa::1"), std::iter::empty(), &[]);
        let b = client_address(ip("2001:db8:1:2:bbbb::2"), std::iter::empty(), &[]);
        let c = client_address(ip("2001:db8:1:3::1"), std::iter::empty(), &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(client_address(ip("::ffff:198.51.100.1"), std::iter::empty(), &[]), ip("198.51.100.1"));
    }
}
