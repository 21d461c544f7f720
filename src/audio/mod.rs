//! Audio plumbing: G.711 μ-law, WAV files, sample-rate conversion, and 李明's clip library.

pub mod clips;
pub mod mulaw;
pub mod resample;
pub mod wav;

/// Telephone audio runs at 8 kHz; whisper wants 16 kHz.
pub const PHONE_RATE: u32 = 8_000;
pub const ASR_RATE: u32 = 16_000;

/// Samples in one 20 ms telephone frame (what Twilio and RTP carry).
pub const FRAME_SAMPLES: usize = 160;
pub const FRAME_MS: u64 = 20;
