//! The `renewal-bot` command line: evaluate recorded calls, serve Twilio calls, place a
//! call, and look after the do-not-call list and the call records.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use renewal_bot::asr::{AsrConfig, RecognizerPool};
use renewal_bot::audio::clips::ClipLibrary;
use renewal_bot::dialog::Script;
use renewal_bot::eval::{
    self, EvalOptions,
    manifest::Manifest,
    simulate::{RecognitionClock, Transcribe},
};
use renewal_bot::records::{self, CallsCommand, DncCommand};
use renewal_bot::session::SessionConfig;
use renewal_bot::store::{IfMissing, OpenOptions, Store, StoreError, default_journal_path};

/// An outbound phone bot for service-expiry calls: 李明 of 长江公司 tells 张强 of 泰山公司
/// that his cloud service expires on 2025-01-01, learns whether he renews or cancels,
/// answers a few standard questions, honours "never call again", and hangs up politely.
///
/// Speech is recognized locally with whisper (no cloud). Every call's turns, outcome and
/// do-not-call state are stored in SQLite.
#[derive(Parser)]
#[command(name = "renewal-bot", version, propagate_version = true)]
struct Cli {
    /// SQLite database with calls, turns and the do-not-call list. Only `serve`, `sip` and
    /// `dnc add` create it when it does not exist; every other command refuses.
    #[arg(long, global = true, env = "RENEWAL_BOT_DB", default_value_os_t = records::default_db_path())]
    db: PathBuf,
    /// Where do-not-call requests the database cannot take (full disk) are kept, fsync'd,
    /// until they land; every command reads it. Default: next to the database
    /// (`DB.dnc-journal`); put it on another filesystem so a full database disk cannot stop
    /// it too.
    #[arg(long, global = true, env = "RENEWAL_BOT_DNC_JOURNAL")]
    dnc_journal: Option<PathBuf>,
    /// Whisper model in ggml form (get it with `models/fetch`).
    #[arg(long, global = true, env = "RENEWAL_BOT_MODEL", default_value_os_t = AsrConfig::default_model_path())]
    model: PathBuf,
    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `renewal_bot=debug`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a manifest of recorded calls through the call session and report intents,
    /// outcomes, do-not-call, CER and reply latency (format: shared/scenario.md).
    Eval(EvalArgs),
    /// Answer Twilio Media Streams calls (TwiML webhook, media WebSocket, status callbacks).
    Serve(renewal_bot::transport::twilio::config::ServeArgs),
    /// Answer calls from a SIP softphone (UDP; dial sip:bot@HOST:PORT), audio over RTP.
    Sip(renewal_bot::transport::sip::SipArgs),
    /// Place one outbound call through Twilio's Calls API (refused for do-not-call numbers).
    Call(renewal_bot::dialer::CallFlags),
    /// Place the expiry call to every number of a list, a few at a time, skipping numbers
    /// on the do-not-call list and callees already reached.
    Campaign(renewal_bot::campaign::CampaignFlags),
    /// The permanent do-not-call list.
    #[command(subcommand)]
    Dnc(DncCommand),
    /// Recent calls and their turns.
    #[command(subcommand)]
    Calls(CallsCommand),
    /// Transcribe WAV files with the bot's recognizer and show the intents the rules give.
    Transcribe {
        /// WAV files (any rate, mono or stereo, PCM or μ-law).
        #[arg(required = true)]
        wavs: Vec<PathBuf>,
        #[command(flatten)]
        assets: Assets,
    },
    /// Check the script, the clips and the model, and say what is wrong.
    Check {
        #[command(flatten)]
        assets: Assets,
    },
    /// Show the intents the rules give to a sentence, and which patterns matched.
    Classify {
        /// What the callee said, e.g. "发短信就行，别打电话".
        #[arg(required = true)]
        texts: Vec<String>,
        #[command(flatten)]
        assets: Assets,
    },
}

