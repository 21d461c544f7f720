//! Plays one recorded case through a real `Session` on a virtual clock: the callee's turns
//! go in as 20 ms telephone frames about 400 ms after 李明 stops talking, 李明's clips
//! "play" for their real length, and recognition runs for real. The call clock advances by
//! a modeled recognition time, not the measured one, so the same manifest gives the same
//! outcomes however busy the machine is; reply latency swaps the modeled time back for the
//! measured wall time, so it is still what a caller would hear.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::asr::{AsrError, RecognizerPool};
use crate::audio::clips::ClipLibrary;
use crate::audio::{FRAME_MS, FRAME_SAMPLES, mulaw};
use crate::dialog::Script;
use crate::labels::{Intent, Outcome};
use crate::session::{Action, Millis, PlayId, Session, SessionConfig, Transcript, TurnRecord};

use super::manifest::{CallEnd, Case};

/// The simulator gives up on a call that has not ended by then (`scenario.md`).
pub const CALL_LIMIT_MS: Millis = 150_000;
/// The callee answers this long after 李明's line has finished.
pub const ANSWER_GAP_MS: Millis = 400;
/// In reference-text mode, how long an utterance is taken to last per character, and how
/// long after it the text is handed over (standing in for endpointing).
const TEXT_MS_PER_CHAR: Millis = 220;
const TEXT_ENDPOINT_MS: Millis = 500;

/// How long the simulated call waits for each transcript. A fixed model keeps the call's
/// course (where utterances are cut, which turns are reached) independent of machine load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecognitionClock {
    /// Every transcript arrives this long (call time, ms) after its utterance was sent.
    Modeled(u64),
    /// The measured wall time of each decoding (the course depends on machine load).
    WallTime,
}

/// Near the median decoding time of whisper base (q8_0, 2 cores) on the fixtures' turns
/// with early recognition (measured in the eval report's `recognition_ms`).
pub const MODELED_RECOGNITION_MS: u64 = 450;

impl Default for RecognitionClock {
    fn default() -> Self {
        RecognitionClock::Modeled(MODELED_RECOGNITION_MS)
    }
}

impl RecognitionClock {
    /// Call time a transcript takes to arrive, given the measured wall time.
    fn delay_ms(self, measured_ms: u64) -> u64 {
        match self {
            RecognitionClock::Modeled(ms) => ms,
            RecognitionClock::WallTime => measured_ms,
        }
        .max(1)
    }
}

/// Turns an utterance into text and says how long that took (wall time, ms).
pub trait Transcribe {
    fn transcribe(&self, audio_16k: Vec<f32>) -> Result<(Transcript, u64), AsrError>;
}

impl Transcribe for RecognizerPool {
    fn transcribe(&self, audio_16k: Vec<f32>) -> Result<(Transcript, u64), AsrError> {
        self.recognize_blocking(audio_16k)
    }
}

/// A turn's callee input, ready to feed.
#[derive(Debug, Clone)]
pub enum TurnInput {
    /// 8 kHz samples after the μ-law telephone round trip.
    Audio(Vec<i16>),
    Text(String),
}

