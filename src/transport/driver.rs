//! The per-call driver core both transports share: [`CallCore`] owns one call's
//! [`Session`], its ordered store queue, its recognitions under way, its queue of clips and
//! the turns waiting for their reply's first frame, and runs the call's event loop
//! ([`CallCore::drive`]).
//!
//! The loop waits for the server's hard stop, the transport's own input, a transcript, the
//! session's next deadline, or — once the far end is gone — the end of the linger given to
//! pending recognitions, and after each event drains the session's actions. The core handles
//! `Play` (queued), `Recognize`/`CancelRecognition` (spawned on the shared pool), `Turn`
//! (stored, with its latency once the reply's first frame is out), `DoNotCall` and the
//! outcome at the end; the transport ([`CallIo`]) does only its I/O: reading its
//! socket(s), sending and pacing frames (walking [`CallCore::queue`] and reporting first
//! frames and finished clips back), stopping playback, and hanging up.

use crate::asr::RecognizerPool;
use crate::audio::clips::ClipLibrary;
use crate::labels::Outcome;
use crate::session::{Action, Millis, PlayId, Session, Transcript, TurnRecord, UtteranceId};
use crate::store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::calls::{CallEnv, CallEvent};

/// After the far end is gone, how long to wait for pending recognitions to settle the outcome.
const LINGER: Duration = Duration::from_secs(20);
/// The same, when the server is shutting down.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(3);

/// One queued store write.
type StoreOp = Box<dyn FnOnce(&Store) + Send>;

/// Store writes of one call, applied in order off the async threads.
struct StoreLog {
    tx: mpsc::UnboundedSender<StoreOp>,
    task: tokio::task::JoinHandle<()>,
}

impl StoreLog {
    fn new(store: Store) -> StoreLog {
        let (tx, mut rx) = mpsc::unbounded_channel::<StoreOp>();
        let span = tracing::Span::current();
        let task = tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                let store = store.clone();
                let span = span.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    op(&store);
                })
                .await;
                if let Err(err) = done {
                    tracing::error!(%err, "a store write panicked");
                }
            }
        });
        StoreLog { tx, task }
    }

    fn push(&self, op: impl FnOnce(&Store) + Send + 'static) {
        if self.tx.send(Box::new(op)).is_err() {
            tracing::error!("the store queue is closed; a write was lost");
        }
    }

    /// Waits until every queued write is done.
    async fn flush(self) {
        drop(self.tx);
        if let Err(err) = self.task.await {
            tracing::error!(%err, "the store writer failed");
        }
    }
}

/// A clip queued for sending.
pub(super) struct QueuedPlay {
    pub(super) play_id: PlayId,
    pub(super) line: String,
    /// μ-law samples of the clip already sent.
    pub(super) offset: usize,
    /// Its first frame is out.
    pub(super) started: bool,
}

/// Packet counts a transport adds to the "call ended" line.
#[derive(Debug, Clone, Copy)]
pub(super) struct MediaStats {
    pub(super) frames_in: u64,
    pub(super) frames_out: u64,
    pub(super) bad_packets: u64,
}

/// The transport's half of one call: its I/O, driven by [`CallCore::drive`].
pub(super) trait CallIo {
    /// Something the transport's own sources produced (a message, a packet, a timer tick).
    type Input;
    /// Who the bot talks to, as the logs name them ("callee", "caller").
    const PEER: &'static str;
    /// What ends the media from the far end, as the logs name it.
    const MEDIA_END: &'static str;

    /// Waits for the transport's next input (never resolving when it has nothing to wait
    /// for). `playing`: clips are queued. Must be cancel-safe: the loop drops it whenever
    /// something else happens first.
    async fn next_input(&mut self, playing: bool) -> Self::Input;
    /// Handles one input: feeds the session through `core`, or answers the network.
    async fn on_input(&mut self, core: &mut CallCore, input: Self::Input);
    /// After each batch of the session's actions during the call (not at its end).
    fn after_actions(&mut self, _core: &mut CallCore) {}
    /// Barge-in: `core` has dropped `dropped` queued clips; stop what is playing.
    async fn stop_playback(&mut self, core: &mut CallCore, dropped: usize);
    /// The session's `HangUp`: end the call from our side.
    async fn hang_up(&mut self, core: &mut CallCore);
    /// The server is shutting down and the grace period is over: cut the call now.
    async fn cut(&mut self, core: &mut CallCore);
    /// The record is being closed: end the call from our side if it is still up.
    async fn close(&mut self, core: &mut CallCore);
    /// Counts for the "call ended" line.
    fn stats(&self) -> Option<MediaStats> {
        None
    }
    /// Called once the end of the call is queued for the store, before waiting for it.
    fn release(self)
    where
        Self: Sized,
    {
    }
}

