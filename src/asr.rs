//! Speech recognition: whisper.cpp (through whisper-rs) with the parameters measured for
//! telephone Mandarin, behind a bounded worker pool so concurrent calls queue instead of
//! fighting over the CPU cores.

pub mod integrity;
mod short_answers;

pub use short_answers::{Fit, ShortAnswer, ShortAnswers};

use crate::dialog::Script;
use crate::labels::Intent;
use crate::session::Transcript;
use crate::text;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
    WhisperTokenId,
};

/// Without this prompt whisper often writes traditional characters.
/// The first sentence keeps whisper in simplified Mandarin; the rest are the short answers
/// a callee gives on such a call, which whisper base otherwise mishears badly (measured in
/// models/README.md / the core issue's note).
pub const DEFAULT_PROMPT: &str =
    "以下是普通话的电话对话。是我。对，我是。嗯，好的。续费。不续了。别再打了。发短信就行。";

/// Texts whisper is known to invent on noise or silence (subtitle credits and the like).
const HALLUCINATIONS: &[&str] = &[
    "字幕",
    "订阅",
    "点赞",
    "转发",
    "打赏",
    "明镜",
    "栏目",
    "感谢观看",
    "谢谢观看",
    "谢谢收看",
    "请不吝",
    "amaraorg",
    "以下是普通话",
];

#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    #[error("whisper model not found at {path}; run `models/fetch` (or pass --model PATH)")]
    ModelMissing { path: PathBuf },
    #[error("cannot load the whisper model {path}: {reason}; re-run `models/fetch` to restore it")]
    ModelLoad { path: PathBuf, reason: String },
    #[error("the whisper model {path} is damaged: {reason}; re-run `models/fetch` to restore it")]
    ModelCorrupt { path: PathBuf, reason: String },
    #[error("recognition failed: {0}")]
    Inference(String),
    #[error("the recognizer is overloaded ({0} utterances queued); try fewer simultaneous calls")]
    Overloaded(usize),
    #[error("the recognizer has shut down")]
    Closed,
}

/// The intent the dialogue's rules read in a transcript: short utterances read as nothing
/// are checked against the expected short answers, and short ones read as deciding the
/// call are read again without the domain prompt.
#[derive(Clone)]
pub struct TextCheck(Arc<dyn Fn(&str) -> Intent + Send + Sync>);

impl TextCheck {
    pub fn new(check: impl Fn(&str) -> Intent + Send + Sync + 'static) -> TextCheck {
        TextCheck(Arc::new(check))
    }
}

impl std::fmt::Debug for TextCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextCheck")
    }
}

#[derive(Debug, Clone)]
pub struct AsrConfig {
    pub model: PathBuf,
    /// Recognition workers; each decodes one utterance at a time.
    pub workers: usize,
    /// CPU threads per worker.
    pub threads_per_worker: usize,
    /// Utterances allowed to wait for a worker before new ones are refused.
    pub queue_limit: usize,
    pub prompt: String,
    /// Segments whisper itself rates as this likely to be no speech are dropped.
    pub no_speech_threshold: f32,
    /// Smallest encoder context (in 20 ms frames) for short utterances: a context sized to
    /// the audio is fast, but one-word answers come out better with more.
    pub min_audio_ctx: usize,
    /// What a transcript means to the dialogue; without it every transcript is taken as
    /// it is.
    pub reading: Option<TextCheck>,
    /// Replies a callee commonly gives: an utterance shorter than `short_below_ms` whose
    /// transcript is not understood is scored against them (see `short_answers`) and read
    /// as the best one that fits the audio within its margin of whisper's free transcript.
    pub short_answers: Vec<ShortAnswer>,
    pub short_below_ms: u64,
    /// A longer utterance the rules cannot read whose confidence is below this is decoded
    /// again with beam search (`RENEWAL_BOT_ASR_SECOND_READING`); `None`: never.
    pub second_reading_below: Option<f32>,
}

/// How much less likely (log probability) than whisper's own garbled transcript a harmless
/// short answer (是我, 好的, 什么) may be and still be taken. Measured on the fixtures' short
/// utterances: right readings came within 1.8, wrong ones from 2.4 on.
pub const SHORT_ANSWER_MARGIN: f32 = 2.0;

impl AsrConfig {
    pub fn default_model_path() -> PathBuf {
        PathBuf::from("models/ggml-base-q8_0.bin")
    }