/// What happened to one manifest turn.
#[derive(Debug, Clone, Default)]
pub struct TurnOutcome {
    pub reached: bool,
    pub transcript: Option<String>,
    pub intent: Option<Intent>,
    pub reply_latency_ms: Option<u64>,
    /// The recognizer's confidence in the transcript the turn was decided on (0–1).
    pub confidence: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct CaseOutcome {
    pub outcome: Option<Outcome>,
    pub do_not_call: bool,
    pub turns: Vec<TurnOutcome>,
    /// Lines 李明 said, in order (for reading a failed case).
    pub bot_lines: Vec<String>,
    pub call_ms: Millis,
    /// Measured wall time of every decoding in the call (ms).
    pub recognition_ms: Vec<u64>,
}

/// Converts audio at any rate to what the phone line carries: 8 kHz, through μ-law.
pub fn telephone_line(audio_8k: &[i16]) -> Vec<i16> {
    audio_8k
        .iter()
        .map(|&s| mulaw::decode(mulaw::encode(s)))
        .collect()
}

/// Where speech ends in a turn's audio (ms from its start): the end of the last 20 ms
/// window within 35 dB of the loudest one. Reply latency counts from here, as a caller
/// hears it, not from where the endpointer decided.
pub fn speech_end_ms(samples_8k: &[i16]) -> u64 {
    let energies: Vec<f64> = samples_8k
        .chunks(FRAME_SAMPLES)
        .map(|w| {
            w.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / w.len().max(1) as f64
        })
        .collect();
    let peak = energies.iter().copied().fold(0.0, f64::max);
    if peak <= 0.0 {
        return 0;
    }
    let floor = peak * 10f64.powf(-3.5);
    energies
        .iter()
        .rposition(|&e| e >= floor)
        .map_or(0, |i| (i as u64 + 1) * FRAME_MS)
}

/// A transcript on its way back from the recognizer.
struct Pending {
    due: Millis,
    utterance: u64,
    transcript: Transcript,
    wall_minus_clock_ms: i64,
}

struct Playing {
    play_id: PlayId,
    remaining_ms: Millis,
    started_at: Option<Millis>,
}

struct Feeding {
    turn: usize,
    samples: Vec<i16>,
    position: usize,
}

struct TextTurn {
    turn: usize,
    start: Millis,
    end: Millis,
    text: String,
}

/// A turn record with the first play of its reply, its text turn (text mode) and how much
/// longer (ms, may be negative) its recognition really took than the call clock allowed.
struct Record {
    turn: TurnRecord,
    first_reply: Option<PlayId>,
    text_turn: Option<usize>,
    wall_minus_clock_ms: i64,
}

/// The simulated line: the session, 李明's playback and the recognizer's pending answers.
struct Line<'a> {
    session: Session,
    now: Millis,
    clips: &'a ClipLibrary,
    transcriber: Option<&'a dyn Transcribe>,
    clock: RecognitionClock,
    queue: VecDeque<Playing>,
    started: HashMap<PlayId, Millis>,
    transcripts: Vec<Pending>,
    /// While a transcript is being handed over: its wall-minus-clock time, for the records
    /// it produces.
    delivering_skew_ms: i64,
    recognition_ms: Vec<u64>,
    /// Each turn record with the first play of its reply and, for text turns, its index.
    records: Vec<Record>,
    plays_since_turn: Vec<PlayId>,
    text_turn_of_next_record: Option<usize>,
    bot_lines: Vec<String>,
    do_not_call: bool,
    hung_up: bool,
}

impl Line<'_> {
    fn drain(&mut self) -> Result<(), AsrError> {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Play { play_id, line } => {
                    let remaining_ms = self.clips.get(&line).map_or(0, |c| c.duration_ms);
                    self.queue.push_back(Playing {
                        play_id,
                        remaining_ms,
                        started_at: None,
                    });
                    self.plays_since_turn.push(play_id);
                    self.bot_lines.push(line);
                }
                Action::StopPlayback => self.queue.clear(),
                Action::Recognize {
                    utterance,
                    audio_16k,
                    ..
                } => {
                    let transcriber = self.transcriber.ok_or_else(|| {
                        AsrError::Inference(
                            "audio needs the recognizer, which is not loaded".into(),
                        )
                    })?;
                    let (transcript, decode_ms) = transcriber.transcribe(audio_16k)?;
                    let delay = self.clock.delay_ms(decode_ms);
                    self.recognition_ms.push(decode_ms);
                    self.transcripts.push(Pending {
                        due: self.now + delay,
                        utterance,
                        transcript,
                        wall_minus_clock_ms: decode_ms as i64 - delay as i64,
                    });
                }
                Action::CancelRecognition { utterance } => {
                    // Recognition here is done at once; only its result can be dropped.
                    self.transcripts.retain(|p| p.utterance != utterance);
                }
                Action::Turn(record) => {
                    // The session queues a turn's reply just before the turn itself.
                    let first_reply = match record.reply.len() {
                        0 => None,
                        n => self.plays_since_turn.iter().rev().nth(n - 1).copied(),
                    };
                    self.plays_since_turn.clear();
                    let text_turn = self.text_turn_of_next_record.take();
                    self.records.push(Record {
                        turn: record,
                        first_reply,
                        text_turn,
                        wall_minus_clock_ms: self.delivering_skew_ms,
                    });
                }
                Action::DoNotCall { .. } => self.do_not_call = true,
                Action::HangUp => self.hung_up = true,
            }
        }
        Ok(())
    }

    /// Hands over transcripts whose decoding has finished by now.
    fn deliver_transcripts(&mut self) -> Result<bool, AsrError> {
        // Stable: transcripts due at the same time arrive in the order they were sent.
        self.transcripts.sort_by_key(|p| p.due);
        let mut delivered = false;
        while self.transcripts.first().is_some_and(|p| p.due <= self.now) {
            let pending = self.transcripts.remove(0);
            self.delivering_skew_ms = pending.wall_minus_clock_ms;
            self.session
                .on_transcript(self.now, pending.utterance, pending.transcript);
            let drained = self.drain();
            self.delivering_skew_ms = 0;
            drained?;
            delivered = true;
        }
        Ok(delivered)
    }

    fn text(&mut self, turn: TextTurn) -> Result<(), AsrError> {
        self.text_turn_of_next_record = Some(turn.turn);
        self.session
            .on_text(self.now, turn.start, turn.end, &turn.text);
        self.text_turn_of_next_record = None;
        self.drain()
    }

    fn audio(&mut self, frame: &[i16]) -> Result<(), AsrError> {
        self.session.on_audio(self.now, frame);
        self.drain()
    }

    fn hang_up(&mut self) -> Result<(), AsrError> {
        self.session.on_hangup(self.now);
        self.drain()
    }

    /// 李明's clip plays on for one frame.
    fn play_frame(&mut self) -> Result<(), AsrError> {
        let Some(front) = self.queue.front_mut() else {
            return Ok(());
        };
        let frame_start = self.now - FRAME_MS;
        if front.started_at.is_none() {
            front.started_at = Some(frame_start);
            self.started.insert(front.play_id, frame_start);
        }
        front.remaining_ms = front.remaining_ms.saturating_sub(FRAME_MS);
        if front.remaining_ms == 0 {
            let done = front.play_id;
            self.queue.pop_front();
            self.session.on_playback_finished(self.now, done);
            self.drain()?;
        }
        Ok(())
    }
}