/// Where the dialog script and 李明's clips are.
#[derive(clap::Args)]
struct Assets {
    /// Folder with the dialog script (lines.toml, dialog.toml, intents.toml).
    #[arg(long, default_value = "script")]
    script_dir: PathBuf,
    /// Folder with 李明's clips and their manifest.toml.
    #[arg(long, default_value = "audio")]
    audio_dir: PathBuf,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    assets: Assets,
    /// The manifest (TOML) of recorded call cases; several are run as one report.
    #[arg(default_values_os_t = vec![eval::default_manifest()])]
    manifests: Vec<PathBuf>,
    /// Call time (ms) the simulated call waits for each transcript. A fixed model keeps
    /// outcomes the same on a busy machine; reply latency still counts the measured time.
    #[arg(long, default_value_t = eval::simulate::MODELED_RECOGNITION_MS)]
    asr_ms: u64,
    /// Let the measured recognition time drive the call clock instead (outcomes then
    /// depend on how busy the machine is).
    #[arg(long, conflicts_with = "asr_ms")]
    wall_clock: bool,
    /// Also print per-intent precision and recall and the confusion matrix.
    #[arg(long)]
    intents: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Feed each turn's reference text instead of its audio (tests the rules and the
    /// script without speech recognition).
    #[arg(long)]
    text: bool,
    /// Do not print the per-case table.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|err| {
        eprintln!("warning: ignoring the log filter {:?}: {err}", cli.log);
        tracing_subscriber::EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a cause whose text the message already holds
/// is not repeated ("X: X").
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = DbArgs {
        path: cli.db.clone(),
        journal: cli.dnc_journal.clone(),
    };
    match cli.command {
        Command::Eval(args) => run_eval(&cli.model, args),
        Command::Serve(args) => {
            let store = db.open_for_server()?;
            let _instance = store.start_instance("serve", true);
            let shared = shared_deps(store, &cli.model, args.script_dir.as_deref())?;
            runtime()?.block_on(renewal_bot::transport::twilio::server::serve(args, shared))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sip(args) => {
            let store = db.open_for_server()?;
            let _instance = store.start_instance("sip", true);
            let shared = shared_deps(store, &cli.model, args.script_dir.as_deref())?;
            runtime()?.block_on(renewal_bot::transport::sip::serve(args, shared))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Call(args) => {
            let store = db.open(IfMissing::Refuse)?;
            let _instance = store.start_instance("call", false);
            let call = runtime()?.block_on(renewal_bot::dialer::place_call(args.into(), &store))?;
            println!("{}", call.call_sid);
            Ok(ExitCode::SUCCESS)
        }
        Command::Campaign(flags) => {
            let store = db.open(IfMissing::Refuse)?;
            let _instance = store.start_instance("campaign", false);
            let mut out = std::io::stdout();
            let all = runtime()?.block_on(renewal_bot::campaign::run_campaign(
                &flags, &store, &mut out,
            ))?;
            let failed = all
                .iter()
                .any(|(_, d)| matches!(d, renewal_bot::campaign::Disposition::Failed(_)));
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Dnc(DncCommand::Add { number, reason }) => {
            // Adding to the list may start it; and when the database cannot even be
            // opened (a full disk), the entry still goes into the journal.
            let store = match db.open_store(IfMissing::Create) {
                Ok(store) => store,
                Err(err) => {
                    let journal = db
                        .journal
                        .clone()
                        .unwrap_or_else(|| default_journal_path(&db.path));
                    return Err(records::add_dnc_to_journal_only(
                        &journal, &number, &reason, err,
                    ));
                }
            };
            records::run_dnc(
                &store,
                DncCommand::Add { number, reason },
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dnc(command) => {
            // Reading or removing needs the real list.
            records::run_dnc(
                &db.open(IfMissing::Refuse)?,
                command,
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Calls(command) => {
            records::run_calls(
                &db.open(IfMissing::Refuse)?,
                command,
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Transcribe { wavs, assets } => {
            let script = load_script(&assets.script_dir)?;
            let recognizer = start_recognizer(&cli.model, &script)?;
            let mut out = std::io::stdout().lock();
            let mut refused = 0;
            for path in wavs {
                let audio = match read_utterance(&path) {
                    Ok(audio) => audio,
                    Err(err) => {
                        eprintln!("{err:#}");
                        refused += 1;
                        continue;
                    }
                };
                if !renewal_bot::vad::holds_speech(&audio) {
                    writeln!(out, "{}	(no speech)	\t0 ms", path.display())?;
                    continue;
                }
                let (transcript, decode_ms) = recognizer.recognize_blocking(audio)?;
                let heard = script.rules.classify(&transcript.text);
                let intents: Vec<&str> = heard.intents.iter().map(|i| i.as_str()).collect();
                writeln!(
                    out,
                    "{}\t{}\t{}\t{decode_ms} ms",
                    path.display(),
                    transcript.text,
                    intents.join(",")
                )?;
            }
            Ok(if refused == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Classify { texts, assets } => {
            let script = load_script(&assets.script_dir)?;
            // A closed pipe (`| head`) ends the output with an error, not a panic.
            let mut out = std::io::stdout().lock();
            for text in texts {
                let heard = script.rules.classify(&text);
                let intents: Vec<&str> = heard.intents.iter().map(|i| i.as_str()).collect();
                writeln!(out, "{text}\t→ {}", intents.join(", "))?;
                for (label, pattern, vetoed) in script.rules.explain(&text) {
                    let note = if vetoed {
                        "  (vetoed by unless/guard)"
                    } else {
                        ""
                    };
                    writeln!(out, "    {label:<18} {pattern}{note}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { assets } => {
            let script = load_script(&assets.script_dir)?;
            let clips = load_clips(&assets.audio_dir)?;
            eval::check_clips(&script, &clips)?;
            println!(
                "script: {} states, {} lines — ok",
                script.states.len(),
                script.lines.len()
            );
            println!(
                "clips: {} in {} — ok",
                clips.len(),
                assets.audio_dir.display()
            );
            let checksum = renewal_bot::asr::integrity::verify_checksum(&cli.model)?;
            let pool = RecognizerPool::start(AsrConfig::for_model(cli.model.clone()))?;
            let cer = renewal_bot::asr::integrity::self_test(&pool, &cli.model)?;
            let pinned = match checksum {
                renewal_bot::asr::integrity::Checksum::Pinned(pin) => format!("checksum {pin}"),
                renewal_bot::asr::integrity::Checksum::Unknown => {
                    "no pinned checksum for this file".to_string()
                }
            };
            println!(
                "model: {} — ok ({pinned}; self-test heard 李明's clip with {:.0}% of characters wrong)",
                cli.model.display(),
                cer * 100.0
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The database the command line names, and its do-not-call journal.
struct DbArgs {
    path: PathBuf,
    journal: Option<PathBuf>,
}

impl DbArgs {
    /// Opens the database; a new one is announced on stderr.
    fn open(&self, if_missing: IfMissing) -> anyhow::Result<Store> {
        Ok(self.open_store(if_missing)?)
    }

    fn open_store(&self, if_missing: IfMissing) -> Result<Store, StoreError> {
        let store = Store::open_with(
            &self.path,
            &OpenOptions {
                if_missing,
                dnc_journal: self.journal.clone(),
            },
        )?;
        if store.created() {
            eprintln!("created new database at {}", self.path.display());
        }
        Ok(store)
    }

    /// `serve` and `sip`: may create the database, and refuse one that fails SQLite's
    /// quick_check.
    fn open_for_server(&self) -> anyhow::Result<Store> {
        let store = self.open(IfMissing::Create)?;
        store.quick_check()?;
        Ok(store)
    }
}

/// What every live call of `serve` or `sip` shares: the store and one recognizer pool
/// set up for the script's rules.
fn shared_deps(
    store: Store,
    model: &Path,
    script_dir: Option<&Path>,
) -> anyhow::Result<renewal_bot::transport::SharedDeps> {
    let script_dir = script_dir.map_or_else(Script::default_dir, Path::to_path_buf);
    let recognizer = start_recognizer(model, &load_script(&script_dir)?)?;
    Ok(renewal_bot::transport::SharedDeps {
        store,
        recognizer,
        session: SessionConfig::default(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_script(dir: &Path) -> anyhow::Result<Arc<Script>> {
    Ok(Arc::new(Script::load(dir)?))
}

fn load_clips(dir: &Path) -> anyhow::Result<ClipLibrary> {
    Ok(ClipLibrary::load(dir)?)
}

/// The whisper pool; short answers the script's rules do not understand get a second,
/// slower pass.
/// The model is checked first: its pinned checksum when it is a known file, and a clip of
/// 李明 it must hear (`asr::integrity`), so a damaged model never answers calls deaf.
fn start_recognizer(model: &Path, script: &Arc<Script>) -> anyhow::Result<RecognizerPool> {
    let checksum = renewal_bot::asr::integrity::verify_checksum(model)?;
    tracing::info!(model = %model.display(), ?checksum, "model checksum");
    let config = AsrConfig::for_script(model.to_path_buf(), script).with_env_overrides();
    let pool = RecognizerPool::start(config)?;
    renewal_bot::asr::integrity::self_test(&pool, model)?;
    Ok(pool)
}

fn run_eval(model: &Path, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let manifests = args
        .manifests
        .iter()
        .map(|path| Manifest::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let script = load_script(&args.assets.script_dir)?;
    let clips = load_clips(&args.assets.audio_dir)?;
    let needs_audio = manifests
        .iter()
        .flat_map(|m| &m.cases)
        .flat_map(|c| &c.turns)
        .any(|t| t.audio.is_some() && !(args.text && t.text.is_some()));
    let recognizer = if needs_audio {
        Some(start_recognizer(model, &script)?)
    } else {
        None
    };

    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(manifests.iter().map(|m| m.cases.len() as u64).sum());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} cases  {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let on_case_done = |case: &eval::report::CaseReport| {
        let mark = if case.outcome_correct() { "ok" } else { "MISS" };
        progress.set_message(format!("{mark} {}", case.name));
        progress.inc(1);
    };
    let options = EvalOptions {
        text_only: args.text,
        session: SessionConfig::default(),
        clock: if args.wall_clock {
            RecognitionClock::WallTime
        } else {
            RecognitionClock::Modeled(args.asr_ms)
        },
        on_case_done: &on_case_done,
    };
    let transcriber = recognizer.as_ref().map(|r| r as &dyn Transcribe);
    let reports = manifests
        .iter()
        .map(|manifest| eval::run(manifest, &script, &clips, transcriber, &options))
        .collect::<Result<Vec<_>, _>>()?;
    let report = eval::report::Report::merge(reports);
    progress.finish_and_clear();

    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if args.quiet {
        println!("{}", report.summary.one_line());
    } else {
        print!("{}", report.render_table());
    }
    if args.intents {
        print!("{}", report.render_intent_scores());
    }
    if let Some(path) = &args.json {
        println!("report written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `transcribe` reads one callee utterance per file, as a call would hear it; longer files
/// are refused before they are decoded whole (a 2-hour WAV took 1.3 GB).
const TRANSCRIBE_MAX_SECONDS: u64 = 60;

/// A WAV as the recognizer's 16 kHz samples, refused when it is longer than an utterance.
fn read_utterance(path: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    // μ-law at 8 kHz is the densest input a call gives (8 kB/s); 48 kHz stereo 32-bit the
    // least (384 kB/s): reject on size first so a huge file is never read into memory.
    let limit = TRANSCRIBE_MAX_SECONDS * 384_000 + 4_096;
    let size = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read the file", path.display()))?
        .len();
    anyhow::ensure!(
        size <= limit,
        "{}: {size} bytes is longer than one utterance; transcribe takes WAVs of up to \
         {TRANSCRIBE_MAX_SECONDS} s (cut it, e.g. `sox in.wav out.wav trim 0 30`)",
        path.display()
    );
    let audio = renewal_bot::audio::wav::read_mono(path)?;
    anyhow::ensure!(
        audio.duration_ms() <= TRANSCRIBE_MAX_SECONDS * 1_000,
        "{}: {} s is longer than one utterance; transcribe takes WAVs of up to \
         {TRANSCRIBE_MAX_SECONDS} s (cut it, e.g. `sox in.wav out.wav trim 0 30`)",
        path.display(),
        audio.duration_ms() / 1_000
    );
    Ok(audio.to_rate(renewal_bot::audio::ASR_RATE)?.samples)
}
