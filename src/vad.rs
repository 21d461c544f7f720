//! Voice activity and endpointing: turns the callee's 16 kHz audio into utterances.
//!
//! Earshot's neural detector scores each 16 ms frame; hysteresis (a higher score to start
//! than to stay in speech), a minimum run of voiced frames (breaths and clicks are
//! shorter) and a closing silence decide where an utterance starts and ends. A little
//! audio before the onset is kept so the first syllable is not clipped.

use std::collections::VecDeque;

/// Samples per earshot frame at 16 kHz (16 ms).
pub const VAD_FRAME: usize = 256;
const FRAME_MS: f64 = VAD_FRAME as f64 * 1_000.0 / 16_000.0;

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Score at or above which a frame counts as voiced when not in speech.
    pub start_threshold: f32,
    /// Score below which a frame counts as silent once in speech.
    pub stay_threshold: f32,
    /// Voiced time within `onset_window_ms` that opens an utterance.
    pub onset_ms: u32,
    pub onset_window_ms: u32,
    /// Silence that closes an utterance.
    pub end_silence_ms: u32,
    /// Utterances with less voiced time than this are dropped (clicks, breaths).
    pub min_voiced_ms: u32,
    /// Audio kept from before the onset.
    pub preroll_ms: u32,
    /// An utterance is cut here even if the callee keeps talking.
    pub max_utterance_ms: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            start_threshold: 0.5,
            stay_threshold: 0.3,
            onset_ms: 64,
            onset_window_ms: 128,
            end_silence_ms: 480,
            min_voiced_ms: 120,
            preroll_ms: 240,
            max_utterance_ms: 15_000,
        }
    }
}

/// A finished utterance, times in ms of the audio stream.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub start_ms: u64,
    /// End of the last voiced frame.
    pub end_ms: u64,
    pub voiced_ms: u64,
    /// End of the last frame scored at the start threshold (clearly speech).
    pub strong_end_ms: u64,
    pub audio_16k: Vec<f32>,
}

/// What one frame changed.
#[derive(Debug, Clone)]
pub enum VadEvent {
    SpeechStarted { at_ms: u64 },
    SpeechEnded(Utterance),
}

pub struct Endpointer {
    config: EndpointConfig,
    detector: Box<earshot::Detector>,
    pending: Vec<f32>,
    frames_seen: u64,
    /// Recent frames (audio, voiced) while not in speech, for onset and pre-roll.
    recent: VecDeque<(Vec<f32>, bool)>,
    speech: Option<Speech>,
}

struct Speech {
    start_frame: u64,
    last_voiced_frame: u64,
    /// Last frame at or above the start threshold.
    last_strong_frame: u64,
    voiced_frames: u64,
    silent_run: u64,
    audio: Vec<f32>,
}

impl Endpointer {
    pub fn new(config: EndpointConfig) -> Self {
        Self {
            config,
            detector: earshot::Detector::default_boxed(),
            pending: Vec::with_capacity(VAD_FRAME * 2),
            frames_seen: 0,
            recent: VecDeque::new(),
            speech: None,
        }
    }

    fn frames(&self, ms: u32) -> u64 {
        (f64::from(ms) / FRAME_MS).ceil() as u64
    }

    fn frame_ms(frame: u64) -> u64 {
        (frame as f64 * FRAME_MS) as u64
    }

    /// Voiced time of the utterance in progress (0 when the callee is silent).
    pub fn voiced_ms(&self) -> u64 {
        self.speech
            .as_ref()
            .map_or(0, |s| Self::frame_ms(s.voiced_frames))
    }

    pub fn in_speech(&self) -> bool {
        self.speech.is_some()
    }

