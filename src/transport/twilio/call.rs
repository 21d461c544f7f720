//! One live call on a Media Streams WebSocket: the thin driver around [`Session`].
//!
//! Each connection runs in its own task. It reads Twilio's messages, decodes the callee's
//! μ-law audio into the session, sends 李明's clips back as 20 ms `media` frames paced in
//! real time (never more than [`LEAD`] ahead of the wall clock), follows each clip with a
//! `mark` named after its `PlayId`, answers barge-in with `clear`, runs recognition on the
//! shared pool in spawned tasks, fires the session's timers, and writes everything to the
//! store through an ordered per-call queue. Writing to the socket goes through a bounded
//! channel to a writer task, so a slow socket only ever slows its own call.

use crate::asr::RecognizerPool;
use crate::audio::clips::ClipLibrary;
use crate::audio::{FRAME_MS, FRAME_SAMPLES, mulaw};
use crate::dialog::Script;
use crate::labels::Outcome;
use crate::session::{
    Action, CallSummary, Millis, PlayId, Session, SessionConfig, Transcript, TurnRecord,
    UtteranceId,
};
use crate::store::{NewCall, Store, normalize_number};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::protocol::{self, Inbound, StartInfo};
use super::rest::{Completion, TwilioRest};

/// How far ahead of real time outgoing audio may run (Twilio buffers it). Enough to ride
/// over a late timer tick, small enough that `clear` and the end of a clip stay precise.
pub const LEAD: Duration = Duration::from_millis(60);
/// Messages waiting for the socket writer of one call.
const OUT_QUEUE: usize = 32;
/// A connection that sends no `start` within this time is closed.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// After the socket is gone, how long to wait for pending recognitions to settle the outcome.
const LINGER: Duration = Duration::from_secs(20);
/// The same, when the server is shutting down.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(3);

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

/// Things that happened on calls, for metrics and tests (a broadcast; nobody has to listen).
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// The `start` message arrived.
    Started { call_id: String, call_sid: String },
    /// The first audio frame of the opening line went out, `delay_ms` after `start`.
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
#[derive(Clone)]
pub(crate) struct LiveCalls {
    count: Arc<tokio::sync::watch::Sender<usize>>,
    pub(crate) hard_stop: CancellationToken,
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
            hard_stop: CancellationToken::new(),
        }
    }

    pub(crate) fn enter(&self) -> LiveGuard {
        self.count.send_modify(|c| *c += 1);
        LiveGuard(Arc::clone(&self.count))
    }

    pub(crate) fn live(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until no call is live; false on timeout.
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c == 0))
            .await
            .is_ok()
    }
}

/// Everything the call driver needs from the server.
#[derive(Clone)]
pub(crate) struct CallEnv {
    pub(crate) deps: CallDeps,
    pub(crate) rest: Option<TwilioRest>,
    pub(crate) events: broadcast::Sender<CallEvent>,
    pub(crate) live: LiveCalls,
}

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
struct QueuedPlay {
    play_id: PlayId,
    line: String,
    offset: usize,
    started: bool,
}

/// Runs one WebSocket connection to its end. Never panics on anything Twilio sends.
pub(crate) async fn run(socket: WebSocket, env: CallEnv, conn: u64) {
    let span = tracing::info_span!("call", call_id = tracing::field::Empty, conn);
    drive(socket, env).instrument(span).await;
}

