//! Sample-rate conversion with rubato: a streaming 8 → 16 kHz upsampler for live call audio,
//! and a whole-buffer converter for WAV files at other rates.

use rubato::{FftFixedIn, Resampler};

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Setup { from: u32, to: u32, reason: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// Upsamples a live 8 kHz stream to 16 kHz, 20 ms at a time, keeping filter state across
/// calls so frame edges do not click.
pub struct StreamUpsampler {
    resampler: FftFixedIn<f32>,
    pending: Vec<f32>,
    chunk: usize,
}

impl StreamUpsampler {
    pub fn new() -> Result<Self, ResampleError> {
        let chunk = super::FRAME_SAMPLES;
        let resampler =
            FftFixedIn::new(8_000, 16_000, chunk, 1, 1).map_err(|e| ResampleError::Setup {
                from: 8_000,
                to: 16_000,
                reason: e.to_string(),
            })?;
        Ok(Self {
            resampler,
            pending: Vec::with_capacity(chunk * 2),
            chunk,
        })
    }

    /// Takes 8 kHz samples (any count) and appends the 16 kHz samples now available to `out`.
    pub fn push(&mut self, samples_8k: &[i16], out: &mut Vec<f32>) {
        self.pending
            .extend(samples_8k.iter().map(|&s| f32::from(s) / 32_768.0));
        while self.pending.len() >= self.chunk {
            let chunk: Vec<f32> = self.pending.drain(..self.chunk).collect();
            match self.resampler.process(&[chunk], None) {
                Ok(mut channels) => out.append(&mut channels[0]),
                // Cannot happen with a correctly sized chunk; dropping 20 ms beats a panic.
                Err(err) => tracing::warn!(%err, "dropped a frame the upsampler refused"),
            }
        }
    }
}

/// Converts a whole mono buffer between sample rates.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let setup = |reason: String| ResampleError::Setup { from, to, reason };
    let chunk = 1024;
    let mut resampler = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1)
        .map_err(|e| setup(e.to_string()))?;
    let delay = resampler.output_delay();
    let expected = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let mut out = Vec::with_capacity(expected + delay + chunk * 2);
    let mut blocks = samples.chunks_exact(chunk);
    for block in &mut blocks {
        let mut produced = resampler
            .process(&[block], None)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        out.append(&mut produced[0]);
    }
    let rest = blocks.remainder();
    // rubato refuses an empty partial block (input an exact multiple of the chunk).
    if !rest.is_empty() {
        let mut tail = resampler
            .process_partial(Some(&[rest]), None)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        out.append(&mut tail[0]);
    }
    // Flush the filter so the last samples come out, then drop the filter delay.
    while out.len() < expected + delay {
        let mut flushed = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        if flushed[0].is_empty() {
            break;
        }
        out.append(&mut flushed[0]);
    }
    let start = delay.min(out.len());
    let end = (start + expected).min(out.len());
    Ok(out[start..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_chunks_convert_too() {
        let samples = vec![0.1f32; 4 * 1024];
        let out = resample(&samples, 8_000, 16_000).expect("an exact multiple of the chunk");
        assert_eq!(out.len(), 8 * 1024);
    }

    fn sine(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    fn dominant_frequency(samples: &[f32], rate: u32) -> f32 {
        // Zero crossings are enough to tell a 440 Hz tone from an aliased one.
        let crossings = samples
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        crossings as f32 * rate as f32 / samples.len() as f32
    }

    #[test]
    fn offline_resampling_keeps_length_and_pitch() {
        let input = sine(44_100, 440.0, 1.0);
        let output = resample(&input, 44_100, 8_000).unwrap();
        assert_eq!(output.len(), 8_000);
        let f = dominant_frequency(&output, 8_000);
        assert!((f - 440.0).abs() < 5.0, "pitch moved to {f} Hz");
    }

    #[test]
    fn stream_upsampler_doubles_the_rate() {
        let input: Vec<i16> = sine(8_000, 300.0, 1.0)
            .iter()
            .map(|s| (s * 32_767.0) as i16)
            .collect();
        let mut upsampler = StreamUpsampler::new().unwrap();
        let mut out = Vec::new();
        for frame in input.chunks(160) {
            upsampler.push(frame, &mut out);
        }
        assert_eq!(out.len(), 16_000);
        let f = dominant_frequency(&out[1_000..], 16_000);
        assert!((f - 300.0).abs() < 5.0, "pitch moved to {f} Hz");
    }
}
