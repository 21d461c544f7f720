//! Reading WAV files of any common shape (PCM 8–32 bit, float, G.711 μ-law; mono or
//! multi-channel; any rate) into mono samples, with errors that say what is wrong with
//! the file.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Mono audio with its sample rate, samples in [-1, 1].
#[derive(Debug, Clone)]
pub struct MonoAudio {
    pub rate: u32,
    pub samples: Vec<f32>,
}

impl MonoAudio {
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1_000 / u64::from(self.rate.max(1))
    }

    /// The same audio at `rate`.
    pub fn to_rate(&self, rate: u32) -> Result<MonoAudio, WavError> {
        let samples = super::resample::resample(&self.samples, self.rate, rate)
            .map_err(|e| WavError::Convert(e.to_string()))?;
        Ok(MonoAudio { rate, samples })
    }

    /// 16-bit samples, saturating.
    pub fn to_i16(&self) -> Vec<i16> {
        self.samples
            .iter()
            .map(|&s| (s * 32_768.0).clamp(-32_768.0, 32_767.0) as i16)
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable WAV file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path} holds no audio samples")]
    Empty { path: PathBuf },
    #[error("converting the audio failed: {0}")]
    Convert(String),
}

const WAVE_FORMAT_MULAW: u16 = 7;

/// A WAV file's bytes (PCM, float or μ-law) mixed down to mono; the reason when they are not
/// a WAV this reader understands.
pub fn parse_mono(bytes: &[u8]) -> Result<MonoAudio, String> {
    if format_tag(bytes) == Some(WAVE_FORMAT_MULAW) {
        read_mulaw(bytes)
    } else {
        read_with_hound(bytes)
    }
}

/// Reads a WAV file and mixes it down to mono.
pub fn read_mono(path: &Path) -> Result<MonoAudio, WavError> {
    let bytes = std::fs::read(path).map_err(|source| WavError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format_error = |reason: String| WavError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let audio = if format_tag(&bytes) == Some(WAVE_FORMAT_MULAW) {
        read_mulaw(&bytes).map_err(format_error)?
    } else {
        read_with_hound(&bytes).map_err(format_error)?
    };
    if audio.samples.is_empty() {
        return Err(WavError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(audio)
}

fn read_with_hound(bytes: &[u8]) -> Result<MonoAudio, String> {
    let mut reader =
        hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(format!(
            "{} channels at {} Hz",
            spec.channels, spec.sample_rate
        ));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad float samples ({e}); the file may be truncated"))?,
        hound::SampleFormat::Int => {
            let scale = 2f32.powi(i32::from(spec.bits_per_sample) - 1);
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad samples ({e}); the file may be truncated"))?
        }
    };
    Ok(downmix(
        &interleaved,
        spec.channels as usize,
        spec.sample_rate,
    ))
}

fn downmix(interleaved: &[f32], channels: usize, rate: u32) -> MonoAudio {
    let samples = if channels == 1 {
        interleaved.to_vec()
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect()
    };
    MonoAudio { rate, samples }
}

/// The format tag of the `fmt ` chunk, if the file is RIFF/WAVE at all.
fn format_tag(bytes: &[u8]) -> Option<u16> {
    let fmt = find_chunk(bytes, b"fmt ")?;
    Some(u16::from_le_bytes([*fmt.first()?, *fmt.get(1)?]))
}

fn find_chunk<'a>(bytes: &'a [u8], id: &[u8; 4]) -> Option<&'a [u8]> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let body = at + 8;
        if &bytes[at..at + 4] == id {
            // A data chunk cut short by truncation still yields what is there.
            return Some(&bytes[body..(body + size).min(bytes.len())]);
        }
        at = body + size + (size & 1);
    }
    None
}

