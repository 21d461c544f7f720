//! The call session, free of I/O: events in (callee audio, transcripts, playback marks,
//! hang-up, timer ticks), actions out (play a clip, clear playback, recognize an
//! utterance, record a turn, hang up). Twilio, SIP and the evaluator drive this same code.
//! Time always comes from the caller as milliseconds of call time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::audio::resample::StreamUpsampler;
use crate::dialog::{Next, Repeat, Script, Transition};
use crate::intent::Classification;
use crate::labels::{Intent, Outcome};
use crate::vad::{EndpointConfig, Endpointer, Utterance, VadEvent};

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
    /// The callee went on speaking after an early `Recognize`: its transcript is no longer
    /// wanted, so the recognizer can skip it if it has not started (a late
    /// `on_transcript` for it is ignored either way).
    CancelRecognition { utterance: UtteranceId },
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
    /// How sure the recognizer was of the transcript (0–1); `None` for text not heard.
    pub confidence: Option<f32>,
}

/// Text from the recognizer for one utterance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcript {
    pub text: String,
    /// Whisper's no-speech probability, 0 when unknown.
    pub no_speech_prob: f32,
    /// Mean log probability of the transcript's tokens (whisper's `avg_logprob`); `None`
    /// when the text did not come from the recognizer.
    pub avg_log_prob: Option<f32>,
    /// Probability of the least likely token.
    pub min_token_prob: Option<f32>,
}

impl Transcript {
    /// Text known for certain (reference text, tests).
    pub fn exact(text: &str) -> Transcript {
        Transcript {
            text: text.to_string(),
            ..Transcript::default()
        }
    }

    /// One figure for how sure the recognizer was (0–1): the geometric mean of the token
    /// probabilities, scaled down by the chance that it was no speech at all.
    pub fn confidence(&self) -> Option<f32> {
        let avg = self.avg_log_prob?;
        Some((avg.exp() * (1.0 - self.no_speech_prob)).clamp(0.0, 1.0))
    }
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
    /// Voiced time of callee speech over 李明's clip that counts as a real interruption;
    /// anything shorter is a backchannel (嗯, 好) and the clip plays on.
    pub barge_in_voiced_ms: u64,
    /// After the callee hangs up, how long to wait for transcripts still being decoded
    /// (their words can still decide the outcome).
    pub hangup_grace_ms: Millis,
    /// Time since the last clearly voiced frame after which the utterance so far is sent to
    /// the recognizer early, while the endpointer still waits for the full end-of-utterance
    /// silence; if the callee speaks clearly again the early result is dropped. Saves reply
    /// latency (fixtures: p50 1.4 s → 1.06 s). 0 turns it off.
    pub early_recognition_ms: u64,
    /// Speech shorter than this whose words the rules do not understand is read as the
    /// state's `brief_unclear_means` (dialog.toml), if it has one.
    pub brief_reply_ms: Millis,
    pub endpointing: EndpointConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            silence_timeout_ms: 10_000,
            max_duration_ms: 120_000,
            barge_in_voiced_ms: 600,
            hangup_grace_ms: 20_000,
            early_recognition_ms: 240,
            brief_reply_ms: 2_000,
            endpointing: EndpointConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The dialogue is going on.
    Talking,
    /// The outcome is decided; the last lines are playing, then the hang-up.
    Closing,
    /// The callee hung up; waiting (briefly) for transcripts still in the recognizer.
    CalleeGone {
        give_up_at: Millis,
    },
    Ended,
}

/// An utterance handed to the recognizer and not answered yet.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    speech_start: Millis,
    speech_end: Millis,
    /// The callee spoke while 李明 was talking and did not interrupt him.
    over_playback: bool,
    /// Sent before the utterance ended: its transcript waits until the end confirms it.
    early: bool,
}

/// One call's dialogue state. Create with `Session::new`, call `start`, then feed events
/// and drain `poll_action` after each.
pub struct Session {
    call_id: String,
    script: Arc<Script>,
    config: SessionConfig,
    phase: Phase,
    state: usize,
    actions: VecDeque<Action>,

    upsampler: StreamUpsampler,
    upsampled: Vec<f32>,
    endpointer: Endpointer,
    /// Call time of the first sample fed to the endpointer.
    audio_origin: Option<Millis>,
    /// Set while the callee is speaking: the utterance began during playback.
    speech_over_playback: bool,
    barged_in: bool,

    next_play_id: PlayId,
    /// Plays queued or playing, oldest first.
    playing: VecDeque<PlayId>,
    last_line: Option<String>,
    /// When the line was last quiet and waiting for the callee (silence timer origin).
    idle_since: Millis,

    next_utterance: UtteranceId,
    in_flight: HashMap<UtteranceId, InFlight>,
    /// The early recognition of the utterance in progress, with the speech end it covers.
    early: Option<(UtteranceId, Millis)>,
    /// Transcripts of early recognitions that arrived before their utterance ended.
    early_transcripts: HashMap<UtteranceId, Transcript>,

    pending: Option<Outcome>,
    /// The callee's words that set `pending` (the do-not-call reason if it ends that way).
    pending_words: String,
    /// `pending` is only what 李明 offered: a hang-up does not accept it.
    pending_is_offer: bool,
    resisted: bool,
    unknown_streak: u32,
    outcome: Option<Outcome>,
    do_not_call: bool,
    ended_at: Option<Millis>,
}