async fn drive(socket: WebSocket, env: CallEnv) {
    let _live = env.live.enter();
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::spawn(write_loop(sink, out_rx).in_current_span());

    // Before `start` there is no call yet: only `connected` is expected.
    let deadline = Instant::now() + START_TIMEOUT;
    let mut early_media = 0u64;
    let start = loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("no `start` message within {START_TIMEOUT:?}; closing the socket");
                break None;
            }
            _ = env.live.hard_stop.cancelled() => break None,
        };
        let text = match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                tracing::info!("socket closed before the stream started");
                break None;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                tracing::warn!("binary frame before start ignored (Twilio sends JSON text)");
                continue;
            }
            Some(Ok(_)) => continue,
        };
        match protocol::parse_inbound(text.as_str()) {
            Ok(Inbound::Connected { protocol, version }) => {
                tracing::debug!(%protocol, %version, "connected");
            }
            Ok(Inbound::Start(start)) => break Some(start),
            Ok(Inbound::Media { .. }) => {
                early_media += 1;
                if early_media == 1 {
                    tracing::warn!("media before `start` ignored");
                }
            }
            Ok(Inbound::Stop { .. }) => {
                tracing::info!("stream stopped before it started");
                break None;
            }
            Ok(other) => tracing::warn!(?other, "message before `start` ignored"),
            Err(err) => {
                tracing::warn!(%err, "bad message before `start` ignored");
            }
        }
    };

    if let Some(start) = start {
        let t0 = Instant::now();
        let mut call = CallDriver::new(env, start, t0, out_tx);
        call.run(&mut stream).await;
        call.finish().await;
    } else {
        let _ = out_tx.try_send(Message::Close(None));
        drop(out_tx);
    }
    if let Err(err) = writer.await {
        tracing::error!(%err, "socket writer failed");
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(msg) = rx.recv().await {
        let close = matches!(msg, Message::Close(_));
        if let Err(err) = sink.send(msg).await {
            tracing::debug!(%err, "socket write failed; dropping further output");
            break;
        }
        if close {
            break;
        }
    }
    let _ = sink.close().await;
}

struct CallDriver {
    env: CallEnv,
    call_id: String,
    call_sid: String,
    stream_sid: String,
    to_number: Option<String>,
    session: Session,
    t0: Instant,
    out: mpsc::Sender<Message>,
    store: StoreLog,
    asr_tx: mpsc::UnboundedSender<(UtteranceId, Result<Transcript, String>)>,
    asr_rx: mpsc::UnboundedReceiver<(UtteranceId, Result<Transcript, String>)>,
    /// Recognitions under way, to cancel those the session no longer wants.
    recognitions: HashMap<UtteranceId, tokio::task::AbortHandle>,
    queue: VecDeque<QueuedPlay>,
    /// When the audio already sent will have finished playing at Twilio.
    playout_end: Instant,
    /// Turns waiting for the first frame of their reply, to measure the latency.
    pending_turns: Vec<(TurnRecord, Vec<PlayId>)>,
    /// Plays of the action batch being drained (a Turn's reply comes just before it).
    batch_plays: Vec<PlayId>,
    opening_sent: bool,
    socket_open: bool,
    socket_gone_at: Option<Instant>,
    interrupted: bool,
    dnc_recorded: bool,
    last_tick: Option<Millis>,
    bad_messages: u64,
}

impl CallDriver {
    fn new(env: CallEnv, start: StartInfo, t0: Instant, out: mpsc::Sender<Message>) -> Self {
        let params = &start.custom_parameters;
        let call_id = params
            .get("call_id")
            .filter(|id| !id.is_empty() && id.len() <= 100)
            .cloned()
            .unwrap_or_else(|| format!("twilio-{}", uuid::Uuid::new_v4()));
        tracing::Span::current().record("call_id", call_id.as_str());
        let to_number = match params.get("to").map(|n| normalize_number(n)) {
            Some(Ok(n)) => Some(n),
            Some(Err(err)) => {
                tracing::warn!(%err, "the `to` parameter is not a phone number");
                None
            }
            None => {
                tracing::warn!("no `to` parameter: do-not-call requests cannot be recorded");
                None
            }
        };
        tracing::info!(call_sid = %start.call_sid, stream_sid = %start.stream_sid, to = ?to_number, "stream started");
        let session = Session::new(
            &call_id,
            Arc::clone(&env.deps.script),
            env.deps.session.clone(),
        );
        let store = StoreLog::new(env.deps.store.clone());
        let (asr_tx, asr_rx) = mpsc::unbounded_channel();
        let _ = env.events.send(CallEvent::Started {
            call_id: call_id.clone(),
            call_sid: start.call_sid.clone(),
        });
        // Record the call (or attach the stream to the record `place_call` made).
        {
            let call_id = call_id.clone();
            let new_call = NewCall {
                call_id: call_id.clone(),
                transport: "twilio".into(),
                to_number: to_number.clone(),
                from_number: params.get("from").cloned(),
                call_sid: Some(start.call_sid.clone()),
                stream_sid: Some(start.stream_sid.clone()),
                started_at: time::OffsetDateTime::now_utc(),
            };
            store.push(move |s| {
                let known = match s.get_call(&call_id) {
                    Ok(row) => row.is_some(),
                    Err(err) => {
                        tracing::error!(%err, "cannot look the call up");
                        false
                    }
                };
                let result = if known {
                    s.set_stream(
                        &call_id,
                        new_call.call_sid.as_deref().unwrap_or_default(),
                        new_call.stream_sid.as_deref().unwrap_or_default(),
                    )
                } else {
                    s.start_call(&new_call)
                };
                if let Err(err) = result {
                    tracing::error!(%err, "cannot record the call start");
                }
            });
        }
        CallDriver {
            env,
            call_id,
            call_sid: start.call_sid,
            stream_sid: start.stream_sid,
            to_number,
            session,
            t0,
            out,
            store,
            asr_tx,
            asr_rx,
            recognitions: HashMap::new(),
            queue: VecDeque::new(),
            playout_end: t0,
            pending_turns: Vec::new(),
            batch_plays: Vec::new(),
            opening_sent: false,
            socket_open: true,
            socket_gone_at: None,
            interrupted: false,
            dnc_recorded: false,
            last_tick: None,
            bad_messages: 0,
        }
    }

