//! The server under test: its address, and the host and path its upgrade request names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Why a URL cannot be a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not `ws://`.
    #[error("'{0}': only ws:// URLs are supported")]
    Scheme(String),
    /// No host, or a port that is not a number.
    #[error("'{0}': expected ws://HOST[:PORT][/PATH]")]
    Malformed(String),
    /// The host did not resolve.
    #[error("'{host}' does not resolve: {reason}")]
    Resolve {
        /// The host part.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
}

/// A resolved WebSocket endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as written.
    pub host: String,
    /// The request target: path and query.
    pub path: String,
}

impl Target {
    /// Parses and resolves `ws://host[:port][/path][?query]` (IPv4 preferred).
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| TargetError::Scheme(url.to_owned()))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let malformed = || TargetError::Malformed(url.to_owned());
        let (host, port) = split_authority(authority).ok_or_else(malformed)?;
        if host.is_empty() {
            return Err(malformed());
        }
        let resolve_error = |reason: String| TargetError::Resolve {
            host: host.to_owned(),
            reason,
        };
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| resolve_error(e.to_string()))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| resolve_error("no address".to_owned()))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path,
        })
    }

    /// Whether the target is on 127.0.0.0/8, where source addresses can be spread.
    pub fn is_ipv4_loopback(&self) -> bool {
        matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
    }
}

/// Host and port of `host`, `host:port`, `[v6]` or `[v6]:port` (port 80 by default).
fn split_authority(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 80)),
    }
}

/// The source address of connection `index` when spreading over `count` loopback
/// addresses: 127.0.0.1, 127.0.0.2, ... Each gives the kernel its own ephemeral port
/// range, which one address (about 28k ports) could not give 100k connections.
pub fn loopback_source(index: usize, count: u32) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
    let offset = (index as u64 % u64::from(count.max(1))) as u32;
    IpAddr::V4(Ipv4Addr::from(base + offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_address_host_and_path() {
        let t = Target::parse("ws://127.0.0.1:8080/ws?x=1").expect("parses");
        assert_eq!(
            t.addr,
            "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/ws?x=1")
        );
        let t = Target::parse("ws://127.0.0.1").expect("parses");
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = Target::parse("ws://[::1]:9/a").expect("parses");
        assert_eq!(t.addr, "[::1]:9".parse::<SocketAddr>().expect("addr"));
        assert!(Target::parse("ws://127.0.0.1:8080?q").is_ok_and(|t| t.path == "/?q"));
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            Target::parse("wss://x/ws"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("ws://:80/"),
            Err(TargetError::Malformed(_))
        ));
        assert!(matches!(
            Target::parse("ws://h:port/"),
            Err(TargetError::Malformed(_))
        ));
    }

    #[test]
    fn sources_cycle_over_the_loopback_range() {
        assert_eq!(loopback_source(0, 16), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(loopback_source(17, 16), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(loopback_source(300, 1000), IpAddr::from([127, 0, 1, 45]));
        assert!(Target::parse("ws://127.0.0.1:1/").is_ok_and(|t| t.is_ipv4_loopback()));
    }
}
