//! Where a SIP call's media may go and come from, no I/O: the networks an SDP `c=` address
//! must be in before the bot sends RTP there ([`MediaNet`], [`MediaPolicy`]), and which
//! source addresses count as the caller's RTP ([`RtpLatch`]).
//!
//! Without these the bot could be told to stream audio to any host (a reflector), and
//! anyone who guesses the RTP port could speak for the caller — and decide the call.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `--allow-media-net` value is not a network.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MediaNetError {
    #[error("`{0}` is not an IP address (expected CIDR like 10.0.0.0/8 or 2001:db8::/32)")]
    Address(String),
    #[error("`{0}` has a bad prefix length (0-32 for IPv4, 0-128 for IPv6)")]
    Prefix(String),
}

impl MediaNet {
    /// Loopback and the private networks of RFC 1918: the default `--allow-media-net`.
    pub fn defaults() -> Vec<MediaNet> {
        [
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
            (IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
            (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
        ]
        .into_iter()
        .map(|(addr, prefix)| MediaNet { addr, prefix })
        .collect()
    }

    /// Whether `ip` is inside the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the `width` low bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let host_bits = width - u32::from(prefix).min(width);
    (a ^ b).checked_shr(host_bits).unwrap_or(0) == 0
}

impl FromStr for MediaNet {
    type Err = MediaNetError;

    fn from_str(s: &str) -> Result<MediaNet, MediaNetError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| MediaNetError::Address(s.to_string()))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| MediaNetError::Prefix(s.to_string()))?,
        };
        Ok(MediaNet { addr, prefix })
    }
}

impl fmt::Display for MediaNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which SDP connection addresses the bot sends RTP to.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaPolicy {
    /// `--allow-media-net`.
    pub nets: Vec<MediaNet>,
}

impl MediaPolicy {
    /// The caller's own address (where its INVITE came from) is always allowed: audio sent
    /// back to the sender reflects nothing. And since RTP starts only at the ACK, which
    /// needs the 200 OK's To tag, a forged source address never receives media either.
    pub fn allows(&self, media: IpAddr, signalling_source: Option<IpAddr>) -> bool {
        let media = media.to_canonical();
        signalling_source.is_some_and(|s| s.to_canonical() == media)
            || self.nets.iter().any(|net| net.contains(media))
    }
}

impl Default for MediaPolicy {
    fn default() -> Self {
        MediaPolicy {
            nets: MediaNet::defaults(),
        }
    }
}

/// Which source addresses are the caller's RTP, and where the bot sends its own.
#[derive(Debug, Clone)]
pub struct RtpLatch {
    /// Where the SDP offer asked for RTP.
    sdp: SocketAddr,
    /// `--symmetric-rtp`: the INVITE's source IP; the caller's RTP comes from there.
    signalling_ip: Option<IpAddr>,
    /// Symmetric RTP: the first RTP source from the signalling IP, followed from then on.
    latched: Option<SocketAddr>,
}

/// What a received datagram's source address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller's RTP.
    Caller,
    /// Symmetric RTP, nothing latched yet, and it comes from the signalling IP: the caller's
    /// once [`RtpLatch::latch`]ed (after it parsed as RTP).
    Candidate,
    /// Anyone else: dropped.
    Foreign,
}

impl RtpLatch {
    /// Accepts RTP only from the SDP's address and port.
    pub fn sdp(sdp: SocketAddr) -> RtpLatch {
        RtpLatch {
            sdp,
            signalling_ip: None,
            latched: None,
        }
    }

    /// Symmetric RTP (a caller behind NAT, whose SDP names its private address): accepts RTP
    /// only from the signalling source's IP, latches on the first such source port and
    /// follows nothing else afterwards; sends to the SDP address until then.
    pub fn symmetric(sdp: SocketAddr, signalling_ip: IpAddr) -> RtpLatch {
        RtpLatch {
            sdp,
            signalling_ip: Some(signalling_ip.to_canonical()),
            latched: None,
        }
    }

