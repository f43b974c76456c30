//! Classifying IP addresses for the SSRF guard. Only globally routable
//! unicast addresses are `Public`; everything else (loopback, private,
//! link-local and cloud metadata, CGNAT, documentation, multicast, ...) is
//! refused unless the policy grants that exact host. IPv6 forms that embed an
//! IPv4 address (mapped, compatible, NAT64, 6to4) are judged by the address
//! they embed, so `::ffff:127.0.0.1` is loopback, not "some IPv6 address".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address this is, for the guard and for `explain-url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Globally routable unicast.
    Public,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// RFC 6598 carrier-grade NAT: `100.64/10`.
    SharedCgnat,
    /// `169.254/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// A cloud's metadata or host-agent service at an address that is
    /// otherwise public: Azure's WireServer `168.63.129.16` (see
    /// [`HOST_AGENTS`]).
    HostAgent,
    /// `fc00::/7`, and the deprecated site-local `fec0::/10`.
    UniqueLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18/15`, `2001:2::/48`.
    Benchmarking,
    /// Other special-purpose ranges: `240/4`, `192.0.0/24`, Teredo,
    /// local-use NAT64, discard-only, anything outside `2000::/3`.
    Reserved,
}

impl AddrClass {
    /// Whether the guard lets a request reach this address without an
    /// explicit grant.
    pub fn is_public(self) -> bool {
        self == AddrClass::Public
    }

    /// Whether an explicit grant can open this class. Never for addresses
    /// that are not one destination: `0.0.0.0` reaches the local host,
    /// multicast and broadcast reach many.
    pub fn is_grantable(self) -> bool {
        !matches!(self, AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Broadcast)
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrClass::Public => "public",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::SharedCgnat => "shared (CGNAT)",
            AddrClass::LinkLocal => "link-local",
            AddrClass::HostAgent => "cloud host agent",
            AddrClass::UniqueLocal => "unique-local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Documentation => "documentation",
            AddrClass::Benchmarking => "benchmarking",
            AddrClass::Reserved => "reserved",
        })
    }
}

/// Classifies `ip`, looking through IPv6 forms that embed an IPv4 address.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Well-known cloud metadata and host-agent addresses that sit in ranges
/// otherwise public, so the range table alone would admit them. The
/// metadata services of AWS, GCP, Azure, Oracle, DigitalOcean, Hetzner,
/// OpenStack and IBM (`169.254.169.254`, `169.254.170.2`, `fd00:ec2::254`,
/// `fd20:ce::254`) and Alibaba's `100.100.100.200` are already link-local,
/// unique-local or CGNAT; Azure's WireServer (VM agent, extensions, health
/// probes, DNS) is not.
pub const HOST_AGENTS: &[Ipv4Addr] = &[Ipv4Addr::new(168, 63, 129, 16)];

const V4_RANGES: &[([u8; 4], u8, AddrClass)] = &[
    ([0, 0, 0, 0], 8, AddrClass::Unspecified),
    ([10, 0, 0, 0], 8, AddrClass::Private),
    ([100, 64, 0, 0], 10, AddrClass::SharedCgnat),
    ([127, 0, 0, 0], 8, AddrClass::Loopback),
    ([169, 254, 0, 0], 16, AddrClass::LinkLocal),
    ([172, 16, 0, 0], 12, AddrClass::Private),
    ([192, 0, 0, 0], 24, AddrClass::Reserved),
    ([192, 0, 2, 0], 24, AddrClass::Documentation),
    ([192, 88, 99, 0], 24, AddrClass::Reserved),
    ([192, 168, 0, 0], 16, AddrClass::Private),
    ([198, 18, 0, 0], 15, AddrClass::Benchmarking),
    ([198, 51, 100, 0], 24, AddrClass::Documentation),
    ([203, 0, 113, 0], 24, AddrClass::Documentation),
    ([224, 0, 0, 0], 4, AddrClass::Multicast),
    ([255, 255, 255, 255], 32, AddrClass::Broadcast),
    ([240, 0, 0, 0], 4, AddrClass::Reserved),
];

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    if HOST_AGENTS.contains(&ip) {
        return AddrClass::HostAgent;
    }
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
            bits & mask == u32::from_be_bytes(*net) & mask
        })
        .map_or(AddrClass::Public, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let bits = u128::from(ip);
    let in_net = |net: u128, prefix: u32| bits >> (128 - prefix) == net >> (128 - prefix);
    let embedded_v4 = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);

    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
    if in_net(0xffff << 32, 96) || in_net(0, 96) {
        return classify_v4(embedded_v4(0));
    }
    // 64:ff9b::/96, the well-known NAT64 prefix: judged by the IPv4 it reaches.
    if in_net(0x0064_ff9b << 96, 96) {
        return classify_v4(embedded_v4(0));
    }
    // 2002::/16, 6to4: the IPv4 address is in bits 16..48.
    if in_net(0x2002 << 112, 16) {
        return classify_v4(embedded_v4(80));
    }
    // Outside 2000::/3 everything is reserved (the last line), so the
    // local-use NAT64 prefix 64:ff9b:1::/48 and discard-only 100::/64
    // need no entry; nor does Teredo, 2001::/32, inside 2001::/23.
    const RANGES: &[(u128, u32, AddrClass)] = &[
        (0x2001_0db8 << 96, 32, AddrClass::Documentation), // 2001:db8::/32
        (0x3fff << 112, 20, AddrClass::Documentation),     // 3fff::/20
        (0x2001_0002 << 96, 48, AddrClass::Benchmarking),  // 2001:2::/48
        (0x2001_0000 << 96, 23, AddrClass::Reserved),      // IETF protocol assignments
        (0xfc00 << 112, 7, AddrClass::UniqueLocal),        // fc00::/7
        (0xfec0 << 112, 10, AddrClass::UniqueLocal),       // site-local, deprecated
        (0xfe80 << 112, 10, AddrClass::LinkLocal),         // fe80::/10
        (0xff00 << 112, 8, AddrClass::Multicast),          // ff00::/8
    ];
    if let Some((_, _, class)) = RANGES.iter().find(|(net, prefix, _)| in_net(*net, *prefix)) {
        return *class;
    }
    if in_net(0x2000 << 112, 3) { AddrClass::Public } else { AddrClass::Reserved }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases: &[(&str, AddrClass)] = &[
            ("93.184.216.34", AddrClass::Public),
            ("1.1.1.1", AddrClass::Public),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.255.254", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("169.254.170.2", AddrClass::LinkLocal),
            ("100.100.100.200", AddrClass::SharedCgnat),
            ("168.63.129.16", AddrClass::HostAgent),
            ("168.63.129.17", AddrClass::Public),
            ("::ffff:168.63.129.16", AddrClass::HostAgent),
            ("64:ff9b::a83f:8110", AddrClass::HostAgent),
            ("2002:a83f:8110::1", AddrClass::HostAgent),
            ("fd00:ec2::254", AddrClass::UniqueLocal),
            ("fd20:ce::254", AddrClass::UniqueLocal),
            ("192.0.0.170", AddrClass::Reserved),
            ("192.0.2.1", AddrClass::Documentation),
            ("198.51.100.7", AddrClass::Documentation),
            ("203.0.113.9", AddrClass::Documentation),
            ("198.18.0.1", AddrClass::Benchmarking),
            ("198.19.255.1", AddrClass::Benchmarking),
            ("224.0.0.1", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("240.0.0.1", AddrClass::Reserved),
            ("255.255.255.255", AddrClass::Broadcast),
            ("2606:4700:4700::1111", AddrClass::Public),
            ("::", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("::127.0.0.1", AddrClass::Loopback),
            ("::10.0.0.1", AddrClass::Private),
            ("64:ff9b::a9fe:a9fe", AddrClass::LinkLocal),
            ("64:ff9b::808:808", AddrClass::Public),
            ("64:ff9b:1::1", AddrClass::Reserved),
            ("2002:7f00:1::", AddrClass::Loopback),
            ("2002:a9fe:a9fe::1", AddrClass::LinkLocal),
            ("2002:808:808::1", AddrClass::Public),
            ("2001::1", AddrClass::Reserved),
            ("2001:1::1", AddrClass::Reserved),
            ("2001:1ff:ffff::1", AddrClass::Reserved),
            ("2001:200::1", AddrClass::Public),
            ("2001:db8::1", AddrClass::Documentation),
            ("3fff::1", AddrClass::Documentation),
            ("2001:2::1", AddrClass::Benchmarking),
            ("fc00::1", AddrClass::UniqueLocal),
            ("fd12:3456::1", AddrClass::UniqueLocal),
            ("fec0::1", AddrClass::UniqueLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("ff02::1", AddrClass::Multicast),
            ("100::1", AddrClass::Reserved),
            ("4000::1", AddrClass::Reserved),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }
}