/// Who and what a call is, as its transport learnt at the start.
pub(super) struct CallStart {
    pub(super) call_id: String,
    /// Twilio's CallSid or the SIP Call-ID (for [`CallEvent::Started`]).
    pub(super) call_sid: String,
    /// The number of the person 李明 talks to, for do-not-call.
    pub(super) to_number: Option<String>,
    /// Call time 0.
    pub(super) t0: Instant,
}

/// The transport-neutral state of one call (see the module header).
pub(super) struct CallCore {
    pub(super) call_id: String,
    to_number: Option<String>,
    pub(super) session: Session,
    t0: Instant,
    pub(super) clips: Arc<ClipLibrary>,
    recognizer: Option<RecognizerPool>,
    events: broadcast::Sender<CallEvent>,
    hard_stop: CancellationToken,
    store: StoreLog,
    asr_tx: mpsc::UnboundedSender<(UtteranceId, Result<Transcript, String>)>,
    asr_rx: mpsc::UnboundedReceiver<(UtteranceId, Result<Transcript, String>)>,
    /// Recognitions under way, to cancel those the session no longer wants.
    recognitions: HashMap<UtteranceId, tokio::task::AbortHandle>,
    /// Clips to send, in order; the transport walks it.
    pub(super) queue: VecDeque<QueuedPlay>,
    /// Turns waiting for the first frame of their reply, to measure the latency.
    pending_turns: Vec<(TurnRecord, Vec<PlayId>)>,
    /// Plays of the action batch being drained (a Turn's reply comes just before it).
    batch_plays: Vec<PlayId>,
    opening_sent: bool,
    /// When the far end went away (or the media was closed): the linger starts.
    gone_at: Option<Instant>,
    interrupted: bool,
    /// The transport lost the line without the far end hanging up.
    line_failed: bool,
    dnc_recorded: bool,
    last_tick: Option<Millis>,
}

impl CallCore {
    /// Creates the call's session and store queue and announces [`CallEvent::Started`].
    /// Call from inside the call's span: the store queue logs in it.
    pub(super) fn new(start: CallStart, env: &CallEnv) -> CallCore {
        let CallStart {
            call_id,
            call_sid,
            to_number,
            t0,
        } = start;
        let session = Session::new(
            &call_id,
            Arc::clone(&env.deps.script),
            env.deps.session.clone(),
        );
        let store = StoreLog::new(env.deps.store.clone());
        let (asr_tx, asr_rx) = mpsc::unbounded_channel();
        let _ = env.events.send(CallEvent::Started {
            call_id: call_id.clone(),
            call_sid,
        });
        CallCore {
            call_id,
            to_number,
            session,
            t0,
            clips: Arc::clone(&env.deps.clips),
            recognizer: env.deps.recognizer.clone(),
            events: env.events.clone(),
            hard_stop: env.live.hard_stop.clone(),
            store,
            asr_tx,
            asr_rx,
            recognitions: HashMap::new(),
            queue: VecDeque::new(),
            pending_turns: Vec::new(),
            batch_plays: Vec::new(),
            opening_sent: false,
            gone_at: None,
            interrupted: false,
            line_failed: false,
            dnc_recorded: false,
            last_tick: None,
        }
    }

    /// Call time now.
    pub(super) fn now(&self) -> Millis {
        self.t0.elapsed().as_millis() as Millis
    }

    /// Queues a call event for the store.
    pub(super) fn event(&self, kind: &'static str, detail: String) {
        let call_id = self.call_id.clone();
        self.store.push(move |s| {
            if let Err(err) = s.record_event(&call_id, kind, &detail) {
                tracing::warn!(%err, kind, "cannot record the event");
            }
        });
    }

    /// The far end is gone (or the media closed): from now on the call only lingers for
    /// pending recognitions.
    pub(super) fn media_gone(&mut self) {
        if self.gone_at.is_none() {
            self.gone_at = Some(Instant::now());
        }
    }

    /// The line failed under the call (the stream or socket lost without the far end
    /// hanging up, a frame that cannot be read): the call ends as `line_failed` unless the
    /// callee's words already decided it, and adds no do-not-call. The transport has
    /// called [`Self::media_gone`] (or does next).
    pub(super) fn line_failed(&mut self, now: Millis, why: &str) {
        tracing::warn!(now, why, "the line failed: not a hang-up, no do-not-call");
        self.line_failed = true;
        self.event("line_failed", why.to_string());
        self.session.on_line_failed(now);
    }