    fn now(&self) -> Millis {
        self.t0.elapsed().as_millis() as Millis
    }

    async fn run(&mut self, stream: &mut futures_util::stream::SplitStream<WebSocket>) {
        self.session.start(0);
        self.after_event().await;
        let mut ticker = tokio::time::interval(Duration::from_millis(FRAME_MS));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let hard_stop = self.env.live.hard_stop.clone();

        while !self.session.is_ended() {
            let deadline = self.session.next_deadline().map(|d| {
                // Never spin: a deadline already handled waits for the next millisecond.
                let d = match self.last_tick {
                    Some(last) if d <= last => last + 1,
                    _ => d,
                };
                self.t0 + Duration::from_millis(d)
            });
            let linger_until = self.socket_gone_at.map(|at| {
                at + if self.interrupted {
                    SHUTDOWN_LINGER
                } else {
                    LINGER
                }
            });
            let pumping = self.socket_open && !self.queue.is_empty();
            tokio::select! {
                biased;
                _ = hard_stop.cancelled(), if !self.interrupted => {
                    self.interrupt();
                }
                msg = stream.next(), if self.socket_open => {
                    self.on_message(msg);
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
                _ = ticker.tick(), if pumping => {}
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    let now = self.now();
                    self.last_tick = Some(now);
                    self.session.on_tick(now);
                }
                _ = sleep_until_opt(linger_until), if linger_until.is_some() => {
                    tracing::warn!("the session did not settle after the socket closed; ending the record");
                    break;
                }
            }
            self.after_event().await;
        }
    }

    /// Drains the session's actions, then sends whatever audio is due.
    async fn after_event(&mut self) {
        self.batch_plays.clear();
        while let Some(action) = self.session.poll_action() {
            self.apply(action).await;
        }
        self.pump();
    }