fn read_mulaw(bytes: &[u8]) -> Result<MonoAudio, String> {
    let fmt = find_chunk(bytes, b"fmt ").ok_or("no fmt chunk")?;
    if fmt.len() < 16 {
        return Err("fmt chunk too short".into());
    }
    let channels = u16::from_le_bytes([fmt[2], fmt[3]]) as usize;
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
    if channels == 0 || rate == 0 || bits != 8 {
        return Err(format!(
            "μ-law with {channels} channels, {rate} Hz, {bits} bits per sample"
        ));
    }
    let data = find_chunk(bytes, b"data").ok_or("no data chunk")?;
    let interleaved: Vec<f32> = data
        .iter()
        .map(|&b| f32::from(super::mulaw::decode(b)) / 32_768.0)
        .collect();
    Ok(downmix(&interleaved, channels, rate))
}

/// The raw μ-law bytes of an 8 kHz mono μ-law WAV (what the phone line carries).
pub fn read_mulaw_bytes(path: &Path) -> Result<(u32, Vec<u8>), WavError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| WavError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let format_error = |reason: &str| WavError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if format_tag(&bytes) != Some(WAVE_FORMAT_MULAW) {
        return Err(format_error("expected G.711 μ-law (format tag 7)"));
    }
    let fmt = find_chunk(&bytes, b"fmt ").ok_or_else(|| format_error("no fmt chunk"))?;
    if fmt.len() < 16 || u16::from_le_bytes([fmt[2], fmt[3]]) != 1 {
        return Err(format_error("expected one channel"));
    }
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let data = find_chunk(&bytes, b"data").ok_or_else(|| format_error("no data chunk"))?;
    if data.is_empty() {
        return Err(WavError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok((rate, data.to_vec()))
}

/// Writes 16-bit mono PCM.
pub fn write_i16(path: &Path, rate: u32, samples: &[i16]) -> Result<(), WavError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let io = |e: hound::Error| WavError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(io)?;
    for &s in samples {
        writer.write_sample(s).map_err(io)?;
    }
    writer.finalize().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_spec(path: &Path, channels: u16, rate: u32, frames: usize) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..frames * channels as usize {
            w.write_sample(((i % 100) as i16 - 50) * 100).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn stereo_44k_is_mixed_down_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        write_spec(&path, 2, 44_100, 44_100);
        let audio = read_mono(&path).unwrap();
        assert_eq!(audio.rate, 44_100);
        assert_eq!(audio.samples.len(), 44_100);
        let phone = audio.to_rate(8_000).unwrap();
        assert_eq!(phone.samples.len(), 8_000);
    }

    #[test]
    fn empty_and_truncated_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.wav");
        write_spec(&empty, 1, 8_000, 0);
        let err = read_mono(&empty).unwrap_err().to_string();
        assert!(err.contains("no audio"), "{err}");

        let full = dir.path().join("full.wav");
        write_spec(&full, 1, 8_000, 8_000);
        let bytes = std::fs::read(&full).unwrap();
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes[..30]).unwrap();
        let err = read_mono(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.wav") && err.contains("not a usable WAV"),
            "{err}"
        );

        let text = dir.path().join("notes.wav");
        std::fs::write(&text, "this is not audio").unwrap();
        assert!(read_mono(&text).is_err());
        let missing = read_mono(&dir.path().join("missing.wav"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn mulaw_wav_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mulaw.wav");
        let payload: Vec<u8> = (0..800)
            .map(|i| super::super::mulaw::encode(((i % 40) * 500) as i16))
            .collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&(4 + 8 + 18 + 8 + payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&18u32.to_le_bytes());
        for field in [7u16, 1] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(&8_000u32.to_le_bytes());
        bytes.extend_from_slice(&8_000u32.to_le_bytes());
        for field in [1u16, 8, 0] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, &bytes).unwrap();

        let audio = read_mono(&path).unwrap();
        assert_eq!((audio.rate, audio.samples.len()), (8_000, 800));
        let (rate, raw) = read_mulaw_bytes(&path).unwrap();
        assert_eq!((rate, raw), (8_000, payload));
    }
}
