//! `renewal-bot eval`: runs a manifest of recorded calls through the live call-session code
//! and reports intents, outcomes, do-not-call, CER and reply latency (`scenario.md`).

pub mod manifest;
pub mod report;
pub mod simulate;

use std::path::PathBuf;
use std::sync::Arc;

use crate::audio::clips::ClipLibrary;
use crate::audio::wav;
use crate::dialog::Script;
use crate::session::SessionConfig;

use manifest::Manifest;
use report::{CaseReport, Report, TurnReport};
use simulate::{Recognition, RecognitionClock, Transcribe, TurnInput};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("case `{case}` turn {turn}: {source}")]
    Audio {
        case: String,
        turn: usize,
        source: wav::WavError,
    },
    #[error("case `{case}`: recognition failed: {source}")]
    Recognition {
        case: String,
        source: crate::asr::AsrError,
    },
    #[error(
        "the script says lines that have no clip in the clip library: {0} (re-render the clips: tools/tts/render_clips.py)"
    )]
    MissingClips(String),
}

/// How to run an evaluation.
pub struct EvalOptions<'a> {
    /// Feed every turn's reference text instead of its audio.
    pub text_only: bool,
    pub session: SessionConfig,
    /// How long the call clock waits for each transcript.
    pub clock: RecognitionClock,
    /// Called after each case (progress display).
    pub on_case_done: &'a dyn Fn(&CaseReport),
}

/// Loads each turn's input: audio converted to the telephone line (8 kHz, μ-law), or text.
fn inputs_of(case: &manifest::Case, text_only: bool) -> Result<Vec<TurnInput>, EvalError> {
    case.turns
        .iter()
        .enumerate()
        .map(|(index, turn)| {
            let use_text = text_only && turn.text.is_some();
            match (&turn.audio, &turn.text) {
                (Some(path), _) if !use_text => {
                    let audio = wav::read_mono(path)
                        .and_then(|a| a.to_rate(crate::audio::PHONE_RATE))
                        .map_err(|source| EvalError::Audio {
                            case: case.name.clone(),
                            turn: index + 1,
                            source,
                        })?;
                    Ok(TurnInput::Audio(simulate::telephone_line(&audio.to_i16())))
                }
                (_, text) => Ok(TurnInput::Text(text.clone().unwrap_or_default())),
            }
        })
        .collect()
}

/// Checks that every line the script can say has a clip (durations drive the clock).
pub fn check_clips(script: &Script, clips: &ClipLibrary) -> Result<(), EvalError> {
    let mut missing: Vec<&str> = script
        .spoken_lines()
        .into_iter()
        .filter(|id| clips.get(id).is_none())
        .collect();
    missing.sort_unstable();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EvalError::MissingClips(missing.join(", ")))
    }
}

/// Runs every case of `manifest`. Audio is read up front so a bad file fails fast.
pub fn run(
    manifest: &Manifest,
    script: &Arc<Script>,
    clips: &ClipLibrary,
    transcriber: Option<&dyn Transcribe>,
    options: &EvalOptions,
) -> Result<Report, EvalError> {
    check_clips(script, clips)?;
    let inputs = manifest
        .cases
        .iter()
        .map(|case| inputs_of(case, options.text_only))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cases = Vec::with_capacity(manifest.cases.len());
    for (case, inputs) in manifest.cases.iter().zip(&inputs) {
        let span = tracing::info_span!("eval_case", call_id = %case.name);
        let _entered = span.enter();
        let recognition = Recognition {
            transcriber,
            clock: options.clock,
        };
        let result = simulate::run_case(case, inputs, script, clips, recognition, &options.session)
            .map_err(|source| EvalError::Recognition {
                case: case.name.clone(),
                source,
            })?;
        let turns = case
            .turns
            .iter()
            .zip(&result.turns)
            .map(|(turn, got)| TurnReport {
                audio: turn.audio_name.clone(),
                text: turn.text.clone(),
                transcript: got.transcript.clone(),
                expected_intent: turn
                    .intents
                    .iter()
                    .map(|i| i.as_str().to_string())
                    .collect(),
                intent: got.intent.map(|i| i.as_str().to_string()),
                reached: got.reached,
                reply_latency_ms: got.reply_latency_ms,
                confidence: got.confidence,
                audio_fed: turn.audio.is_some() && !(options.text_only && turn.text.is_some()),
            })
            .collect();
        let report = CaseReport {
            name: case.name.clone(),
            expected_outcome: case.outcome.as_str().to_string(),
            outcome: result.outcome.map(|o| o.as_str().to_string()),
            expected_dnc: case.dnc,
            dnc: result.do_not_call,
            turns,
            bot_lines: result.bot_lines,
            recognition_ms: result.recognition_ms,
        };
        (options.on_case_done)(&report);
        cases.push(report);
    }
    Ok(Report::from_cases(cases))
}

/// Where `eval` finds things unless told otherwise.
pub fn default_manifest() -> PathBuf {
    PathBuf::from("tests/fixtures/calls.toml")
}
