//! RTP packets (RFC 3550), no I/O: parsing the caller's packets down to their payload, and
//! the bot's outgoing stream (12-byte header, payload type 0, sequence number and timestamp
//! advancing by one 20 ms frame per packet, one random SSRC per call).

/// Length of the fixed RTP header.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not an RTP packet the bot can use.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RtpError {
    #[error("datagram of {0} bytes is shorter than an RTP header")]
    TooShort(usize),
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    #[error("header extensions or CSRCs run past the end of the packet")]
    Truncated,
    #[error("bad padding length")]
    Padding,
}

/// A received packet: its header fields the bot uses, and the payload.
#[derive(Debug, PartialEq)]
pub struct Packet<'a> {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Parses one RTP datagram (CSRCs, a header extension and padding are skipped).
pub fn parse(data: &[u8]) -> Result<Packet<'_>, RtpError> {
    if data.len() < HEADER_LEN {
        return Err(RtpError::TooShort(data.len()));
    }
    let version = data[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = data[0] & 0x20 != 0;
    let extension = data[0] & 0x10 != 0;
    let csrc_count = usize::from(data[0] & 0x0f);
    let mut start = HEADER_LEN + 4 * csrc_count;
    if extension {
        let ext = data.get(start..start + 4).ok_or(RtpError::Truncated)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        start += 4 + 4 * words;
    }
    if start > data.len() {
        return Err(RtpError::Truncated);
    }
    let mut end = data.len();
    if padding {
        let pad = usize::from(data[end - 1]);
        if pad == 0 || start + pad > end {
            return Err(RtpError::Padding);
        }
        end -= pad;
    }
    Ok(Packet {
        payload_type: data[1] & 0x7f,
        marker: data[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([data[2], data[3]]),
        timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        payload: &data[start..end],
    })
}

/// The bot's outgoing stream: one packet per 20 ms frame of μ-law.
#[derive(Debug)]
pub struct Sender {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    payload_type: u8,
    /// The next packet starts a talkspurt (the first packet of the stream).
    marker: bool,
}

impl Sender {
    /// A stream with random SSRC, first sequence number and first timestamp (RFC 3550 §5.1).
    pub fn new(payload_type: u8) -> Sender {
        let random = uuid::Uuid::new_v4().as_u128();
        Sender {
            ssrc: random as u32,
            sequence: (random >> 32) as u16,
            timestamp: (random >> 48) as u32,
            payload_type,
            marker: true,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The next packet carrying `payload` (its samples advance the timestamp).
    pub fn packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(0x80);
        out.push(self.payload_type | if self.marker { 0x80 } else { 0 });
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        self.marker = false;
        self.sequence = self.sequence.wrapping_add(1);
        // μ-law: one byte per sample at 8 kHz, so the clock advances by the payload length.
        self.timestamp = self
            .timestamp
            .wrapping_add(u32::try_from(payload.len()).unwrap_or(u32::MAX));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_packets_parse_back_in_sequence() {
        let mut sender = Sender::new(0);
        let a = sender.packet(&[0xff; 160]);
        let b = sender.packet(&[0x7f; 160]);
        assert_eq!(a.len(), HEADER_LEN + 160);
        let (pa, pb) = (parse(&a).unwrap(), parse(&b).unwrap());
        assert_eq!(pa.payload_type, 0);
        assert!(pa.marker && !pb.marker);
        assert_eq!(pb.sequence, pa.sequence.wrapping_add(1));
        assert_eq!(pb.timestamp, pa.timestamp.wrapping_add(160));
        assert_eq!(pa.ssrc, sender.ssrc());
        assert_eq!(pb.ssrc, sender.ssrc());
        assert_eq!(pb.payload, &[0x7f; 160][..]);
    }

    #[test]
    fn skips_csrcs_extensions_and_padding() {
        let mut data = vec![0xb1, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        data.extend_from_slice(&[1, 2, 3, 4]); // one CSRC
        data.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension, one word
        data.extend_from_slice(&[5, 6, 7]);
        data.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = parse(&data).unwrap();
        assert_eq!(p.payload, &[5, 6, 7][..]);
        assert_eq!(p.ssrc, 9);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort(0)));
        assert_eq!(parse(&[0u8; 12]), Err(RtpError::Version(0)));
        let mut lying_csrcs = vec![0x8f; 12];
        lying_csrcs[0] = 0x8f;
        assert_eq!(parse(&lying_csrcs), Err(RtpError::Truncated));
        let mut ext = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(parse(&ext), Err(RtpError::Truncated));
        ext[0] = 0xa0;
        ext[14] = 0;
        ext[15] = 0;
        assert_eq!(parse(&ext[..12]), Err(RtpError::Padding));
        let bad_pad = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200];
        assert_eq!(parse(&bad_pad), Err(RtpError::Padding));
        for len in 0..40 {
            let noise: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse(&noise);
        }
    }
}