/// The recognizer a case runs with, and how the call clock waits for it.
#[derive(Clone, Copy)]
pub struct Recognition<'a> {
    /// Required for audio turns.
    pub transcriber: Option<&'a dyn Transcribe>,
    pub clock: RecognitionClock,
}

/// Runs `case` with `inputs` (one per turn).
pub fn run_case(
    case: &Case,
    inputs: &[TurnInput],
    script: &Arc<Script>,
    clips: &ClipLibrary,
    recognition: Recognition,
    config: &SessionConfig,
) -> Result<CaseOutcome, AsrError> {
    let mut line = Line {
        session: Session::new(&case.name, Arc::clone(script), config.clone()),
        now: 0,
        clips,
        transcriber: recognition.transcriber,
        clock: recognition.clock,
        queue: VecDeque::new(),
        started: HashMap::new(),
        transcripts: Vec::new(),
        delivering_skew_ms: 0,
        recognition_ms: Vec::new(),
        records: Vec::new(),
        plays_since_turn: Vec::new(),
        text_turn_of_next_record: None,
        bot_lines: Vec::new(),
        do_not_call: false,
        hung_up: false,
    };
    line.session.start(0);
    line.drain()?;

    let mut windows: Vec<Option<(Millis, Millis)>> = vec![None; inputs.len()];
    let mut speech_ends: Vec<Option<Millis>> = vec![None; inputs.len()];
    let mut next_turn = 0;
    let mut feeding: Option<Feeding> = None;
    let mut text_turn: Option<TextTurn> = None;
    let mut quiet_since: Millis = 0;
    let mut last_input_end: Option<Millis> = None;
    let hangs_up_after = |turn: usize| case.end == CallEnd::Hangup && turn + 1 == inputs.len();

    'call: while !line.session.is_ended() && !line.hung_up && line.now < CALL_LIMIT_MS {
        if line.deliver_transcripts()? {
            quiet_since = line.now;
        }
        if let Some(turn) = text_turn.take_if(|t| line.now >= t.end + TEXT_ENDPOINT_MS) {
            let last = hangs_up_after(turn.turn);
            line.text(turn)?;
            quiet_since = line.now;
            if last {
                line.hang_up()?;
                break 'call;
            }
        }
        if line.session.is_ended() || line.hung_up {
            break;
        }

        // The callee's next turn starts once 李明 has been quiet for a moment.
        let busy = !line.queue.is_empty()
            || !line.transcripts.is_empty()
            || feeding.is_some()
            || text_turn.is_some();
        if busy {
            quiet_since = line.now;
        }
        let endpointed = last_input_end.is_none_or(|end| line.now >= end + 900);
        if !busy
            && endpointed
            && next_turn < inputs.len()
            && line.now >= quiet_since + ANSWER_GAP_MS
        {
            let now = line.now;
            match &inputs[next_turn] {
                TurnInput::Audio(samples) => {
                    feeding = Some(Feeding {
                        turn: next_turn,
                        samples: samples.clone(),
                        position: 0,
                    });
                    windows[next_turn] = Some((now, now + samples.len() as u64 / 8));
                    speech_ends[next_turn] = Some(now + speech_end_ms(samples));
                }
                TurnInput::Text(text) => {
                    let length = (text.chars().count() as Millis * TEXT_MS_PER_CHAR).max(400);
                    text_turn = Some(TextTurn {
                        turn: next_turn,
                        start: now,
                        end: now + length,
                        text: text.clone(),
                    });
                    windows[next_turn] = Some((now, now + length));
                    speech_ends[next_turn] = Some(now + length);
                    last_input_end = Some(now + length);
                }
            }
            next_turn += 1;
        }

        // One 20 ms frame of callee audio (or of the line's silence).
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let mut finished_turn = None;
        if let Some(f) = feeding.as_mut() {
            let end = (f.position + FRAME_SAMPLES).min(f.samples.len());
            frame[..end - f.position].copy_from_slice(&f.samples[f.position..end]);
            f.position = end;
            if f.position >= f.samples.len() {
                finished_turn = Some(f.turn);
            }
        }
        line.now += FRAME_MS;
        line.audio(&frame)?;
        if let Some(turn) = finished_turn {
            feeding = None;
            last_input_end = Some(line.now);
            if hangs_up_after(turn) {
                line.hang_up()?;
                break 'call;
            }
        }
        line.play_frame()?;
    }

    // After a hang-up: transcripts still being decoded can decide the outcome.
    while !line.session.is_ended() && line.now < CALL_LIMIT_MS + 10_000 {
        line.now += FRAME_MS;
        line.deliver_transcripts()?;
        line.session.on_tick(line.now);
        line.drain()?;
    }

    let turns = attribute(&line.records, &windows, &speech_ends, &line.started);
    let summary = line.session.summary();
    Ok(CaseOutcome {
        outcome: summary.as_ref().map(|s| s.outcome),
        do_not_call: summary.as_ref().map_or(line.do_not_call, |s| s.do_not_call),
        turns,
        bot_lines: line.bot_lines,
        call_ms: line.now,
        recognition_ms: line.recognition_ms,
    })
}