    /// One worker using every core: two whisper runs at once on two cores are far slower
    /// than two in a row.
    pub fn for_model(model: PathBuf) -> AsrConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AsrConfig {
            model,
            workers: 1,
            threads_per_worker: cores.min(8),
            queue_limit: 64,
            prompt: DEFAULT_PROMPT.to_string(),
            no_speech_threshold: 0.8,
            min_audio_ctx: 512,
            reading: None,
            short_below_ms: 2_000,
            short_answers: Vec::new(),
            second_reading_below: None,
        }
    }

    /// The configuration the bot runs with: `for_model`, plus the script's intent rules to
    /// judge short transcripts and its short answers to check them against.
    pub fn for_script(model: PathBuf, script: &Arc<Script>) -> AsrConfig {
        let mut config = AsrConfig::for_model(model);
        // Reading a garbled reply as 不续了 or 别打了 would end the call on a guess: answers
        // that decide the outcome must fit the audio better than the free transcript.
        config.short_answers = script
            .rules
            .short_answers
            .iter()
            .map(|text| {
                let decisive = script.rules.classify(text).primary().is_decisive();
                ShortAnswer {
                    text: text.clone(),
                    margin: if decisive { 0.0 } else { SHORT_ANSWER_MARGIN },
                    decisive,
                }
            })
            .collect();
        let script = Arc::clone(script);
        config.reading = Some(TextCheck::new(move |text| {
            script.rules.classify(text).primary()
        }));
        config
    }

    /// Tuning knobs from the environment (`RENEWAL_BOT_ASR_PROMPT`,
    /// `RENEWAL_BOT_ASR_MIN_CTX`, `RENEWAL_BOT_ASR_SHORT_MARGIN` for the harmless answers,
    /// `RENEWAL_BOT_ASR_SECOND_READING`), for measuring alternatives without a rebuild.
    pub fn with_env_overrides(mut self) -> AsrConfig {
        if let Ok(prompt) = std::env::var("RENEWAL_BOT_ASR_PROMPT") {
            self.prompt = prompt;
        }
        if let Some(ctx) = std::env::var("RENEWAL_BOT_ASR_MIN_CTX")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            self.min_audio_ctx = ctx;
        }
        if let Some(margin) = std::env::var("RENEWAL_BOT_ASR_SHORT_MARGIN")
            .ok()
            .and_then(|v| v.parse::<f32>().ok())
        {
            for answer in self.short_answers.iter_mut().filter(|a| !a.decisive) {
                answer.margin = margin;
            }
        }
        if let Some(below) = std::env::var("RENEWAL_BOT_ASR_SECOND_READING")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            self.second_reading_below = Some(below);
        }
        self
    }
}

/// Turns one utterance into text.
pub trait Recognizer: Send + Sync {
    fn transcribe(&self, audio_16k: &[f32]) -> Result<Transcript, AsrError>;
}

/// One whisper decoder with its own state; not shared between threads.
pub struct WhisperEngine {
    model: Arc<WhisperModel>,
    state: WhisperState,
    config: AsrConfig,
    short_answers: ShortAnswers,
}

/// The loaded model, shared by every worker.
pub struct WhisperModel {
    context: WhisperContext,
}

