//! G.711 μ-law codec (ITU-T G.711), the encoding of Twilio Media Streams and PCMU RTP.
//!
//! Written out rather than pulled in: it is two small functions and a table, and the
//! crates that offer it are unmaintained.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// Encodes one 16-bit linear sample as a μ-law byte.
pub fn encode(sample: i16) -> u8 {
    let mut value = i32::from(sample);
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    value = value.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (31 - (value as u32).leading_zeros())
        .saturating_sub(7)
        .min(7) as i32;
    let mantissa = (value >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Decodes one μ-law byte to a 16-bit linear sample.
pub fn decode(byte: u8) -> i16 {
    DECODE_TABLE[byte as usize]
}

const fn decode_slow(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = ((byte >> 4) & 0x07) as i32;
    let mantissa = (byte & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

static DECODE_TABLE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = decode_slow(i as u8);
        i += 1;
    }
    table
};

pub fn decode_all(bytes: &[u8]) -> Vec<i16> {
    bytes.iter().map(|&b| decode(b)).collect()
}

pub fn encode_all(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| encode(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_decode_then_encode() {
        for byte in 0..=255u8 {
            let sample = decode(byte);
            let again = encode(sample);
            // 0x7F and 0xFF both decode to zero; everything else is exact.
            if sample == 0 {
                assert_eq!(decode(again), 0);
            } else {
                assert_eq!(again, byte, "code {byte:#04x} -> {sample} -> {again:#04x}");
            }
        }
    }

    #[test]
    fn round_trip_error_stays_within_the_segment_step() {
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let back = i32::from(decode(encode(sample)));
            let original = i32::from(sample).clamp(-CLIP, CLIP);
            let step = (original.abs() / 16).max(8);
            assert!(
                (back - original).abs() <= step,
                "{sample} came back as {back} (allowed error {step})"
            );
        }
    }

    #[test]
    fn known_values_match_g711() {
        assert_eq!(encode(0), 0xFF);
        assert_eq!(encode(-1), 0x7F);
        assert_eq!(decode(0x80), 32_124);
        assert_eq!(decode(0x00), -32_124);
        assert_eq!(encode(32_767), 0x80);
    }
}