    /// Feeds 16 kHz samples; returns what happened, in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<VadEvent> {
        self.pending.extend_from_slice(samples);
        let mut events = Vec::new();
        let mut consumed = 0;
        while self.pending.len() - consumed >= VAD_FRAME {
            // Resampling can overshoot full scale a little; earshot wants [-1, 1].
            let frame: Vec<f32> = self.pending[consumed..consumed + VAD_FRAME]
                .iter()
                .map(|s| s.clamp(-1.0, 1.0))
                .collect();
            consumed += VAD_FRAME;
            if let Some(event) = self.push_frame(frame) {
                events.push(event);
            }
        }
        self.pending.drain(..consumed);
        events
    }

    fn push_frame(&mut self, frame: Vec<f32>) -> Option<VadEvent> {
        let score = self.detector.predict_f32(&frame);
        let index = self.frames_seen;
        self.frames_seen += 1;

        let end_frames = self.frames(self.config.end_silence_ms);
        let max_frames = self.frames(self.config.max_utterance_ms);
        if let Some(speech) = &mut self.speech {
            speech.audio.extend_from_slice(&frame);
            if score >= self.config.stay_threshold {
                speech.voiced_frames += 1;
                speech.last_voiced_frame = index;
                speech.silent_run = 0;
                if score >= self.config.start_threshold {
                    speech.last_strong_frame = index;
                }
            } else {
                speech.silent_run += 1;
            }
            let too_long = index - speech.start_frame >= max_frames;
            if speech.silent_run >= end_frames || too_long {
                return self.finish();
            }
            return None;
        }

        let voiced = score >= self.config.start_threshold;
        self.recent.push_back((frame, voiced));
        let keep = self.frames(self.config.preroll_ms.max(self.config.onset_window_ms)) as usize;
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
        let window = self.frames(self.config.onset_window_ms) as usize;
        let voiced_in_window = self
            .recent
            .iter()
            .rev()
            .take(window)
            .filter(|(_, v)| *v)
            .count() as u64;
        if !voiced || voiced_in_window < self.frames(self.config.onset_ms) {
            return None;
        }
        // Onset: the utterance starts at the first voiced frame of the window, and keeps
        // the pre-roll before it.
        let first_voiced_back = self
            .recent
            .iter()
            .rev()
            .take(window)
            .enumerate()
            .filter(|(_, (_, v))| *v)
            .map(|(i, _)| i)
            .max()
            .unwrap_or(0);
        let start_frame = index - first_voiced_back as u64;
        let audio: Vec<f32> = self.recent.drain(..).flat_map(|(f, _)| f).collect();
        self.speech = Some(Speech {
            start_frame,
            last_voiced_frame: index,
            last_strong_frame: index,
            voiced_frames: voiced_in_window,
            silent_run: 0,
            audio,
        });
        Some(VadEvent::SpeechStarted {
            at_ms: Self::frame_ms(start_frame),
        })
    }

    fn finish(&mut self) -> Option<VadEvent> {
        let speech = self.speech.take()?;
        self.detector.reset();
        if speech.voiced_frames < self.frames(self.config.min_voiced_ms) {
            return None;
        }
        Some(VadEvent::SpeechEnded(self.utterance_of(&speech)))
    }

    fn utterance_of(&self, speech: &Speech) -> Utterance {
        // Keep ~200 ms after the last voiced frame: whisper needs the word's tail.
        let tail_frames = self.frames(200);
        let keep_frames = speech.last_voiced_frame + 1 + tail_frames;
        let first_audio_frame = self.frames_seen - (speech.audio.len() / VAD_FRAME) as u64;
        let keep = ((keep_frames.saturating_sub(first_audio_frame)) as usize * VAD_FRAME)
            .min(speech.audio.len());
        Utterance {
            start_ms: Self::frame_ms(speech.start_frame),
            end_ms: Self::frame_ms(speech.last_voiced_frame + 1),
            strong_end_ms: Self::frame_ms(speech.last_strong_frame + 1),
            voiced_ms: Self::frame_ms(speech.voiced_frames),
            audio_16k: speech.audio[..keep].to_vec(),
        }
    }

    /// Silence so far inside the utterance in progress (0 when not in speech).
    pub fn trailing_silence_ms(&self) -> u64 {
        self.speech
            .as_ref()
            .map_or(0, |s| Self::frame_ms(s.silent_run))
    }

    /// Time since the last clearly voiced frame of the utterance in progress: reacts
    /// sooner than `trailing_silence_ms`, which waits for the detector's score to decay.
    pub fn since_strong_ms(&self) -> u64 {
        self.speech.as_ref().map_or(0, |s| {
            Self::frame_ms(self.frames_seen - 1 - s.last_strong_frame)
        })
    }

    /// The utterance in progress as it would end now, if it is long enough to count: lets
    /// the caller start recognizing before the end-of-utterance silence is complete.
    pub fn peek(&self) -> Option<Utterance> {
        let speech = self.speech.as_ref()?;
        (speech.voiced_frames >= self.frames(self.config.min_voiced_ms))
            .then(|| self.utterance_of(speech))
    }

    /// Ends any utterance in progress (the call is over).
    pub fn flush(&mut self) -> Option<Utterance> {
        match self.finish() {
            Some(VadEvent::SpeechEnded(u)) => Some(u),
            _ => None,
        }
    }
}