impl WhisperModel {
    pub fn load(path: &Path) -> Result<Arc<WhisperModel>, AsrError> {
        if !path.is_file() {
            return Err(AsrError::ModelMissing { path: path.into() });
        }
        static HOOKS: std::sync::Once = std::sync::Once::new();
        HOOKS.call_once(whisper_rs::install_logging_hooks);
        let context = WhisperContext::new_with_params(path, WhisperContextParameters::default())
            .map_err(|e| AsrError::ModelLoad {
                path: path.into(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(WhisperModel { context }))
    }

    pub fn engine(self: &Arc<Self>, config: AsrConfig) -> Result<WhisperEngine, AsrError> {
        let state = self
            .context
            .create_state()
            .map_err(|e| AsrError::ModelLoad {
                path: config.model.clone(),
                reason: e.to_string(),
            })?;
        let short_answers = ShortAnswers::new(&self.context, &config.prompt, &config.short_answers)
            .map_err(|e| AsrError::ModelLoad {
                path: config.model.clone(),
                reason: format!("cannot tokenize the short answers: {e}"),
            })?;
        Ok(WhisperEngine {
            model: Arc::clone(self),
            state,
            config,
            short_answers,
        })
    }
}

impl WhisperEngine {
    pub fn transcribe(&mut self, audio_16k: &[f32]) -> Result<Transcript, AsrError> {
        if audio_16k.is_empty() {
            return Ok(Transcript::default());
        }
        let fitted = audio_16k.len() / 320 + 128;
        let (first, tokens) = self.decode(audio_16k, fitted.max(self.config.min_audio_ctx))?;
        let short = (audio_16k.len() as u64) < self.config.short_below_ms * 16;
        if first.text.is_empty() || self.short_answers.is_empty() {
            return Ok(first);
        }
        let Some(intent) = self.read(&first.text) else {
            return Ok(first);
        };
        if short && intent.is_decisive() {
            return self.confirm_decisive(first, intent, audio_16k.len());
        }
        if intent != Intent::Unknown {
            return Ok(first);
        }
        // Any utterance the rules cannot read, short or long, is checked against the
        // expected answers; answers less than half as long as the transcript are never
        // taken, so a long one is only read as a long answer.
        let (free_fit, best) = self
            .short_answers
            .best_answer(
                &mut self.state,
                self.config.threads_per_worker,
                &first.text,
                &tokens,
            )
            .map_err(|e| AsrError::Inference(e.to_string()))?;
        tracing::debug!(free = %first.text, free_fit, best = ?best, "short answers scored");
        match best {
            Some(best) => Ok(Transcript {
                text: best.text,
                ..first
            }),
            None if short => Ok(first),
            None => self.read_again_if_unsure(first, audio_16k, fitted),
        }
    }

    /// A longer utterance whisper was unsure of and the rules cannot read is decoded once
    /// more with beam search; that reading is taken when the rules understand it and it
    /// does not decide the call (a guess never ends a call). Off unless
    /// `second_reading_below` is set.
    fn read_again_if_unsure(
        &mut self,
        first: Transcript,
        audio_16k: &[f32],
        audio_ctx: usize,
    ) -> Result<Transcript, AsrError> {
        let unsure = self
            .config
            .second_reading_below
            .is_some_and(|below| first.confidence().is_some_and(|c| c < below));
        if !unsure || self.read(&first.text) != Some(Intent::Unknown) {
            return Ok(first);
        }
        let (second, _) = self.decode_with(audio_16k, audio_ctx, Strategy::Beam)?;
        let intent = self.read(&second.text);
        tracing::debug!(first = %first.text, second = %second.text, ?intent, "unsure: read again with beam search");
        match intent {
            Some(intent) if intent != Intent::Unknown && !intent.is_decisive() => Ok(second),
            _ => Ok(first),
        }
    }

    /// What the dialogue's rules read in `text`; `None` without rules.
    fn read(&self, text: &str) -> Option<Intent> {
        self.config
            .reading
            .as_ref()
            .map(|TextCheck(read)| read(text))
    }

    /// A short utterance read as deciding the call (不续了, 挂了) is read again without the
    /// domain prompt, whose phrases whisper echoes for a garbled 哦 (measured: 哦 → 不许).
    /// The decision stands only if that reading decides too; otherwise the neutral reading
    /// is what the callee said.
    fn confirm_decisive(
        &mut self,
        first: Transcript,
        intent: Intent,
        samples: usize,
    ) -> Result<Transcript, AsrError> {
        let tokens = self
            .short_answers
            .reread_without_prompt(
                &mut self.state,
                self.config.threads_per_worker,
                max_tokens(samples),
            )
            .map_err(|e| AsrError::Inference(e.to_string()))?;
        let mut bytes = Vec::new();
        for token in tokens {
            if let Ok(piece) = self.model.context.token_to_bytes(token) {
                bytes.extend_from_slice(piece);
            }
        }
        let neutral = clean_transcript(&String::from_utf8_lossy(&bytes), &self.config.prompt);
        let neutral_intent = self.read(&neutral);
        tracing::debug!(prompted = %first.text, %intent, %neutral, ?neutral_intent, "decisive short reply read again");
        if neutral_intent.is_none_or(Intent::is_decisive) {
            return Ok(first);
        }
        Ok(Transcript {
            text: neutral,
            ..first
        })
    }

    /// One whisper pass; the transcript and its text tokens.
    fn decode(
        &mut self,
        audio_16k: &[f32],
        audio_ctx: usize,
    ) -> Result<(Transcript, Vec<WhisperTokenId>), AsrError> {
        self.decode_with(audio_16k, audio_ctx, Strategy::Greedy)
    }

    fn decode_with(
        &mut self,
        audio_16k: &[f32],
        audio_ctx: usize,
        strategy: Strategy,
    ) -> Result<(Transcript, Vec<WhisperTokenId>), AsrError> {
        let mut params = FullParams::new(match strategy {
            Strategy::Greedy => SamplingStrategy::Greedy { best_of: 1 },
            Strategy::Beam => SamplingStrategy::BeamSearch {
                beam_size: 5,
                patience: -1.0,
            },
        });
        params.set_language(Some("zh"));
        params.set_n_threads(self.config.threads_per_worker as i32);
        params.set_translate(false);
        params.set_no_context(true);
        params.set_single_segment(true);
        params.set_no_timestamps(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        params.set_temperature(0.0);
        params.set_temperature_inc(0.0);
        params.set_initial_prompt(&self.config.prompt);
        // The encoder only needs to look at as much audio as there is (50 frames a second)
        // plus a margin; below 128 whisper starts looping.
        let audio_ctx = audio_ctx.max(self.config.min_audio_ctx).min(1_500);
        params.set_audio_ctx(audio_ctx as i32);
        params.set_max_tokens(max_tokens(audio_16k.len()) as i32);
        // Whisper needs at least a second of input to work well; pad short answers.
        let mut padded;
        let input = if audio_16k.len() < 16_000 {
            padded = audio_16k.to_vec();
            padded.resize(16_000, 0.0);
            &padded[..]
        } else {
            audio_16k
        };
        self.state
            .full(params, input)
            .map_err(|e| AsrError::Inference(e.to_string()))?;

        let mut raw = String::new();
        let mut no_speech_prob: f32 = 0.0;
        let mut tokens = Vec::new();
        let mut log_probs = Vec::new();
        let end_of_text = self.short_answers.end_of_text();
        for segment in self.state.as_iter() {
            no_speech_prob = no_speech_prob.max(segment.no_speech_probability());
            if let Ok(piece) = segment.to_str_lossy() {
                raw.push_str(&piece);
            }
            for token in (0..segment.n_tokens()).filter_map(|i| segment.get_token(i)) {
                let data = token.token_data();
                if data.id < end_of_text {
                    tokens.push(data.id);
                    log_probs.push(data.plog);
                }
            }
        }
        let (avg_log_prob, min_token_prob) = token_confidence(&log_probs);
        let mut text = clean_transcript(&raw, &self.config.prompt);
        if no_speech_prob >= self.config.no_speech_threshold {
            text.clear();
        }
        Ok((
            Transcript {
                text,
                no_speech_prob,
                avg_log_prob,
                min_token_prob,
            },
            tokens,
        ))
    }
}

/// Whisper's `avg_logprob` of a decoding and the probability of its least likely token;
/// nothing decoded is no confidence at all.
fn token_confidence(log_probs: &[f32]) -> (Option<f32>, Option<f32>) {
    if log_probs.is_empty() {
        return (Some(f32::NEG_INFINITY), Some(0.0));
    }
    let mean = log_probs.iter().sum::<f32>() / log_probs.len() as f32;
    let least = log_probs.iter().copied().fold(f32::INFINITY, f32::min);
    (Some(mean), Some(least.exp()))
}

#[derive(Debug, Clone, Copy)]
enum Strategy {
    Greedy,
    Beam,
}

/// The most text tokens a decoding of `samples` (16 kHz) may produce. A looping decoder
/// would otherwise run for a minute on one noisy word: real speech is at most ~8 characters
/// a second.
fn max_tokens(samples: usize) -> usize {
    (samples / 16_000 + 1) * 10 + 8
}

/// Simplified characters, punctuation kept; prompt echoes, known hallucinations and runaway
/// repetition removed.
pub fn clean_transcript(raw: &str, prompt: &str) -> String {
    let simplified = zhconv::zhconv(raw.trim(), zhconv::Variant::ZhHans);
    let normalized = text::normalize(&simplified);
    let prompt_core = text::normalize(prompt);
    if normalized.is_empty()
        // Real short answers (对我是, 好的) also occur in the prompt; only a long stretch of
        // it is an echo.
        || (normalized.chars().count() >= 8 && prompt_core.contains(&normalized))
        || HALLUCINATIONS.iter().any(|h| normalized.contains(h))
    {
        return String::new();
    }
    collapse_repeats(&simplified)
}

/// "好的好的好的好的好的…" from a looping decoder becomes at most three repeats.
fn collapse_repeats(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    for unit in 1..=4 {
        let mut out: Vec<char> = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            out.push(chars[i]);
            i += 1;
            let len = out.len();
            if len >= unit * 4 {
                let tail = &out[len - unit..];
                let repeated = (2..=4).all(|k| out[len - unit * k..len - unit * (k - 1)] == *tail);
                if repeated {
                    out.truncate(len - unit);
                }
            }
        }
        if out.len() < chars.len() {
            return collapse_repeats(&out.into_iter().collect::<String>());
        }
    }
    text.to_string()
}

/// A transcript and the time its decoding took (ms).
type Recognized = Result<(Transcript, u64), AsrError>;

struct Job {
    audio: Vec<f32>,
    reply: tokio::sync::oneshot::Sender<Recognized>,
}

/// A bounded pool of whisper workers shared by every call of the process.
#[derive(Clone)]
pub struct RecognizerPool {
    sender: SyncSender<Job>,
    queue_limit: usize,
}

impl RecognizerPool {
    /// Loads the model and starts the workers.
    pub fn start(config: AsrConfig) -> Result<RecognizerPool, AsrError> {
        let model = WhisperModel::load(&config.model)?;
        let (sender, receiver) = mpsc::sync_channel::<Job>(config.queue_limit);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..config.workers.max(1) {
            let mut engine = model.engine(config.clone())?;
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("whisper-{index}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take a job, never while decoding.
                        let job = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        if job.reply.is_closed() {
                            // Its call has cancelled it or is gone: the cores are better
                            // spent on the utterances still waited for.
                            continue;
                        }
                        let started = Instant::now();
                        let result = engine
                            .transcribe(&job.audio)
                            .map(|t| (t, started.elapsed().as_millis() as u64));
                        let _ = job.reply.send(result);
                    }
                })
                .map_err(|e| {
                    AsrError::Inference(format!("cannot start a recognition thread: {e}"))
                })?;
        }
        Ok(RecognizerPool {
            sender,
            queue_limit: config.queue_limit,
        })
    }