    async fn apply(&mut self, action: Action) {
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
                self.playout_end = Instant::now();
                tracing::info!(dropped, "barge-in: clear");
                if self.socket_open {
                    self.send_control(protocol::clear_message(&self.stream_sid))
                        .await;
                }
                // Replies that never got a frame out have no latency to measure.
                for (turn, _) in std::mem::take(&mut self.pending_turns) {
                    self.record_turn(turn, None);
                }
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
                match self.env.deps.recognizer.clone() {
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
                    None => {
                        tracing::error!(%reason, "do-not-call requested but the callee's number is unknown")
                    }
                }
            }
            Action::HangUp => {
                tracing::info!("hanging up: closing the stream");
                self.close_socket().await;
                self.complete_via_rest();
            }
        }
    }

    fn record_turn(&mut self, turn: TurnRecord, latency_ms: Option<u64>) {
        tracing::info!(transcript = %turn.transcript, intents = ?turn.intents, reply = ?turn.reply, ?latency_ms, "turn");
        let _ = self.env.events.send(CallEvent::Turn {
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

    /// Sends the audio that is due: frames until the playout runs `LEAD` ahead of now, and
    /// each clip's mark right after its last frame. Never waits.
    fn pump(&mut self) {
        if !self.socket_open {
            return;
        }
        let now = Instant::now();
        if self.playout_end < now {
            self.playout_end = now;
        }
        let clips = Arc::clone(&self.env.deps.clips);
        while let Some(front) = self.queue.front() {
            let (play_id, offset, started) = (front.play_id, front.offset, front.started);
            let clip = clips.get(&front.line);
            let total = clip.map_or(0, |c| c.mulaw.len());
            if clip.is_none() && !started {
                tracing::error!(line = %front.line, "no clip for this line; skipping it");
            }
            if offset >= total {
                let msg = protocol::mark_message(&self.stream_sid, &play_id.to_string());
                if !self.try_send(msg) {
                    return;
                }
                self.queue.pop_front();
                continue;
            }
            if self.playout_end >= now + LEAD {
                return;
            }
            let Some(clip) = clip else { return };
            let end = (offset + FRAME_SAMPLES).min(total);
            let mut frame = clip.mulaw[offset..end].to_vec();
            // The last frame is padded with μ-law silence to a full 20 ms.
            frame.resize(FRAME_SAMPLES, 0xFF);
            if !self.try_send(protocol::media_message(&self.stream_sid, &frame)) {
                return;
            }
            if let Some(front) = self.queue.front_mut() {
                front.started = true;
                front.offset = end;
            }
            self.playout_end += Duration::from_millis(FRAME_MS);
            if !started {
                self.first_frame_sent(play_id);
            }
        }
    }

    fn first_frame_sent(&mut self, play_id: PlayId) {
        let now = self.now();
        if !self.opening_sent {
            self.opening_sent = true;
            tracing::info!(delay_ms = now, "opening line started");
            let _ = self.env.events.send(CallEvent::OpeningSent {
                call_id: self.call_id.clone(),
                delay_ms: now,
            });
            let call_id = self.call_id.clone();
            self.store.push(move |s| {
                if let Err(err) = s.record_event(&call_id, "opening_delay_ms", &now.to_string()) {
                    tracing::warn!(%err, "cannot record the opening delay");
                }
            });
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

    fn try_send(&mut self, text: String) -> bool {
        match self.out.try_send(Message::Text(text.into())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.socket_gone();
                false
            }
        }
    }

    async fn send_control(&mut self, text: String) {
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            self.out.send(Message::Text(text.into())),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.socket_gone(),
            Err(_) => tracing::warn!("socket too slow: a control message was not queued"),
        }
    }

    async fn close_socket(&mut self) {
        if self.socket_open {
            let frame = CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: "call finished".into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.out.send(Message::Close(Some(frame))),
            )
            .await;
        }
        self.queue.clear();
        self.socket_gone();
    }

    fn socket_gone(&mut self) {
        self.socket_open = false;
        if self.socket_gone_at.is_none() {
            self.socket_gone_at = Some(Instant::now());
        }
    }

    /// Fallback after closing the stream: end the call through the Calls API too.
    fn complete_via_rest(&self) {
        let Some(rest) = self.env.rest.clone() else {
            return;
        };
        if self.call_sid.is_empty() {
            return;
        }
        let call_sid = self.call_sid.clone();
        let call_id = self.call_id.clone();
        let store = self.env.deps.store.clone();
        tokio::spawn(
            async move {
                let detail = match rest.complete_call(&call_sid).await {
                    Ok(Completion::Completed) => "completed via the Calls API".to_string(),
                    Ok(Completion::AlreadyEnded) => "already ended".to_string(),
                    Err(err) => {
                        tracing::warn!(%err, "Status=completed fallback failed");
                        format!("failed: {err}")
                    }
                };
                tracing::debug!(%detail, "Status=completed fallback");
                let _ = tokio::task::spawn_blocking(move || {
                    store.record_event(&call_id, "rest_hangup", &detail)
                })
                .await;
            }
            .in_current_span(),
        );
    }

    fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) {
        let now = self.now();
        let text = match msg {
            None => {
                tracing::info!(now, "socket closed by the far end: callee hung up");
                self.socket_gone();
                self.session.on_hangup(now);
                return;
            }
            Some(Err(err)) => {
                tracing::info!(now, %err, "socket dropped: treating as hang-up");
                self.socket_gone();
                self.session.on_hangup(now);
                return;
            }
            Some(Ok(Message::Close(frame))) => {
                tracing::info!(now, ?frame, "socket closed by Twilio: call over");
                self.socket_gone();
                self.session.on_hangup(now);
                return;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                self.bad_message("binary frame (Twilio sends JSON text)");
                return;
            }
            Some(Ok(_)) => return,
        };
        match protocol::parse_inbound(text.as_str()) {
            Ok(Inbound::Media { payload, .. }) => {
                let samples = mulaw::decode_all(&payload);
                self.session.on_audio(now, &samples);
            }
            Ok(Inbound::Mark { name }) => match name.parse::<PlayId>() {
                Ok(play_id) => {
                    tracing::debug!(play_id, "mark back: clip played");
                    self.session.on_playback_finished(now, play_id);
                }
                Err(_) => tracing::debug!(%name, "mark that is not ours ignored"),
            },
            Ok(Inbound::Dtmf { digit }) => {
                tracing::info!(%digit, "dtmf");
                self.session.on_dtmf(now, digit);
            }
            Ok(Inbound::Stop { .. }) => {
                tracing::info!(now, "stream stopped: call over");
                self.socket_gone();
                self.session.on_hangup(now);
            }
            Ok(Inbound::Start(_)) => self.bad_message("a second `start` ignored"),
            Ok(Inbound::Connected { .. }) => {}
            Ok(Inbound::Unknown { event }) => {
                tracing::warn!(%event, "unknown event ignored");
            }
            Err(err) => self.bad_message(&err.to_string()),
        }
    }

    fn bad_message(&mut self, what: &str) {
        self.bad_messages += 1;
        // The first few in full; after that a flood is only counted.
        if self.bad_messages <= 5 || self.bad_messages.is_power_of_two() {
            tracing::warn!(count = self.bad_messages, "bad message ignored: {what}");
        }
    }

    /// The server is stopping and the grace period is over: end the call now.
    fn interrupt(&mut self) {
        self.interrupted = true;
        let now = self.now();
        tracing::warn!(now, "server shutting down: cutting the call");
        let call_id = self.call_id.clone();
        self.store.push(move |s| {
            let _ = s.record_event(
                &call_id,
                "interrupted",
                "server shut down before the call finished; the outcome below is not the callee's",
            );
        });
        if self.socket_open {
            let _ = self.out.try_send(Message::Close(None));
        }
        self.socket_gone();
        if !self.session.is_ended() {
            self.session.on_hangup(now);
        }
    }

    /// Writes the end of the call and waits until the store has it.
    async fn finish(mut self) {
        // Whatever the last batch produced (the session may end on the same event).
        self.batch_plays.clear();
        while let Some(action) = self.session.poll_action() {
            self.apply(action).await;
        }
        for (turn, _) in std::mem::take(&mut self.pending_turns) {
            self.record_turn(turn, None);
        }
        if self.socket_open {
            self.close_socket().await;
        }
        let now = self.now();
        let summary = self.session.summary();
        let (outcome, mut dnc, duration) = match &summary {
            Some(s) => (s.outcome, s.do_not_call, s.ended_at),
            None => (Outcome::CalleeHangup, false, now),
        };
        if self.interrupted {
            dnc = self.dnc_recorded;
        }
        tracing::info!(outcome = %outcome, do_not_call = dnc, duration_ms = duration, "call ended");
        let call_id = self.call_id.clone();
        self.store.push(move |s| {
            if let Err(err) = s.finish_call(&call_id, outcome, dnc, duration) {
                tracing::error!(%err, "cannot record the end of the call");
            }
        });
        let events = self.env.events.clone();
        let call_id = self.call_id.clone();
        drop(self.out);
        self.store.flush().await;
        let _ = events.send(CallEvent::Ended { call_id, summary });
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