    pub fn classify(&self, from: SocketAddr) -> Source {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        match (self.signalling_ip, self.latched) {
            (None, _) if same_addr(from, self.sdp) => Source::Caller,
            (None, _) => Source::Foreign,
            (Some(_), Some(latched)) if from == latched => Source::Caller,
            (Some(_), Some(_)) => Source::Foreign,
            (Some(ip), None) if from.ip() == ip => Source::Candidate,
            (Some(_), None) => Source::Foreign,
        }
    }

    /// Follows `from` from now on (a [`Source::Candidate`] that sent real RTP).
    pub fn latch(&mut self, from: SocketAddr) {
        self.latched = Some(SocketAddr::new(from.ip().to_canonical(), from.port()));
    }

    /// Where the bot's RTP goes.
    pub fn send_to(&self) -> SocketAddr {
        self.latched.unwrap_or(self.sdp)
    }

    /// What the call follows, for the logs.
    pub fn describe(&self) -> String {
        match (self.signalling_ip, self.latched) {
            (None, _) => format!("{} (the SDP's)", self.sdp),
            (Some(_), Some(latched)) => format!("{latched} (symmetric RTP, latched)"),
            (Some(ip), None) => format!("{ip}:* (symmetric RTP, not latched yet)"),
        }
    }
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> MediaNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches_networks() {
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!net("172.16.0.0/12").contains(ip("172.32.0.0")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert!(matches!(
            "10.0.0.0/33".parse::<MediaNet>(),
            Err(MediaNetError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<MediaNet>(),
            Err(MediaNetError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<MediaNet>(),
            Err(MediaNetError::Prefix(_))
        ));
    }

    #[test]
    fn default_policy_is_loopback_private_and_the_caller() {
        let policy = MediaPolicy::default();
        for allowed in ["127.0.0.1", "::1", "10.1.2.3", "172.20.0.1", "192.168.1.10"] {
            assert!(policy.allows(ip(allowed), None), "{allowed}");
        }
        for refused in [
            "203.0.113.9",
            "8.8.8.8",
            "0.0.0.0",
            "224.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!policy.allows(ip(refused), None), "{refused}");
        }
        assert!(policy.allows(ip("203.0.113.9"), Some(ip("203.0.113.9"))));
        assert!(!policy.allows(ip("203.0.113.9"), Some(ip("203.0.113.10"))));
        let only = MediaPolicy {
            nets: vec![net("192.0.2.0/24")],
        };
        assert!(!only.allows(ip("127.0.0.1"), None));
        assert!(only.allows(ip("192.0.2.200"), None));
    }

    #[test]
    fn sdp_latch_accepts_only_the_offered_address_and_port() {
        let latch = RtpLatch::sdp(sock("127.0.0.1:4000"));
        assert_eq!(latch.classify(sock("127.0.0.1:4000")), Source::Caller);
        assert_eq!(latch.classify(sock("127.0.0.1:4002")), Source::Foreign);
        assert_eq!(latch.classify(sock("127.0.0.2:4000")), Source::Foreign);
        assert_eq!(latch.send_to(), sock("127.0.0.1:4000"));
    }

    #[test]
    fn symmetric_latch_follows_the_first_source_of_the_signalling_ip() {
        let mut latch = RtpLatch::symmetric(sock("10.0.0.5:4000"), ip("198.51.100.7"));
        assert_eq!(latch.send_to(), sock("10.0.0.5:4000"));
        assert_eq!(latch.classify(sock("10.0.0.5:4000")), Source::Foreign);
        assert_eq!(latch.classify(sock("198.51.100.8:6000")), Source::Foreign);
        assert_eq!(latch.classify(sock("198.51.100.7:6000")), Source::Candidate);
        latch.latch(sock("198.51.100.7:6000"));
        assert_eq!(latch.classify(sock("198.51.100.7:6000")), Source::Caller);
        assert_eq!(latch.classify(sock("198.51.100.7:6002")), Source::Foreign);
        assert_eq!(latch.send_to(), sock("198.51.100.7:6000"));
    }
}
