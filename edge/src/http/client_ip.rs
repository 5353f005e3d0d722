//! The client address of a request: the peer, or what a trusted proxy says it forwarded.

use axum::http::HeaderMap;

/// An IP network (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let to_bits = |ip: std::net::IpAddr| -> Option<(u128, u8)> {
            match ip {
                std::net::IpAddr::V4(v4) => Some((u128::from(u32::from(v4)), 32)),
                std::net::IpAddr::V6(v6) => Some((u128::from(v6), 128)),
            }
        };
        // an IPv4-mapped IPv6 peer matches IPv4 networks
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            other => other,
        };
        match (to_bits(self.addr), to_bits(ip)) {
            (Some((net, width)), Some((addr, width_ip))) if width == width_ip => {
                let shift = u32::from(width - self.prefix);
                shift >= 128 || (net >> shift) == (addr >> shift)
            }
            _ => false,
        }
    }
}

/// The client address of a request: the peer, or, when the peer is a trusted proxy (the
/// data plane), the last address it added to `x-forwarded-for`.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> std::net::IpAddr {
    if !trusted.iter().any(|net| net.contains(peer)) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse().ok())
        .next_back()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = [
            IpNet::parse("10.0.0.0/8").unwrap(),
            IpNet::parse("::1").unwrap(),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        let proxy: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted).to_string(),
            "203.0.113.9"
        );
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            stranger,
            "spoofed header ignored"
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert!(
            IpNet::parse("127.0.0.0/8")
                .unwrap()
                .contains("::ffff:127.0.0.9".parse().unwrap())
        );
        assert!(
            !IpNet::parse("10.0.0.0/8")
                .unwrap()
                .contains("11.0.0.1".parse().unwrap())
        );
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["", "10.0.0.0/33", "host", "::1/129"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }
}
