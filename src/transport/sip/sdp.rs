//! SDP offer/answer for one audio stream, no I/O: reads where the caller wants its RTP
//! (connection address, `m=audio` port) and whether it offers PCMU/8000 (payload type 0),
//! and writes the bot's answer: PCMU only, 20 ms packets, send and receive.

use std::net::{IpAddr, SocketAddr};

/// RTP payload type of G.711 μ-law (static, RFC 3551).
pub const PCMU: u8 = 0;

/// Why an offer cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SdpError {
    #[error("the SDP is not UTF-8 text")]
    NotText,
    #[error("the SDP has no `m=audio` line")]
    NoAudio,
    #[error("bad `m=audio` line {0:?}")]
    BadMedia(String),
    #[error("bad `c=` line {0:?}")]
    BadConnection(String),
    #[error("the SDP has no connection address for the audio stream")]
    NoConnection,
    #[error("the audio stream does not offer PCMU/8000 (offered: {0})")]
    NoPcmu(String),
    #[error("the audio stream is disabled (port 0)")]
    Disabled,
}

/// What the bot needs from the caller's offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Where to send the bot's RTP.
    pub rtp: SocketAddr,
    /// The payload types offered for audio, in order.
    pub formats: Vec<String>,
}

/// Parses an SDP offer and checks that its first audio stream can carry PCMU/8000.
pub fn parse_offer(body: &[u8]) -> Result<Offer, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let mut session_addr: Option<IpAddr> = None;
    let mut media: Option<(u16, Vec<String>)> = None;
    let mut media_addr: Option<IpAddr> = None;
    // Lines of a media section other than the first audio one are skipped.
    let mut in_audio = false;
    let mut seen_media = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            seen_media = true;
            in_audio = false;
            if media.is_none() && rest.starts_with("audio ") {
                media = Some(parse_media(rest)?);
                in_audio = true;
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            let addr = parse_connection(rest)?;
            if !seen_media {
                session_addr = Some(addr);
            } else if in_audio {
                media_addr = Some(addr);
            }
        }
    }
    let (port, formats) = media.ok_or(SdpError::NoAudio)?;
    if port == 0 {
        return Err(SdpError::Disabled);
    }
    if !formats.iter().any(|f| f == "0") {
        return Err(SdpError::NoPcmu(formats.join(" ")));
    }
    let ip = media_addr.or(session_addr).ok_or(SdpError::NoConnection)?;
    Ok(Offer {
        rtp: SocketAddr::new(ip, port),
        formats,
    })
}

/// `audio 4000 RTP/AVP 0 8 101` → (4000, ["0", "8", "101"]).
fn parse_media(rest: &str) -> Result<(u16, Vec<String>), SdpError> {
    let bad = || SdpError::BadMedia(rest.chars().take(80).collect());
    let mut parts = rest.split_ascii_whitespace();
    let _audio = parts.next().ok_or_else(bad)?;
    // `port/count` is allowed; only the port matters.
    let port = parts
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let proto = parts.next().ok_or_else(bad)?;
    if !proto.starts_with("RTP/") {
        return Err(bad());
    }
    Ok((port, parts.map(str::to_string).collect()))
}

/// `IN IP4 192.0.2.1` → the address (a multicast `/ttl` suffix is dropped).
fn parse_connection(rest: &str) -> Result<IpAddr, SdpError> {
    let bad = || SdpError::BadConnection(rest.chars().take(80).collect());
    let mut parts = rest.split_ascii_whitespace();
    if parts.next() != Some("IN") {
        return Err(bad());
    }
    let family = parts.next().ok_or_else(bad)?;
    let addr = parts
        .next()
        .and_then(|a| a.split('/').next())
        .ok_or_else(bad)?;
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(bad()),
    }
}

/// The bot's answer: PCMU/8000 on `rtp`, 20 ms packets, both directions.
pub fn answer(rtp: SocketAddr, session_id: u64) -> String {
    let family = if rtp.is_ipv4() { "IP4" } else { "IP6" };
    let ip = rtp.ip();
    format!(
        "v=0\r\n\
         o=renewal-bot {session_id} {session_id} IN {family} {ip}\r\n\
         s=renewal-bot\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP {PCMU}\r\n\
         a=rtpmap:{PCMU} PCMU/8000\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n",
        port = rtp.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARESIP: &str = "v=0\r\no=- 123 456 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 10242 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

    #[test]
    fn reads_a_softphone_offer() {
        let offer = parse_offer(BARESIP.as_bytes()).unwrap();
        assert_eq!(offer.rtp, "127.0.0.1:10242".parse().unwrap());
        assert_eq!(offer.formats, ["0", "8", "101"]);
    }

    #[test]
    fn media_level_connection_wins() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 10.0.0.9\r\nm=audio 6000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n";
        assert_eq!(
            parse_offer(sdp.as_bytes()).unwrap().rtp,
            "10.0.0.2:6000".parse().unwrap()
        );
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        assert_eq!(parse_offer(b"v=0\r\n"), Err(SdpError::NoAudio));
        assert_eq!(parse_offer(&[0xff, 0xfe]), Err(SdpError::NotText));
        let no_pcmu = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 8 9\r\n";
        assert!(matches!(
            parse_offer(no_pcmu.as_bytes()),
            Err(SdpError::NoPcmu(_))
        ));
        let bad_c = "v=0\r\nc=IN IP4 nonsense\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_offer(bad_c.as_bytes()),
            Err(SdpError::BadConnection(_))
        ));
        let no_c = "v=0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(parse_offer(no_c.as_bytes()), Err(SdpError::NoConnection));
        let port0 = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(parse_offer(port0.as_bytes()), Err(SdpError::Disabled));
        let bad_m = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n";
        assert!(matches!(
            parse_offer(bad_m.as_bytes()),
            Err(SdpError::BadMedia(_))
        ));
    }

    #[test]
    fn the_answer_round_trips() {
        let sdp = answer("127.0.0.1:4002".parse().unwrap(), 7);
        let offer = parse_offer(sdp.as_bytes()).unwrap();
        assert_eq!(offer.rtp, "127.0.0.1:4002".parse().unwrap());
        assert_eq!(offer.formats, ["0"]);
        assert!(sdp.contains("a=rtpmap:0 PCMU/8000\r\n"));
    }
}