/// Whether a whole recording holds any utterance the call endpointer would pass to the
/// recognizer. Whisper reads digital silence, hum and DC as words (对, 谢谢), so tools that
/// transcribe a file gate it as calls do.
pub fn holds_speech(audio_16k: &[f32]) -> bool {
    let mut endpointer = Endpointer::new(EndpointConfig::default());
    for chunk in audio_16k.chunks(320) {
        let ended = endpointer
            .push(chunk)
            .into_iter()
            .any(|event| matches!(event, VadEvent::SpeechEnded(_)));
        if ended {
            return true;
        }
    }
    endpointer.flush().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crude voiced sound: a 140 Hz glottal pulse train through two formant-like
    /// resonances, amplitude-modulated into syllables.
    fn synthetic_speech(ms: u32, seed: u32) -> Vec<f32> {
        let n = 16 * ms as usize;
        let f0 = 130.0 + (seed % 5) as f32 * 10.0;
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let syllable = (std::f32::consts::PI * t * 4.0).sin().abs();
                let source: f32 = (1..=12)
                    .map(|h| {
                        let f = f0 * h as f32;
                        let formant = (-(f - 700.0).powi(2) / 2e5).exp()
                            + 0.6 * (-(f - 1_200.0).powi(2) / 3e5).exp();
                        formant * (2.0 * std::f32::consts::PI * f * t).sin()
                    })
                    .sum();
                0.12 * syllable * source
            })
            .collect()
    }

    fn silence(ms: u32) -> Vec<f32> {
        vec![0.0; 16 * ms as usize]
    }

    fn noise(ms: u32, amplitude: f32) -> Vec<f32> {
        let mut state = 12_345u32;
        (0..16 * ms as usize)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((state >> 16) as f32 / 32_768.0 - 1.0) * amplitude
            })
            .collect()
    }

    fn run(audio: &[f32]) -> Vec<Utterance> {
        let mut endpointer = Endpointer::new(EndpointConfig::default());
        let mut out = Vec::new();
        for chunk in audio.chunks(320) {
            for event in endpointer.push(chunk) {
                if let VadEvent::SpeechEnded(u) = event {
                    out.push(u);
                }
            }
        }
        out.extend(endpointer.flush());
        out
    }

    #[test]
    fn silence_and_low_noise_give_no_utterance() {
        assert!(run(&silence(3_000)).is_empty());
        assert!(run(&noise(3_000, 0.003)).is_empty());
    }

    #[test]
    fn only_recordings_with_an_utterance_hold_speech() {
        assert!(!holds_speech(&silence(2_000)));
        assert!(!holds_speech(&vec![0.2; 16 * 2_000]), "DC is not speech");
        let mut audio = silence(300);
        audio.extend(synthetic_speech(900, 5));
        audio.extend(silence(300));
        assert!(holds_speech(&audio));
    }

    #[test]
    fn a_click_is_not_speech() {
        let mut audio = silence(500);
        audio.extend((0..80).map(|i| if i % 2 == 0 { 0.9 } else { -0.9 }));
        audio.extend(silence(1_000));
        assert!(run(&audio).is_empty());
    }

    #[test]
    fn speech_between_silences_is_one_utterance_with_its_bounds() {
        let mut audio = silence(1_000);
        audio.extend(synthetic_speech(1_200, 1));
        audio.extend(silence(1_500));
        let utterances = run(&audio);
        assert_eq!(utterances.len(), 1, "{utterances:?}");
        let u = &utterances[0];
        assert!((900..=1_150).contains(&u.start_ms), "start {}", u.start_ms);
        // The detector scores a window of past frames, so it lets go of speech up to
        // ~0.25 s after the sound stops.
        assert!((2_000..=2_450).contains(&u.end_ms), "end {}", u.end_ms);
        assert!(!u.audio_16k.is_empty());
    }

    #[test]
    fn a_short_pause_does_not_split_but_a_long_one_does() {
        let mut audio = silence(500);
        audio.extend(synthetic_speech(700, 2));
        audio.extend(silence(250));
        audio.extend(synthetic_speech(700, 3));
        audio.extend(silence(1_500));
        audio.extend(synthetic_speech(700, 4));
        audio.extend(silence(1_500));
        let utterances = run(&audio);
        assert_eq!(
            utterances.len(),
            2,
            "{:?}",
            utterances
                .iter()
                .map(|u| (u.start_ms, u.end_ms))
                .collect::<Vec<_>>()
        );
    }
}