    /// Whether [`Self::media_gone`] was called.
    pub(super) fn is_media_gone(&self) -> bool {
        self.gone_at.is_some()
    }

    /// Runs the call to its end, then writes the end of the call and waits until the store
    /// has it. `started_at`: the call time the session starts at.
    pub(super) async fn drive<T: CallIo>(mut self, mut io: T, started_at: Millis) {
        self.run(&mut io, started_at).await;
        self.finish(io).await;
    }

    async fn run<T: CallIo>(&mut self, io: &mut T, started_at: Millis) {
        self.session.start(started_at);
        self.after_event(io).await;
        let hard_stop = self.hard_stop.clone();

        while !self.session.is_ended() {
            let deadline = self.session.next_deadline().map(|d| {
                // Never spin: a deadline already handled waits for the next millisecond.
                let d = match self.last_tick {
                    Some(last) if d <= last => last + 1,
                    _ => d,
                };
                self.t0 + Duration::from_millis(d)
            });
            let linger_until = self.gone_at.map(|at| {
                at + if self.interrupted {
                    SHUTDOWN_LINGER
                } else {
                    LINGER
                }
            });
            let playing = !self.queue.is_empty();
            tokio::select! {
                biased;
                _ = hard_stop.cancelled(), if !self.interrupted => {
                    self.interrupt(io).await;
                }
                input = io.next_input(playing) => {
                    io.on_input(self, input).await;
                }
                Some((utterance, result)) = self.asr_rx.recv() => {
                    self.recognitions.remove(&utterance);
                    let transcript = match result {
                        Ok(t) => t,
                        Err(err) => {
                            tracing::warn!(utterance, %err, "recognition failed; treating the utterance as empty");
                            Transcript::default()
                        }
                    };
                    let now = self.now();
                    self.session.on_transcript(now, utterance, transcript);
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    let now = self.now();
                    self.last_tick = Some(now);
                    self.session.on_tick(now);
                }
                _ = sleep_until_opt(linger_until), if linger_until.is_some() => {
                    tracing::warn!("the session did not settle after {}; ending the record", T::MEDIA_END);
                    break;
                }
            }
            self.after_event(io).await;
        }
    }

    /// Drains the session's actions, then lets the transport send what is due.
    async fn after_event<T: CallIo>(&mut self, io: &mut T) {
        self.drain_actions(io).await;
        io.after_actions(self);
    }

    /// Applies every action the session has queued, as one batch.
    async fn drain_actions<T: CallIo>(&mut self, io: &mut T) {
        self.batch_plays.clear();
        while let Some(action) = self.session.poll_action() {
            self.apply(action, io).await;
        }
    }

    /// Records the turns still waiting for a reply frame that will never come.
    fn flush_pending_turns(&mut self) {
        for (turn, _) in std::mem::take(&mut self.pending_turns) {
            self.record_turn(turn, None);
        }
    }

    async fn apply<T: CallIo>(&mut self, action: Action, io: &mut T) {
        match action {
            Action::Play { play_id, line } => {
                tracing::debug!(play_id, %line, "queue clip");
                self.batch_plays.push(play_id);
                self.queue.push_back(QueuedPlay {
                    play_id,
                    line,
                    offset: 0,
                    started: false,
                });
            }
            Action::StopPlayback => {
                let dropped = self.queue.len();
                self.queue.clear();
                self.batch_plays.clear();
                io.stop_playback(self, dropped).await;
                // Replies that never got a frame out have no latency to measure.
                self.flush_pending_turns();
            }
            Action::Recognize {
                utterance,
                audio_16k,
                speech_end,
            } => {
                tracing::debug!(
                    utterance,
                    speech_end,
                    samples = audio_16k.len(),
                    "recognize"
                );
                let tx = self.asr_tx.clone();
                match self.recognizer.clone() {
                    Some(pool) => {
                        let task = tokio::spawn(
                            async move {
                                let result = match pool.recognize(audio_16k).await {
                                    Ok((transcript, decode_ms)) => {
                                        tracing::debug!(utterance, decode_ms, text = %transcript.text, "recognized");
                                        Ok(transcript)
                                    }
                                    Err(err) => Err(err.to_string()),
                                };
                                let _ = tx.send((utterance, result));
                            }
                            .in_current_span(),
                        );
                        self.recognitions.insert(utterance, task.abort_handle());
                    }
                    None => {
                        let _ = tx.send((utterance, Err("recognition is disabled".into())));
                    }
                }
            }
            Action::CancelRecognition { utterance } => {
                // Dropping the task drops its reply channel; a worker that has not started on
                // the utterance skips it.
                if let Some(task) = self.recognitions.remove(&utterance) {
                    task.abort();
                }
            }
            Action::Turn(turn) => {
                if self.batch_plays.is_empty() {
                    self.record_turn(turn, None);
                } else {
                    self.pending_turns
                        .push((turn, std::mem::take(&mut self.batch_plays)));
                }
            }
            Action::DoNotCall { reason } => {
                if self.interrupted {
                    tracing::warn!(%reason, "do-not-call from a call cut by shutdown: not recorded");
                    return;
                }
                self.dnc_recorded = true;
                match self.to_number.clone() {
                    Some(number) => {
                        tracing::info!(%number, %reason, "do-not-call");
                        let call_id = self.call_id.clone();
                        self.store.push(move |s| {
                            if let Err(err) = s.add_dnc(&number, &reason, Some(&call_id)) {
                                tracing::error!(%err, "cannot add the number to the do-not-call list");
                            }
                            if let Err(err) = s.record_event(&call_id, "do_not_call", &reason) {
                                tracing::warn!(%err, "cannot record the do-not-call event");
                            }
                        });
                    }
                    None => tracing::error!(
                        %reason,
                        "do-not-call requested but the {}'s number is unknown",
                        T::PEER
                    ),
                }
            }
            Action::HangUp => io.hang_up(self).await,
        }
    }