/// Gives each manifest turn the session's records of the callee speaking during it.
fn attribute(
    records: &[Record],
    windows: &[Option<(Millis, Millis)>],
    speech_ends: &[Option<Millis>],
    started: &HashMap<PlayId, Millis>,
) -> Vec<TurnOutcome> {
    let mut per_turn: Vec<Vec<&Record>> = vec![Vec::new(); windows.len()];
    for entry in records {
        let record = &entry.turn;
        let turn = entry.text_turn.or_else(|| {
            windows
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    let (start, end) = (*w)?;
                    let overlap = record.speech_end.min(end + 200) as i64
                        - record.speech_start.max(start) as i64;
                    (overlap > 0).then_some((i, overlap))
                })
                .max_by_key(|&(_, overlap)| overlap)
                .map(|(i, _)| i)
        });
        if let Some(turn) = turn {
            per_turn[turn].push(entry);
        }
    }
    windows
        .iter()
        .zip(per_turn)
        .zip(speech_ends)
        .map(|((window, entries), speech_end)| {
            if entries.is_empty() {
                return TurnOutcome {
                    reached: window.is_some(),
                    ..TurnOutcome::default()
                };
            }
            let chosen = entries
                .iter()
                .find(|r| r.turn.intents.first().is_some_and(|i| i.is_decisive()))
                .or_else(|| entries.iter().find(|r| !r.turn.reply.is_empty()))
                .unwrap_or(&entries[0]);
            let record = &chosen.turn;
            let transcript: String = entries.iter().map(|r| r.turn.transcript.as_str()).collect();
            TurnOutcome {
                reached: true,
                transcript: Some(transcript),
                intent: record.intents.first().copied(),
                reply_latency_ms: chosen
                    .first_reply
                    .and_then(|id| started.get(&id))
                    .map(|&at| {
                        let on_clock =
                            at.saturating_sub(speech_end.unwrap_or(record.speech_end)) as i64;
                        (on_clock + chosen.wall_minus_clock_ms).max(0) as u64
                    }),
                confidence: record.confidence,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_end_ignores_the_quiet_tail() {
        let mut audio = vec![0i16; 8 * 300];
        audio.extend((0..8 * 1_000).map(|i| ((i as f32 * 0.3).sin() * 8_000.0) as i16));
        audio.extend((0..8 * 500).map(|i| if i % 2 == 0 { 3 } else { -3 }));
        assert_eq!(speech_end_ms(&audio), 1_300);
        assert_eq!(speech_end_ms(&[0; 800]), 0);
    }
}