    fn submit(
        &self,
        audio: Vec<f32>,
    ) -> Result<tokio::sync::oneshot::Receiver<Recognized>, AsrError> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        match self.sender.try_send(Job { audio, reply }) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(AsrError::Overloaded(self.queue_limit)),
            Err(TrySendError::Disconnected(_)) => Err(AsrError::Closed),
        }
    }

    /// Transcribes one utterance; also returns the decoding time in ms.
    pub async fn recognize(&self, audio_16k: Vec<f32>) -> Result<(Transcript, u64), AsrError> {
        self.submit(audio_16k)?
            .await
            .map_err(|_| AsrError::Closed)?
    }

    /// The same, for code that is not async (the evaluator, tools).
    pub fn recognize_blocking(&self, audio_16k: Vec<f32>) -> Result<(Transcript, u64), AsrError> {
        self.submit(audio_16k)?
            .blocking_recv()
            .map_err(|_| AsrError::Closed)?
    }
}

impl Recognizer for RecognizerPool {
    fn transcribe(&self, audio_16k: &[f32]) -> Result<Transcript, AsrError> {
        self.recognize_blocking(audio_16k.to_vec()).map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_echoes_and_hallucinations_become_empty() {
        assert_eq!(clean_transcript("以下是普通话的句子。", DEFAULT_PROMPT), "");
        assert_eq!(clean_transcript("以下是普通话", DEFAULT_PROMPT), "");
        assert_eq!(
            clean_transcript(
                "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目",
                DEFAULT_PROMPT
            ),
            ""
        );
        assert_eq!(
            clean_transcript("  是我，什麼事？", DEFAULT_PROMPT),
            "是我，什么事？"
        );
        assert_eq!(clean_transcript("是", DEFAULT_PROMPT), "是");
    }

    #[test]
    fn runaway_repetition_is_collapsed() {
        assert_eq!(collapse_repeats("好的好的好的好的好的好的"), "好的好的好的");
        assert_eq!(collapse_repeats("嗯嗯嗯嗯嗯嗯嗯"), "嗯嗯嗯");
        assert_eq!(collapse_repeats("不续了"), "不续了");
    }

    #[test]
    fn a_missing_model_says_what_to_run() {
        let err = WhisperModel::load(Path::new("/nonexistent/ggml-base.bin"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("models/fetch"), "{err}");
    }
}