    fn record_turn(&mut self, turn: TurnRecord, latency_ms: Option<u64>) {
        tracing::info!(transcript = %turn.transcript, intents = ?turn.intents, reply = ?turn.reply, ?latency_ms, "turn");
        let _ = self.events.send(CallEvent::Turn {
            call_id: self.call_id.clone(),
            turn: turn.clone(),
            latency_ms,
        });
        let call_id = self.call_id.clone();
        self.store.push(move |s| {
            if let Err(err) = s.record_turn(&call_id, &turn, latency_ms) {
                tracing::error!(%err, "cannot record the turn");
            }
        });
    }

    /// The transport sent the first frame of a clip: the opening delay (first clip of the
    /// call) and the latency of the turns this clip replies to.
    pub(super) fn first_frame_sent(&mut self, play_id: PlayId) {
        let now = self.now();
        if !self.opening_sent {
            self.opening_sent = true;
            tracing::info!(delay_ms = now, "opening line started");
            let _ = self.events.send(CallEvent::OpeningSent {
                call_id: self.call_id.clone(),
                delay_ms: now,
            });
            self.event("opening_delay_ms", now.to_string());
        }
        let mut i = 0;
        while i < self.pending_turns.len() {
            if self.pending_turns[i].1.contains(&play_id) {
                let (turn, _) = self.pending_turns.remove(i);
                let latency = now.saturating_sub(turn.speech_end);
                self.record_turn(turn, Some(latency));
            } else {
                i += 1;
            }
        }
    }

    /// The server is stopping and the grace period is over: end the call now.
    async fn interrupt<T: CallIo>(&mut self, io: &mut T) {
        self.interrupted = true;
        let now = self.now();
        tracing::warn!(now, "server shutting down: cutting the call");
        self.event(
            "interrupted",
            "server shut down before the call finished; the outcome below is not the callee's"
                .into(),
        );
        io.cut(self).await;
        if !self.session.is_ended() {
            self.session.on_hangup(now);
        }
    }

    /// Writes the end of the call and waits until the store has it.
    async fn finish<T: CallIo>(mut self, mut io: T) {
        // Whatever the last batch produced (the session may end on the same event).
        self.drain_actions(&mut io).await;
        self.flush_pending_turns();
        io.close(&mut self).await;
        let now = self.now();
        let summary = self.session.summary();
        let (outcome, mut dnc, duration) = match &summary {
            Some(s) => (s.outcome, s.do_not_call, s.ended_at),
            // The session did not settle within the linger: nobody heard a refusal.
            None if self.line_failed => (Outcome::LineFailed, false, now),
            None => (Outcome::CalleeHangup, false, now),
        };
        if self.interrupted {
            dnc = self.dnc_recorded;
        }
        let stats = io.stats();
        tracing::info!(
            outcome = %outcome,
            do_not_call = dnc,
            duration_ms = duration,
            frames_in = stats.map(|s| s.frames_in),
            frames_out = stats.map(|s| s.frames_out),
            bad_packets = stats.map(|s| s.bad_packets),
            "call ended"
        );
        let call_id = self.call_id.clone();
        self.store.push(move |s| {
            if let Err(err) = s.finish_call(&call_id, outcome, dnc, duration) {
                tracing::error!(%err, "cannot record the end of the call");
            }
        });
        io.release();
        self.store.flush().await;
        let _ = self.events.send(CallEvent::Ended {
            call_id: self.call_id,
            summary,
        });
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
