//! The call session, free of I/O: events in (callee audio, transcripts, playback marks,
//! hang-up, timer ticks), actions out (play a clip, clear playback, recognize an
//! utterance, record a turn, hang up). Twilio, SIP and the evaluator drive this same code.
//! Time always comes from the caller as milliseconds of call time.

// API skeleton: the implementation lands with the core issue.

use crate::labels::{Intent, Outcome};

/// Milliseconds since the call started (call time, not wall time).
pub type Millis = u64;

/// Identifies one `Action::Play`, echoed back in `Session::on_playback_finished`.
pub type PlayId = u64;

/// Identifies one `Action::Recognize`, echoed back in `Session::on_transcript`.
pub type UtteranceId = u64;

/// What the session asks its driver to do. Drain with `Session::poll_action`.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue the clip of this line after anything already queued; report
    /// `on_playback_finished(play_id)` once its last frame has played (Twilio: its mark
    /// came back).
    Play { play_id: PlayId, line: String },
    /// Barge-in: drop everything playing or queued at once (Twilio: `clear`). Plays
    /// dropped this way need no `on_playback_finished`; one arriving anyway is ignored.
    StopPlayback,
    /// Transcribe this utterance (16 kHz mono f32) and report `on_transcript`.
    Recognize {
        utterance: UtteranceId,
        audio_16k: Vec<f32>,
        /// Call time at which the callee stopped speaking.
        speech_end: Millis,
    },
    /// A callee utterance was understood and acted on; store it.
    Turn(TurnRecord),
    /// Put the callee's number on the permanent do-not-call list now.
    DoNotCall { reason: String },
    /// Everything has been said and has played: hang up. The session is over.
    HangUp,
}

/// One processed callee utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    /// Call time when the callee started and stopped speaking.
    pub speech_start: Millis,
    pub speech_end: Millis,
    /// Normalized transcript (simplified Chinese).
    pub transcript: String,
    /// Every label the rules found; the first is the one reported for the turn.
    pub intents: Vec<Intent>,
    /// The lines the bot answered with, in order.
    pub reply: Vec<String>,
}

/// Text from the recognizer for one utterance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcript {
    pub text: String,
    /// Whisper's no-speech probability, 0 when unknown.
    pub no_speech_prob: f32,
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub outcome: Outcome,
    pub do_not_call: bool,
    pub ended_at: Millis,
}

/// Tunable timings of a call; defaults follow `scenario.md`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Silence after the bot's last line before the call is closed.
    pub silence_timeout_ms: Millis,
    /// Total call length after which the bot closes.
    pub max_duration_ms: Millis,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            silence_timeout_ms: 10_000,
            max_duration_ms: 120_000,
        }
    }
}

/// One call's dialogue state. Create with `Session::new`, call `start`, then feed events
/// and drain `poll_action` after each.
pub struct Session {
    _private: (),
}

impl Session {
    pub fn new(
        call_id: &str,
        script: std::sync::Arc<crate::dialog::Script>,
        config: SessionConfig,
    ) -> Self {
        let _ = (call_id, script, config);
        todo!("core issue")
    }
    /// The call is connected: the opening line is queued.
    pub fn start(&mut self, now: Millis) {
        let _ = now;
        todo!()
    }
    /// Callee audio, 8 kHz 16-bit mono, any length (usually 20 ms frames), in order.
    pub fn on_audio(&mut self, now: Millis, samples_8k: &[i16]) {
        let _ = (now, samples_8k);
        todo!()
    }
    /// The recognizer's answer to `Action::Recognize { utterance, .. }`.
    pub fn on_transcript(&mut self, now: Millis, utterance: UtteranceId, transcript: Transcript) {
        let _ = (now, utterance, transcript);
        todo!()
    }
    /// The clip of `Action::Play { play_id, .. }` has finished playing.
    pub fn on_playback_finished(&mut self, now: Millis, play_id: PlayId) {
        let _ = (now, play_id);
        todo!()
    }
    /// A DTMF key from the callee.
    pub fn on_dtmf(&mut self, now: Millis, digit: char) {
        let _ = (now, digit);
        todo!()
    }
    /// The callee hung up or the transport dropped. Ends the session.
    pub fn on_hangup(&mut self, now: Millis) {
        let _ = now;
        todo!()
    }
    /// Lets timers fire; call at `next_deadline()` or on every audio frame.
    pub fn on_tick(&mut self, now: Millis) {
        let _ = now;
        todo!()
    }
    pub fn poll_action(&mut self) -> Option<Action> {
        todo!()
    }
    /// The earliest call time at which `on_tick` has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        todo!()
    }
    /// Set once the call has ended (after `HangUp` or `on_hangup`).
    pub fn summary(&self) -> Option<CallSummary> {
        todo!()
    }
    pub fn is_ended(&self) -> bool {
        todo!()
    }
}
