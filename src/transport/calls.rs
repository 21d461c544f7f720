//! What every transport's server shares, whatever the phone network: the dependencies of a
//! call ([`CallDeps`], loaded and checked from `main`'s [`SharedDeps`]), what a server hands
//! each of its calls (`CallEnv`: those dependencies, the [`CallEvent`] broadcast and the
//! live-call count with its graceful drain, `LiveCalls`), whether the store lets new calls
//! in ([`CallDeps::refusing_calls`]), and the start-up and shutdown steps of `serve` and
//! `sip` ([`missing_clips`], [`close_interrupted_calls`], [`shutdown_signal`]).

use crate::asr::RecognizerPool;
use crate::audio::clips::ClipLibrary;
use crate::dialog::Script;
use crate::session::{CallSummary, SessionConfig, TurnRecord};
use crate::store::Store;
use anyhow::{Context, bail};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What `main` hands to a transport's `serve`: the things that are slow to set up or shared
/// with other commands.
pub struct SharedDeps {
    pub store: Store,
    /// The whisper pool, shared by every call.
    pub recognizer: RecognizerPool,
    pub session: SessionConfig,
}

/// What every call needs, shared by all calls of the process.
#[derive(Clone)]
pub struct CallDeps {
    pub store: Store,
    /// The shared whisper pool. `None` disables recognition (transport tests): every
    /// utterance then comes back empty, with a warning.
    pub recognizer: Option<RecognizerPool>,
    pub script: Arc<Script>,
    pub clips: Arc<ClipLibrary>,
    pub session: SessionConfig,
}

impl CallDeps {
    /// Why no new call may be taken now (the store cannot write do-not-call entries or its
    /// heartbeat: see [`Store::health`]); `None` when calls are welcome. Blocking but
    /// cheap (a `stat` of the journal and, only when it has entries, a lookup of each).
    pub fn refusing_calls(&self) -> Option<String> {
        self.store.health().problem
    }

    /// Loads the script and the clips, checks that every line the script can say has a
    /// clip, and adds `main`'s shared pieces.
    pub fn load(
        shared: SharedDeps,
        script_dir: &Path,
        audio_dir: &Path,
    ) -> anyhow::Result<CallDeps> {
        let script = Script::load(script_dir)
            .with_context(|| format!("cannot load the script from {}", script_dir.display()))?;
        let clips = ClipLibrary::load(audio_dir)
            .with_context(|| format!("cannot load the clips from {}", audio_dir.display()))?;
        let missing = missing_clips(&script, &clips);
        if !missing.is_empty() {
            bail!(
                "{} has no clip for these script lines: {}; render them (tools/tts) first",
                audio_dir.display(),
                missing.join(", ")
            );
        }
        Ok(CallDeps {
            store: shared.store,
            recognizer: Some(shared.recognizer),
            script: Arc::new(script),
            clips: Arc::new(clips),
            session: shared.session,
        })
    }
}

/// What a server shares with each of its calls, whatever the transport.
#[derive(Clone)]
pub(crate) struct CallEnv {
    pub(crate) deps: CallDeps,
    pub(crate) events: broadcast::Sender<CallEvent>,
    pub(crate) live: LiveCalls,
}

impl CallEnv {
    pub(crate) fn new(deps: CallDeps) -> CallEnv {
        let (events, _) = broadcast::channel(1_024);
        CallEnv {
            deps,
            events,
            live: LiveCalls::new(),
        }
    }
}

/// Things that happened on calls, for metrics and tests (a broadcast; nobody has to listen).
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// The call's media started (Twilio: the `start` message; SIP: the ACK of the 200 OK).
    /// `call_sid` is Twilio's CallSid or the SIP Call-ID.
    Started { call_id: String, call_sid: String },
    /// The first audio frame of the opening line went out, `delay_ms` after the start.
    OpeningSent { call_id: String, delay_ms: u64 },
    /// A callee turn was stored; `latency_ms` = first reply frame sent − end of speech.
    Turn {
        call_id: String,
        turn: TurnRecord,
        latency_ms: Option<u64>,
    },
    /// The call is over and its record is complete in the store.
    Ended {
        call_id: String,
        summary: Option<CallSummary>,
    },
}

/// Counts live calls and tells them when the server stops for good.
///
/// Two counts: every connection that may become a call (`enter`: what a shutdown waits
/// for and SIP's `--max-calls` caps), and the calls actually under way (`call_started`: a
/// Twilio stream admitted with its token), which is what `/healthz` reports, so sockets
/// that never send a valid `start` do not look like calls.
#[derive(Clone)]
pub(crate) struct LiveCalls {
    count: Arc<tokio::sync::watch::Sender<usize>>,
    started: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) hard_stop: CancellationToken,
}

/// Held while a started call runs; see `LiveCalls::call_started`.
pub(crate) struct StartedGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StartedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(crate) struct LiveGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|c| *c = c.saturating_sub(1));
    }
}

impl LiveCalls {
    pub(crate) fn new() -> LiveCalls {
        LiveCalls {
            count: Arc::new(tokio::sync::watch::channel(0).0),
            started: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            hard_stop: CancellationToken::new(),
        }
    }

    pub(crate) fn enter(&self) -> LiveGuard {
        self.count.send_modify(|c| *c += 1);
        LiveGuard(Arc::clone(&self.count))
    }

    /// Connections that are or may become calls.
    pub(crate) fn live(&self) -> usize {
        *self.count.borrow()
    }

    /// Marks a connection as a call under way until the guard drops.
    pub(crate) fn call_started(&self) -> StartedGuard {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StartedGuard(Arc::clone(&self.started))
    }

    /// Calls under way (admitted streams).
    pub(crate) fn started(&self) -> usize {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until no call is live; false on timeout.
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c == 0))
            .await
            .is_ok()
    }

    /// After the server stopped taking calls: lets live calls finish within `grace`, then
    /// cuts the rest (`hard_stop`: their records are finished and marked `interrupted`) and
    /// waits for their writes. True when every call finished within `grace`.
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        let count = self.live();
        if count > 0 {
            tracing::info!(
                count,
                "shutting down: waiting up to {grace:?} for live calls to finish"
            );
        }
        if self.wait_idle(grace).await {
            return true;
        }
        tracing::warn!(
            count = self.live(),
            "grace period over: cutting the remaining calls"
        );
        self.hard_stop.cancel();
        if !self.wait_idle(Duration::from_secs(10)).await {
            tracing::error!(
                count = self.live(),
                "some calls did not finish their records in time"
            );
        }
        false
    }
}

/// Whether the clip library has every line the script can say; the missing ids otherwise.
pub fn missing_clips(script: &Script, clips: &ClipLibrary) -> Vec<String> {
    let mut missing: Vec<String> = script
        .spoken_lines()
        .into_iter()
        .filter(|id| clips.get(id).is_none())
        .map(str::to_string)
        .collect();
    missing.sort();
    missing
}

/// Closes the calls a stopped run left open (whatever their age; the calls of another live
/// process on the same database stay open), so `calls list` tells them from live ones. The
/// server's keeper keeps doing it while it runs (see `store::instances`). A store that
/// cannot do it now is no reason not to take calls: it is logged.
pub fn close_interrupted_calls(store: &Store) {
    crate::store::instances::log_closed(store.close_interrupted_calls());
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: stopping"),
        _ = terminate => tracing::info!("SIGTERM: stopping"),
    }
}