impl Session {
    pub fn new(call_id: &str, script: Arc<Script>, config: SessionConfig) -> Self {
        let endpointer = Endpointer::new(config.endpointing.clone());
        let state = script.start;
        Self {
            call_id: call_id.to_string(),
            script,
            phase: Phase::Talking,
            state,
            actions: VecDeque::new(),
            // The upsampler's parameters are constants that rubato accepts; a failure here
            // is a bug in this file, not bad input.
            upsampler: StreamUpsampler::new().expect("fixed 8→16 kHz resampler parameters"),
            upsampled: Vec::with_capacity(640),
            endpointer,
            audio_origin: None,
            speech_over_playback: false,
            barged_in: false,
            next_play_id: 1,
            playing: VecDeque::new(),
            last_line: None,
            idle_since: 0,
            next_utterance: 1,
            in_flight: HashMap::new(),
            early: None,
            early_transcripts: HashMap::new(),
            pending: None,
            pending_words: String::new(),
            pending_is_offer: false,
            resisted: false,
            unknown_streak: 0,
            outcome: None,
            do_not_call: false,
            ended_at: None,
            config,
        }
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The call is connected: the opening line is queued.
    pub fn start(&mut self, now: Millis) {
        tracing::info!(call_id = %self.call_id, now, "call started: opening line");
        self.idle_since = now;
        let opening = self.script.opening.clone();
        for line in opening {
            self.play(line);
        }
    }

    /// Callee audio, 8 kHz 16-bit mono, any length (usually 20 ms frames), in order.
    pub fn on_audio(&mut self, now: Millis, samples_8k: &[i16]) {
        if matches!(self.phase, Phase::Ended | Phase::CalleeGone { .. }) {
            return;
        }
        let chunk_ms = samples_8k.len() as u64 / 8;
        let origin = *self
            .audio_origin
            .get_or_insert(now.saturating_sub(chunk_ms));
        self.upsampled.clear();
        self.upsampler.push(samples_8k, &mut self.upsampled);
        let samples = std::mem::take(&mut self.upsampled);
        let events = self.endpointer.push(&samples);
        self.upsampled = samples;
        for event in events {
            match event {
                VadEvent::SpeechStarted { at_ms } => {
                    self.speech_over_playback = !self.playing.is_empty();
                    self.barged_in = false;
                    tracing::debug!(call_id = %self.call_id, at = origin + at_ms, over_playback = self.speech_over_playback, "callee started speaking");
                }
                VadEvent::SpeechEnded(utterance) => self.utterance_ended(now, origin, utterance),
            }
        }
        self.check_barge_in(now);
        self.recognize_early(origin);
        self.on_tick(now);
    }

    fn recognize_early(&mut self, origin: Millis) {
        let wanted = self.config.early_recognition_ms > 0
            && self.early.is_none()
            && matches!(self.phase, Phase::Talking | Phase::Closing)
            && self.endpointer.since_strong_ms() >= self.config.early_recognition_ms;
        if !wanted {
            return;
        }
        let Some(utterance) = self.endpointer.peek() else {
            return;
        };
        let id = self.next_utterance;
        self.next_utterance += 1;
        let flight = InFlight {
            speech_start: origin + utterance.start_ms,
            speech_end: origin + utterance.end_ms,
            over_playback: self.speech_over_playback && !self.barged_in,
            early: true,
        };
        tracing::debug!(call_id = %self.call_id, utterance = id, end = flight.speech_end, "recognizing early");
        self.in_flight.insert(id, flight);
        self.early = Some((id, origin + utterance.strong_end_ms));
        self.actions.push_back(Action::Recognize {
            utterance: id,
            audio_16k: utterance.audio_16k,
            speech_end: flight.speech_end,
        });
    }

    fn check_barge_in(&mut self, now: Millis) {
        if self.phase != Phase::Talking
            || self.playing.is_empty()
            || !self.endpointer.in_speech()
            || self.endpointer.voiced_ms() < self.config.barge_in_voiced_ms
        {
            return;
        }
        tracing::info!(call_id = %self.call_id, now, "barge-in: the callee talks over the clip, stopping it");
        self.stop_playback(now);
        self.barged_in = true;
    }

    fn utterance_ended(&mut self, now: Millis, origin: Millis, utterance: Utterance) {
        if self.phase != Phase::Talking && self.phase != Phase::Closing {
            self.early = None;
            return;
        }
        if let Some((early_id, early_end)) = self.early.take() {
            if early_end == origin + utterance.strong_end_ms {
                // Nothing was said after the early cut: its transcript stands.
                self.speech_over_playback = false;
                self.barged_in = false;
                if let Some(flight) = self.in_flight.get_mut(&early_id) {
                    flight.early = false;
                }
                if let Some(transcript) = self.early_transcripts.remove(&early_id) {
                    self.on_transcript(now, early_id, transcript);
                }
                return;
            }
            tracing::debug!(call_id = %self.call_id, utterance = early_id, "the callee went on speaking: early result dropped");
            self.in_flight.remove(&early_id);
            self.early_transcripts.remove(&early_id);
            self.actions.push_back(Action::CancelRecognition {
                utterance: early_id,
            });
        }
        let id = self.next_utterance;
        self.next_utterance += 1;
        let flight = InFlight {
            speech_start: origin + utterance.start_ms,
            speech_end: origin + utterance.end_ms,
            over_playback: self.speech_over_playback && !self.barged_in,
            early: false,
        };
        tracing::debug!(call_id = %self.call_id, utterance = id, start = flight.speech_start, end = flight.speech_end, voiced_ms = utterance.voiced_ms, "utterance ended: recognizing");
        self.in_flight.insert(id, flight);
        self.speech_over_playback = false;
        self.barged_in = false;
        self.actions.push_back(Action::Recognize {
            utterance: id,
            audio_16k: utterance.audio_16k,
            speech_end: flight.speech_end,
        });
    }

    /// The recognizer's answer to `Action::Recognize { utterance, .. }`.
    pub fn on_transcript(&mut self, now: Millis, utterance: UtteranceId, transcript: Transcript) {
        if self.in_flight.get(&utterance).is_some_and(|f| f.early) {
            self.early_transcripts.insert(utterance, transcript);
            return;
        }
        let Some(flight) = self.in_flight.remove(&utterance) else {
            tracing::debug!(call_id = %self.call_id, utterance, "transcript for an unknown utterance ignored");
            return;
        };
        if self.phase == Phase::Ended {
            return;
        }
        let classification = self.script.rules.classify(&transcript.text);
        tracing::info!(call_id = %self.call_id, utterance, transcript = %transcript.text, intents = ?classification.intents, "callee said");
        let mut turn = TurnRecord {
            speech_start: flight.speech_start,
            speech_end: flight.speech_end,
            transcript: classification.normalized.clone(),
            intents: classification.intents.clone(),
            reply: Vec::new(),
            confidence: transcript.confidence(),
        };
        match self.phase {
            Phase::Talking => self.answer(now, flight, &classification, &mut turn),
            Phase::Closing => self.heed_while_closing(&classification),
            Phase::CalleeGone { .. } => self.decide_after_hangup(now, &classification),
            Phase::Ended => {}
        }
        self.actions.push_back(Action::Turn(turn));
        if let Phase::CalleeGone { .. } = self.phase {
            self.on_tick(now);
        }
    }

    /// Acts on one understood utterance while the dialogue is going on.
    fn answer(
        &mut self,
        now: Millis,
        flight: InFlight,
        heard: &Classification,
        turn: &mut TurnRecord,
    ) {
        let mut intent = heard.primary();
        let bot_talking = !self.playing.is_empty();
        let filler = matches!(intent, Intent::Acknowledge | Intent::Unknown);
        if filler && (bot_talking || flight.over_playback) {
            // 嗯 / 好 over 李明's voice, or noise: a backchannel, not an answer.
            tracing::debug!(call_id = %self.call_id, ?intent, "backchannel while the bot talks: ignored");
            self.touch(now);
            return;
        }
        if let Some(meant) = self.brief_unclear_reading(intent, &flight, heard) {
            tracing::info!(call_id = %self.call_id, transcript = %heard.normalized, %meant, "brief reply not understood: taken as the usual answer here");
            intent = meant;
            turn.intents = vec![meant];
        }
        if heard
            .intents
            .iter()
            .any(|i| self.script.resistance.contains(i))
        {
            self.resisted = true;
        }
        if bot_talking {
            self.stop_playback(now);
        }
        let before = self.actions.len();
        match intent {
            Intent::AskRepeat => {
                self.unknown_streak = 0;
                let line = match &self.script.states[self.state].repeat {
                    Repeat::Line(line) => Some(line.clone()),
                    Repeat::Last => self.last_line.clone(),
                };
                let line = line.or_else(|| self.script.opening.first().cloned());
                if let Some(line) = line {
                    self.play(line);
                }
            }
            _ => match self.script.transition(self.state, intent).cloned() {
                Some(transition) => {
                    self.unknown_streak = 0;
                    self.follow(now, &transition, &heard.normalized);
                }
                None => {
                    self.unknown_streak += 1;
                    if self.unknown_streak >= 2 {
                        let outcome = self.pending.unwrap_or(Outcome::NoResponse);
                        tracing::info!(call_id = %self.call_id, ?outcome, "second unclear reply in a row: closing");
                        self.close(now, outcome, Vec::new(), &heard.normalized);
                    } else {
                        let state = &self.script.states[self.state];
                        // A brief reply that may have said "not me" gets the state's own
                        // question again (是张强先生吗？), not the pitch.
                        let line = match &state.repeat {
                            Repeat::Line(question)
                                if state.brief_unclear_means.is_some()
                                    && may_be_denial(&heard.normalized) =>
                            {
                                question.clone()
                            }
                            _ => state.reprompt.clone(),
                        };
                        self.play(line);
                    }
                }
            },
        }
        turn.reply = self
            .actions
            .iter()
            .skip(before)
            .filter_map(|a| match a {
                Action::Play { line, .. } => Some(line.clone()),
                _ => None,
            })
            .collect();
        self.touch(now);
    }

    fn follow(&mut self, now: Millis, transition: &Transition, words: &str) {
        let mut lines = transition.say.clone();
        if !self.resisted {
            lines.extend(transition.say_if_no_resistance.iter().cloned());
        }
        self.note_transition(transition, words);
        match transition.next {
            Next::Stay => lines.into_iter().for_each(|l| self.play(l)),
            Next::State(next) => {
                tracing::debug!(call_id = %self.call_id, from = %self.script.states[self.state].name, to = %self.script.states[next].name, "dialog state");
                self.state = next;
                lines.into_iter().for_each(|l| self.play(l));
            }
            Next::End {
                outcome,
                prefer_pending,
            } => {
                let outcome = self.ending(outcome, prefer_pending);
                self.close(now, outcome, lines, words);
            }
        }
    }

    /// What a transition remembers whether or not anyone hears its lines: the outcome it
    /// leaves pending (with the callee's words) and an immediate do-not-call.
    fn note_transition(&mut self, transition: &Transition, words: &str) {
        if let Some(pending) = transition.pending {
            self.pending = Some(pending);
            self.pending_words = words.to_string();
            self.pending_is_offer = transition.pending_is_offer;
        }
        if transition.do_not_call_now {
            self.mark_do_not_call(words);
        }
    }

    /// The outcome an ending transition gives: the pending one when it prefers that.
    fn ending(&self, outcome: Outcome, prefer_pending: bool) -> Outcome {
        if prefer_pending {
            self.pending.unwrap_or(outcome)
        } else {
            outcome
        }
    }

    /// Decides the outcome: says `lines`, then the outcome's closing line, then hangs up.
    fn close(&mut self, now: Millis, outcome: Outcome, lines: Vec<String>, words: &str) {
        tracing::info!(call_id = %self.call_id, now, outcome = %outcome, "outcome decided: closing");
        self.outcome = Some(outcome);
        self.phase = Phase::Closing;
        if outcome.adds_to_do_not_call() {
            let words = if words.is_empty() {
                self.pending_words.clone()
            } else {
                words.to_string()
            };
            self.mark_do_not_call(&words);
        }
        let closing = self.script.closing.get(&outcome).cloned().flatten();
        for line in lines.into_iter().chain(closing) {
            self.play(line);
        }
        if self.playing.is_empty() {
            self.hang_up(now);
        }
    }

    /// The callee speaks during the closing lines: the outcome stands, but a fresh request
    /// not to be called is still honoured.
    fn heed_while_closing(&mut self, heard: &Classification) {
        let refuses = heard.intents.iter().any(|i| {
            matches!(
                i,
                Intent::DoNotCall | Intent::WrittenOnly | Intent::Decline | Intent::HostileHangup
            )
        });
        if refuses {
            self.mark_do_not_call(&heard.normalized);
        }
    }

    /// Whisper garbles brief replies most (是我 → 吃我饺); where the script names what a
    /// brief reply usually is (是我 / 对 / 你说 to "是张强先生吗？"), one it cannot read is
    /// taken as that rather than asked again. Silence and noise (no words) never count.
    fn brief_unclear_reading(
        &self,
        intent: Intent,
        flight: &InFlight,
        heard: &Classification,
    ) -> Option<Intent> {
        let brief =
            flight.speech_end.saturating_sub(flight.speech_start) < self.config.brief_reply_ms;
        (intent == Intent::Unknown
            && brief
            && !heard.normalized.is_empty()
            && !may_be_denial(&heard.normalized))
        .then(|| self.script.states[self.state].brief_unclear_means)
        .flatten()
    }

    /// A transcript that arrives after the callee hung up can still name the outcome
    /// ("挂了", "别再打了" as the last words), and so can a question whose answer would have
    /// set one (怎么销户 → `closing_account`, 以后还打吗 → `do_not_call`): nobody is left to
    /// hear the answer, but the callee said what he wants.
    fn decide_after_hangup(&mut self, now: Millis, heard: &Classification) {
        if self.outcome.is_some() {
            self.heed_while_closing(heard);
            return;
        }
        let Some((intent, transition)) = heard.intents.iter().find_map(|&intent| {
            self.script
                .transition(self.state, intent)
                .filter(|t| intent.is_decisive() || t.pending.is_some())
                .map(|t| (intent, t.clone()))
        }) else {
            return;
        };
        self.note_transition(&transition, &heard.normalized);
        if let Next::End {
            outcome,
            prefer_pending,
        } = transition.next
        {
            let outcome = self.ending(outcome, prefer_pending);
            tracing::info!(call_id = %self.call_id, now, %intent, outcome = %outcome, "last words before the hang-up decide the outcome");
            self.outcome = Some(outcome);
            if outcome.adds_to_do_not_call() {
                self.mark_do_not_call(&heard.normalized);
            }
        }
    }

    /// An utterance recognized outside the session (the evaluator's reference texts,
    /// tests): handled exactly like a transcript of audio heard at those times.
    pub fn on_text(&mut self, now: Millis, speech_start: Millis, speech_end: Millis, text: &str) {
        if matches!(self.phase, Phase::Ended | Phase::CalleeGone { .. }) {
            return;
        }
        let id = self.next_utterance;
        self.next_utterance += 1;
        let over_playback = !self.playing.is_empty();
        self.in_flight.insert(
            id,
            InFlight {
                speech_start,
                speech_end,
                over_playback,
                early: false,
            },
        );
        self.on_transcript(now, id, Transcript::exact(text));
    }

    /// The clip of `Action::Play { play_id, .. }` has finished playing.
    pub fn on_playback_finished(&mut self, now: Millis, play_id: PlayId) {
        let Some(position) = self.playing.iter().position(|&p| p == play_id) else {
            return;
        };
        // Marks come back in order: everything before this one has played too.
        self.playing.drain(..=position);
        if self.playing.is_empty() {
            self.touch(now);
            if self.phase == Phase::Closing {
                self.hang_up(now);
            }
        }
    }

    /// A DTMF key from the callee. The script has no keypad menu; a key press only shows
    /// the callee is there.
    pub fn on_dtmf(&mut self, now: Millis, digit: char) {
        tracing::info!(call_id = %self.call_id, %digit, "DTMF key ignored: the script has no keypad menu");
        self.touch(now);
    }

    /// The callee hung up or the transport dropped. Keep delivering transcripts for
    /// outstanding `Recognize` actions until `is_ended()`; `on_tick` gives up on them after
    /// `hangup_grace_ms`.
    pub fn on_hangup(&mut self, now: Millis) {
        if matches!(self.phase, Phase::Ended | Phase::CalleeGone { .. }) {
            return;
        }
        tracing::info!(call_id = %self.call_id, now, phase = ?self.phase, "callee hung up");
        self.playing.clear();
        if self.phase == Phase::Talking
            && let Some(origin) = self.audio_origin
            && let Some(utterance) = self.endpointer.flush()
        {
            self.utterance_ended(now, origin, utterance);
        }
        self.phase = Phase::CalleeGone {
            give_up_at: now + self.config.hangup_grace_ms,
        };
        self.on_tick(now);
    }

    /// The line failed under the call (the transport lost it without the far end hanging
    /// up): like `on_hangup`, except that a call not yet decided ends as `line_failed`,
    /// which adds no do-not-call, instead of its pending or offered outcome or
    /// `callee_hangup` (nobody hung up, nobody heard the offer). Transcripts still being
    /// decoded are heeded as during the closing lines: a refusal the callee said before the
    /// line failed still puts the number on the list.
    pub fn on_line_failed(&mut self, now: Millis) {
        if matches!(self.phase, Phase::Ended | Phase::CalleeGone { .. }) {
            return;
        }
        if self.outcome.is_none() {
            tracing::info!(call_id = %self.call_id, now, "line failed before an outcome: line_failed");
            self.outcome = Some(Outcome::LineFailed);
        }
        self.on_hangup(now);
    }

    /// Lets timers fire; call at `next_deadline()` or on every audio frame.
    pub fn on_tick(&mut self, now: Millis) {
        match self.phase {
            Phase::Ended => {}
            Phase::CalleeGone { give_up_at } => {
                if self.in_flight.is_empty() || now >= give_up_at {
                    self.finish_after_hangup(now);
                }
            }
            Phase::Closing => {}
            Phase::Talking => {
                if now >= self.config.max_duration_ms {
                    tracing::info!(call_id = %self.call_id, now, "two minutes are up: closing");
                    self.stop_playback(now);
                    self.close(now, Outcome::MaxDuration, Vec::new(), "");
                } else if let Some(deadline) = self.silence_deadline()
                    && now >= deadline
                {
                    let outcome = self.pending.unwrap_or(Outcome::NoResponse);
                    tracing::info!(call_id = %self.call_id, now, outcome = %outcome, "silence after the bot's line: closing");
                    self.close(now, outcome, Vec::new(), "");
                }
            }
        }
    }

    fn finish_after_hangup(&mut self, now: Millis) {
        let outcome = match self.outcome {
            Some(outcome) => outcome,
            None => {
                // Hanging up on an offer (短信代替电话) is no answer to it.
                let pending = self.pending.filter(|_| !self.pending_is_offer);
                let outcome = pending.unwrap_or(Outcome::CalleeHangup);
                if outcome.adds_to_do_not_call() {
                    let words = if pending.is_some() {
                        self.pending_words.clone()
                    } else {
                        String::new()
                    };
                    self.mark_do_not_call(&words);
                }
                outcome
            }
        };
        tracing::info!(call_id = %self.call_id, now, outcome = %outcome, "call over after the callee hung up");
        self.outcome = Some(outcome);
        self.in_flight.clear();
        self.phase = Phase::Ended;
        self.ended_at = Some(now);
    }

    fn silence_deadline(&self) -> Option<Millis> {
        let waiting = self.phase == Phase::Talking
            && self.playing.is_empty()
            && self.in_flight.is_empty()
            && !self.endpointer.in_speech();
        waiting.then_some(self.idle_since + self.config.silence_timeout_ms)
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest call time at which `on_tick` has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        match self.phase {
            Phase::Ended | Phase::Closing => None,
            Phase::CalleeGone { give_up_at } => Some(give_up_at),
            Phase::Talking => {
                let max = self.config.max_duration_ms;
                Some(self.silence_deadline().map_or(max, |d| d.min(max)))
            }
        }
    }

    /// Set once the call has ended (after `HangUp` or `on_hangup`).
    pub fn summary(&self) -> Option<CallSummary> {
        Some(CallSummary {
            outcome: self.outcome?,
            do_not_call: self.do_not_call,
            ended_at: self.ended_at?,
        })
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The outcome once decided (before the closing line has finished).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Whether 李明 has clips queued or playing.
    pub fn is_playing(&self) -> bool {
        !self.playing.is_empty()
    }

    fn play(&mut self, line: String) {
        let play_id = self.next_play_id;
        self.next_play_id += 1;
        self.playing.push_back(play_id);
        tracing::debug!(call_id = %self.call_id, play_id, %line, "play");
        self.last_line = Some(line.clone());
        self.actions.push_back(Action::Play { play_id, line });
    }

    fn stop_playback(&mut self, now: Millis) {
        if !self.playing.is_empty() {
            self.playing.clear();
            self.actions.push_back(Action::StopPlayback);
        }
        self.touch(now);
    }

    fn hang_up(&mut self, now: Millis) {
        tracing::info!(call_id = %self.call_id, now, "last line played: hanging up");
        self.phase = Phase::Ended;
        self.ended_at = Some(now);
        self.actions.push_back(Action::HangUp);
    }

    fn mark_do_not_call(&mut self, words: &str) {
        if self.do_not_call {
            return;
        }
        self.do_not_call = true;
        let reason = if words.is_empty() {
            "hung up or fell silent without a word".to_string()
        } else {
            words.to_string()
        };
        tracing::info!(call_id = %self.call_id, %reason, "do-not-call: recorded now");
        self.actions.push_back(Action::DoNotCall { reason });
    }

    fn touch(&mut self, now: Millis) {
        self.idle_since = self.idle_since.max(now);
    }
}

/// Syllables of a garbled denial or of talk about someone else (不是 → 布施, 没有 → 美有,
/// 打错了 → 打措了, 他不在 → 塔部在): a brief reply that has one is never read as a yes.
const DENIAL_SYLLABLES: &[&str] = &["bu", "mei", "bie", "fei", "wu", "mo", "cuo", "ta"];

/// Whether an unreadable reply might say no (or that the callee is someone else).
fn may_be_denial(normalized: &str) -> bool {
    normalized
        .chars()
        .filter_map(crate::text::fuzzy_syllable)
        .any(|syllable| DENIAL_SYLLABLES.contains(&syllable.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn script() -> Arc<Script> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("script");
        Arc::new(Script::load(&dir).expect("the shipped script loads"))
    }

    /// Drives a session by text, playing every clip for `clip_ms`.
    struct Call {
        session: Session,
        now: Millis,
        log: Vec<Action>,
        playing: VecDeque<PlayId>,
    }

    impl Call {
        fn new() -> Call {
            let mut session = Session::new("test-call", script(), SessionConfig::default());
            session.start(0);
            let mut call = Call {
                session,
                now: 0,
                log: Vec::new(),
                playing: VecDeque::new(),
            };
            call.drain();
            call
        }

        fn drain(&mut self) {
            while let Some(action) = self.session.poll_action() {
                match &action {
                    Action::Play { play_id, .. } => self.playing.push_back(*play_id),
                    Action::StopPlayback => self.playing.clear(),
                    _ => {}
                }
                self.log.push(action);
            }
        }

        /// Lets every queued clip play out (1 s each).
        fn finish_playback(&mut self) {
            while let Some(id) = self.playing.pop_front() {
                self.now += 1_000;
                self.session.on_playback_finished(self.now, id);
                self.drain();
            }
        }

        /// The callee answers 400 ms after the bot stopped talking; returns the lines said.
        fn say(&mut self, text: &str) -> Vec<String> {
            self.finish_playback();
            self.say_now(text)
        }

        /// The callee speaks right now, even over a clip.
        fn say_now(&mut self, text: &str) -> Vec<String> {
            let start = self.now + 400;
            self.now = start + 1_000;
            let mark = self.log.len();
            self.session.on_text(self.now, start, self.now, text);
            self.drain();
            self.lines_since(mark)
        }

        fn lines_since(&self, mark: usize) -> Vec<String> {
            self.log[mark..]
                .iter()
                .filter_map(|a| match a {
                    Action::Play { line, .. } => Some(line.clone()),
                    _ => None,
                })
                .collect()
        }

        fn wait(&mut self, ms: Millis) {
            let until = self.now + ms;
            while let Some(deadline) = self.session.next_deadline() {
                if deadline > until {
                    break;
                }
                self.now = deadline.max(self.now);
                self.session.on_tick(self.now);
                self.drain();
                self.finish_playback();
            }
            self.now = self.now.max(until);
        }

        fn outcome(&self) -> Option<Outcome> {
            self.session.summary().map(|s| s.outcome)
        }

        fn dnc_actions(&self) -> usize {
            self.log
                .iter()
                .filter(|a| matches!(a, Action::DoNotCall { .. }))
                .count()
        }

        fn hung_up(&self) -> bool {
            self.log.iter().any(|a| matches!(a, Action::HangUp))
        }
    }

    fn lines(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn opening_first_then_notice_then_renewal_with_discount() {
        let mut call = Call::new();
        assert!(matches!(&call.log[0], Action::Play { line, .. } if line == "opening"));
        assert_eq!(call.say("是我，你说"), lines(&["notice"]));
        assert_eq!(
            call.say("会续的"),
            lines(&["renew_howto", "discount", "closing_done"])
        );
        assert!(
            !call.hung_up(),
            "no hang-up before the closing line has played"
        );
        call.finish_playback();
        assert!(call.hung_up());
        assert_eq!(call.outcome(), Some(Outcome::SelfService));
        assert_eq!(call.dnc_actions(), 0);
    }

    #[test]
    fn no_promotion_after_any_resistance() {
        let mut call = Call::new();
        assert_eq!(call.say("有事直说，我赶时间"), lines(&["notice_short"]));
        let said = call.say("续吧");
        assert!(!said.contains(&"discount".to_string()), "{said:?}");
        assert_eq!(said, lines(&["renew_howto", "closing_done"]));
    }

    #[test]
    fn refusal_records_do_not_call_before_the_closing_line() {
        let mut call = Call::new();
        call.say("是我");
        assert_eq!(
            call.say("不续了"),
            lines(&["strong_refusal", "closing_recorded"])
        );
        let dnc_at = call
            .log
            .iter()
            .position(|a| matches!(a, Action::DoNotCall { .. }));
        let reason = call.log.iter().find_map(|a| match a {
            Action::DoNotCall { reason } => Some(reason.clone()),
            _ => None,
        });
        assert!(dnc_at.is_some());
        assert_eq!(reason.as_deref(), Some("不续了"));
        call.finish_playback();
        let hangup_at = call.log.iter().position(|a| matches!(a, Action::HangUp));
        assert!(dnc_at < hangup_at);
        let summary = call.session.summary().expect("ended");
        assert_eq!(
            (summary.outcome, summary.do_not_call),
            (Outcome::Declined, true)
        );
    }

    #[test]
    fn decisive_outcomes_follow_precedence() {
        for (words, outcome, dnc) in [
            ("不续了，以后别打了", Outcome::DoNotCall, true),
            ("发短信就行，别打电话", Outcome::WrittenOnly, true),
            ("你们这样很烦，挂了", Outcome::Hostile, true),
            ("我自己后台处理", Outcome::SelfService, false),
        ] {
            let mut call = Call::new();
            call.say("是我");
            call.say(words);
            call.finish_playback();
            let summary = call.session.summary().expect("ended");
            assert_eq!(
                (summary.outcome, summary.do_not_call),
                (outcome, dnc),
                "{words}"
            );
        }
    }

    #[test]
    fn wrong_person_says_goodbye_and_hangs_up() {
        let mut call = Call::new();
        assert_eq!(call.say("你打错了"), lines(&["wrong_person"]));
        call.finish_playback();
        assert_eq!(call.outcome(), Some(Outcome::WrongPerson));
        assert_eq!(call.dnc_actions(), 0);
    }

    #[test]
    fn question_is_answered_and_the_call_goes_on_with_a_pending_outcome() {
        let mut call = Call::new();
        call.say("是我");
        assert_eq!(call.say("怎么能马上关闭账户"), lines(&["qa_close_account"]));
        assert_eq!(call.session.outcome(), None);
        assert_eq!(call.say("好的知道了"), lines(&["closing_done"]));
        call.finish_playback();
        assert_eq!(call.outcome(), Some(Outcome::ClosingAccount));
        assert_eq!(call.dnc_actions(), 1);
    }

    #[test]
    fn pending_outcome_also_ends_a_silent_call() {
        let mut call = Call::new();
        call.say("是我");
        call.say("你们要把我的信息怎么处理");
        call.say("怎么关闭账户");
        call.finish_playback();
        call.wait(11_000);
        assert_eq!(call.outcome(), Some(Outcome::ClosingAccount));
        assert!(call.hung_up());
    }

    #[test]
    fn asking_about_future_calls_puts_the_number_on_the_list_at_once() {
        let mut call = Call::new();
        call.say("是我");
        assert_eq!(call.say("以后还会打这种电话吗"), lines(&["qa_call_again"]));
        assert_eq!(call.dnc_actions(), 1, "recorded before the call ends");
        call.say("行");
        call.finish_playback();
        let summary = call.session.summary().expect("ended");
        assert_eq!(
            (summary.outcome, summary.do_not_call),
            (Outcome::DoNotCall, true)
        );
        assert_eq!(call.dnc_actions(), 1, "recorded once");
    }

    #[test]
    fn second_unclear_reply_in_a_row_closes() {
        let mut call = Call::new();
        call.say("是我");
        assert_eq!(call.say("今天天气不错"), lines(&["question_short"]));
        assert_eq!(call.say("我家猫在睡觉"), lines(&["closing_no_answer"]));
        call.finish_playback();
        assert_eq!(call.outcome(), Some(Outcome::NoResponse));
    }

    #[test]
    fn a_brief_garbled_denial_is_never_a_yes() {
        // Brief replies with the sound of 不 / 没 / 他 that no rule reads (不谢 → 布鞋, 没有 →
        // 美油, 他出去了 → 它出): asked again whom he is, no notice.
        for garbled in ["布鞋", "美油", "它出"] {
            let mut call = Call::new();
            assert_eq!(call.say(garbled), lines(&["identity_check"]), "{garbled}");
            // Still garbled: the call ends without telling a stranger anything.
            assert_eq!(
                call.say(garbled),
                lines(&["closing_no_answer"]),
                "{garbled}"
            );
            assert!(
                !call
                    .log
                    .iter()
                    .any(|a| matches!(a, Action::Play { line, .. } if line == "notice"))
            );
        }
    }

    #[test]
    fn hanging_up_on_the_sms_offer_is_no_answer_to_it() {
        let mut call = Call::new();
        call.say("是我");
        assert_eq!(call.say("我在忙，快点"), lines(&["resist_written"]));
        call.finish_playback();
        call.session.on_hangup(call.now + 500);
        call.drain();
        let summary = call.session.summary().expect("ended");
        assert_eq!(
            (summary.outcome, summary.do_not_call),
            (Outcome::CalleeHangup, true)
        );
        // Silence after the offer lets it stand.
        let mut call = Call::new();
        call.say("是我");
        call.say("我在忙，快点");
        call.finish_playback();
        call.wait(15_000);
        assert_eq!(call.outcome(), Some(Outcome::WrittenOnly));
    }

    #[test]
    fn a_brief_garbled_answer_to_the_identity_question_counts_as_yes() {
        // 1 s of speech read as 吃我饺 (是我，讲 on a bad line): the notice follows.
        let mut call = Call::new();
        assert_eq!(call.say("吃我饺"), lines(&["notice"]));
        let turn = call.log.iter().find_map(|a| match a {
            Action::Turn(turn) => Some(turn.clone()),
            _ => None,
        });
        assert_eq!(turn.map(|t| t.intents), Some(vec![Intent::ConfirmIdentity]));
        // The same words over 2 s are a sentence that was not understood: asked again.
        let mut call = Call::new();
        call.finish_playback();
        let start = call.now + 400;
        call.now = start + 2_500;
        call.session.on_text(call.now, start, call.now, "吃我饺");
        call.drain();
        assert_eq!(
            call.lines_since(0).last().map(String::as_str),
            Some("identity_intro")
        );
        // Only where the script says so: after the notice it is unclear, as before.
        let mut call = Call::new();
        call.say("是我");
        assert_eq!(call.say("吃我饺"), lines(&["question_short"]));
        // No words at all (noise) never count.
        let mut call = Call::new();
        assert_eq!(call.say("。"), lines(&["identity_intro"]));
    }

    #[test]
    fn ask_repeat_replays_the_state_line_or_the_last_line() {
        let mut call = Call::new();
        assert_eq!(call.say("什么？"), lines(&["identity_check"]));
        call.say("是我");
        assert_eq!(call.say("你说啥，没听清"), lines(&["notice_short"]));
        call.say("为什么每年都要打电话");
        assert_eq!(call.say("没听清"), lines(&["qa_why_call"]));
    }

    #[test]
    fn ten_seconds_of_silence_closes_without_an_outcome_claim() {
        let mut call = Call::new();
        call.say("是我");
        call.finish_playback();
        let quiet_from = call.now;
        call.wait(9_000);
        assert_eq!(call.session.outcome(), None, "not before 10 s");
        call.wait(2_000);
        assert_eq!(call.session.outcome(), Some(Outcome::NoResponse));
        let closing_at = call.now;
        assert!(closing_at - quiet_from >= 10_000);
        assert!(call.hung_up());
        assert!(
            call.log
                .iter()
                .any(|a| matches!(a, Action::Play { line, .. } if line == "closing_no_answer"))
        );
    }

    #[test]
    fn two_minutes_close_the_call() {
        let mut call = Call::new();
        call.say("是我");
        for _ in 0..40 {
            if call.session.outcome().is_some() {
                break;
            }
            call.say("为什么要打电话给我");
            call.now += 2_000;
        }
        call.wait(200_000);
        assert_eq!(call.outcome(), Some(Outcome::MaxDuration));
        assert!(
            call.log
                .iter()
                .any(|a| matches!(a, Action::Play { line, .. } if line == "closing_time_up"))
        );
    }

    #[test]
    fn hang_up_before_an_answer_is_callee_hangup_and_do_not_call() {
        let mut call = Call::new();
        call.say("是我");
        call.session.on_hangup(call.now);
        call.drain();
        let summary = call.session.summary().expect("ended");
        assert_eq!(
            (summary.outcome, summary.do_not_call),
            (Outcome::CalleeHangup, true)
        );
        assert!(!call.hung_up(), "the callee hung up, not the bot");
    }

    /// The callee spoke from 5.4 s for `speech_ms`, hung up before the transcript came
    /// back, and the transcript says `text`.
    fn hang_up_while_recognizing(speech_ms: Millis, text: &str) -> Session {
        let mut session = Session::new("t", script(), SessionConfig::default());
        session.start(0);
        session.on_playback_finished(5_000, 1);
        let speech_end = 5_400 + speech_ms;
        session.in_flight.insert(
            99,
            InFlight {
                speech_start: 5_400,
                speech_end,
                over_playback: false,
                early: false,
            },
        );
        session.on_hangup(speech_end + 100);
        assert!(!session.is_ended(), "waits for the transcript");
        session.on_transcript(speech_end + 500, 99, Transcript::exact(text));
        assert!(session.is_ended());
        session
    }

    #[test]
    fn last_words_before_a_hang_up_still_decide() {
        let session = hang_up_while_recognizing(1_000, "烦死了，我挂了");
        assert_eq!(session.summary().map(|s| s.outcome), Some(Outcome::Hostile));
    }

    #[test]
    fn a_question_that_names_an_outcome_counts_as_last_words() {
        let session = hang_up_while_recognizing(2_000, "要是销户的话，要走什么流程？");
        let summary = session.summary().expect("a summary");
        assert_eq!(summary.outcome, Outcome::ClosingAccount);
        assert!(summary.do_not_call);
    }

    #[test]
    fn backchannel_over_a_clip_is_ignored_but_a_real_answer_stops_it() {
        let mut call = Call::new();
        call.say("是我");
        assert!(
            call.say_now("嗯").is_empty(),
            "嗯 over the notice does nothing"
        );
        assert!(!call.log.iter().any(|a| matches!(a, Action::StopPlayback)));
        assert_eq!(
            call.say_now("不用了不续了"),
            lines(&["strong_refusal", "closing_recorded"])
        );
        assert!(call.log.iter().any(|a| matches!(a, Action::StopPlayback)));
    }

    /// A crude voiced sound at 8 kHz (glottal pulses through formant-like peaks), loud
    /// enough for the neural detector to call it speech.
    fn voiced(ms: u64) -> Vec<i16> {
        let n = 8 * ms as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / 8_000.0;
                let syllable = (std::f32::consts::PI * t * 4.0).sin().abs();
                let s: f32 = (1..=12)
                    .map(|h| {
                        let f = 140.0 * h as f32;
                        let formant = (-(f - 700.0).powi(2) / 2e5).exp()
                            + 0.6 * (-(f - 1_200.0).powi(2) / 3e5).exp();
                        formant * (2.0 * std::f32::consts::PI * f * t).sin()
                    })
                    .sum();
                (0.12 * syllable * s * 32_767.0) as i16
            })
            .collect()
    }

    fn feed(session: &mut Session, from: Millis, audio: &[i16]) -> (Millis, Vec<Action>) {
        let mut now = from;
        let mut actions = Vec::new();
        for frame in audio.chunks(160) {
            now += 20;
            session.on_audio(now, frame);
            while let Some(a) = session.poll_action() {
                actions.push(a);
            }
        }
        (now, actions)
    }

    #[test]
    fn real_speech_over_the_opening_barges_in_and_is_recognized() {
        let mut session = Session::new("t", script(), SessionConfig::default());
        session.start(0);
        while session.poll_action().is_some() {}
        let (now, actions) = feed(&mut session, 0, &vec![0; 8 * 500]);
        assert!(actions.is_empty(), "{actions:?}");
        let (now, actions) = feed(&mut session, now, &voiced(1_500));
        assert!(
            actions.iter().any(|a| matches!(a, Action::StopPlayback)),
            "{actions:?}"
        );
        let (_, actions) = feed(&mut session, now, &vec![0; 8 * 1_000]);
        let recognize = actions.iter().find_map(|a| match a {
            Action::Recognize {
                audio_16k,
                speech_end,
                ..
            } => Some((audio_16k.len(), *speech_end)),
            _ => None,
        });
        let (samples, speech_end) = recognize.expect("the utterance goes to the recognizer");
        assert!(samples > 16 * 1_000, "{samples}");
        assert!(
            (1_700..=2_200).contains(&speech_end),
            "speech ended at {speech_end}"
        );
    }

    #[test]
    fn a_short_backchannel_does_not_stop_the_clip() {
        let mut session = Session::new("t", script(), SessionConfig::default());
        session.start(0);
        while session.poll_action().is_some() {}
        let (now, _) = feed(&mut session, 0, &vec![0; 8 * 300]);
        let (now, mut actions) = feed(&mut session, now, &voiced(300));
        actions.extend(feed(&mut session, now, &vec![0; 8 * 1_000]).1);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::StopPlayback)),
            "{actions:?}"
        );
    }

    fn recognize_ids(actions: &[Action]) -> Vec<UtteranceId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Recognize { utterance, .. } => Some(*utterance),
                _ => None,
            })
            .collect()
    }

    /// A session whose opening line has played, 400 ms into the callee's silence.
    fn after_the_opening() -> (Session, Millis) {
        let mut session = Session::new("t", script(), SessionConfig::default());
        session.start(0);
        while session.poll_action().is_some() {}
        session.on_playback_finished(100, 1);
        let (now, _) = feed(&mut session, 0, &vec![0; 8 * 400]);
        (session, now)
    }

    #[test]
    fn early_recognition_answers_once_the_silence_confirms_it() {
        let (mut session, now) = after_the_opening();
        let (now, _) = feed(&mut session, now, &voiced(1_200));
        let (now, actions) = feed(&mut session, now, &vec![0; 8 * 400]);
        let early = recognize_ids(&actions);
        assert_eq!(
            early.len(),
            1,
            "sent early, before the utterance ended: {actions:?}"
        );
        session.on_transcript(now, early[0], Transcript::exact("是我"));
        assert!(
            session.poll_action().is_none(),
            "no answer before the end-of-utterance silence"
        );
        let (_, actions) = feed(&mut session, now, &vec![0; 8 * 400]);
        assert!(
            recognize_ids(&actions).is_empty(),
            "not recognized twice: {actions:?}"
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Play { line, .. } if line == "notice")),
            "{actions:?}"
        );
    }

    #[test]
    fn early_result_is_dropped_when_the_callee_goes_on() {
        let (mut session, now) = after_the_opening();
        let (now, _) = feed(&mut session, now, &voiced(1_000));
        let (now, actions) = feed(&mut session, now, &vec![0; 8 * 400]);
        let early = recognize_ids(&actions);
        assert_eq!(early.len(), 1);
        session.on_transcript(now, early[0], Transcript::exact("嗯"));
        let (now, resumed) = feed(&mut session, now, &voiced(1_000));
        let (now, actions) = feed(&mut session, now, &vec![0; 8 * 800]);
        let fresh = recognize_ids(&actions);
        assert!(
            !fresh.is_empty() && !fresh.contains(&early[0]),
            "{actions:?}"
        );
        let cancelled: Vec<UtteranceId> = resumed
            .iter()
            .chain(&actions)
            .filter_map(|a| match a {
                Action::CancelRecognition { utterance } => Some(*utterance),
                _ => None,
            })
            .collect();
        assert_eq!(
            cancelled,
            vec![early[0]],
            "the early recognition is cancelled"
        );
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Turn(_))),
            "the early 嗯 is not a turn"
        );
        session.on_transcript(
            now,
            *fresh.last().expect("fresh"),
            Transcript::exact("嗯，是我，你说"),
        );
        let mut turns = 0;
        while let Some(action) = session.poll_action() {
            turns += usize::from(matches!(action, Action::Turn(_)));
        }
        assert_eq!(turns, 1);
    }

    /// One sample utterance per intent, for walking every transition.
    fn sample(intent: Intent) -> &'static str {
        match intent {
            Intent::ConfirmIdentity => "是我",
            Intent::WrongPerson => "你打错了",
            Intent::Busy => "我在开会，快点说",
            Intent::WillRenew => "要续费",
            Intent::SelfService => "我自己后台处理",
            Intent::Decline => "不续了",
            Intent::DoNotCall => "以后别联系了",
            Intent::WrittenOnly => "发邮件给我",
            Intent::AskCallAgain => "以后还会打这种电话吗",
            Intent::AskWhyCall => "你们公司为什么每年都要打推销",
            Intent::AskCloseAccount => "怎么能马上关闭账户",
            Intent::AskDataHandling => "你们要把我的信息怎么处理",
            Intent::StopMessages => "你们别再给我发消息了可以吗",
            Intent::HostileHangup => "别浪费我时间",
            Intent::Acknowledge => "知道了",
            Intent::AskRepeat => "什么？",
            Intent::Unknown => "今天天气不错",
        }
    }

    /// Texts that bring a fresh call into each state of the shipped script.
    fn path_to(state: &str) -> &'static [&'static str] {
        match state {
            "identity" => &[],
            "notice" => &["是我"],
            "follow_up" => &["是我", "嗯"],
            other => panic!("a new state `{other}`: add a path to it here"),
        }
    }

    #[test]
    fn every_transition_of_the_script_says_its_lines_and_goes_where_it_says() {
        let script = script();
        for (index, state) in script.states.iter().enumerate() {
            for intent in Intent::ALL {
                let Some(transition) = script.transition(index, *intent) else {
                    continue;
                };
                let mut call = Call::new();
                for text in path_to(&state.name) {
                    call.say(text);
                }
                assert_eq!(call.session.state, index, "path to {}", state.name);
                let heard = script.rules.classify(sample(*intent));
                assert_eq!(heard.primary(), *intent, "sample for {intent} classifies");
                let said = call.say(sample(*intent));
                let mut expected = transition.say.clone();
                if !call.session.resisted {
                    expected.extend(transition.say_if_no_resistance.iter().cloned());
                }
                match &transition.next {
                    Next::End {
                        outcome,
                        prefer_pending,
                    } => {
                        let outcome = if *prefer_pending {
                            call.session.pending.unwrap_or(*outcome)
                        } else {
                            *outcome
                        };
                        expected.extend(script.closing[&outcome].iter().cloned());
                        assert_eq!(said, expected, "{} --{intent}-->", state.name);
                        call.finish_playback();
                        assert_eq!(
                            call.outcome(),
                            Some(outcome),
                            "{} --{intent}-->",
                            state.name
                        );
                        assert!(call.hung_up());
                    }
                    Next::State(next) => {
                        assert_eq!(said, expected, "{} --{intent}-->", state.name);
                        assert_eq!(call.session.state, *next, "{} --{intent}-->", state.name);
                        assert_eq!(call.session.outcome(), None);
                    }
                    Next::Stay => {
                        assert_eq!(said, expected, "{} --{intent}-->", state.name);
                        assert_eq!(call.session.state, index);
                    }
                }
                if let Some(pending) = transition.pending {
                    assert_eq!(call.session.pending, Some(pending));
                }
            }
        }
    }
}
