//! One live call on a Media Streams WebSocket: Twilio's half of a call, driven by
//! `transport::driver::CallCore` around the [`Session`](crate::session::Session).
//!
//! Each connection runs in its own task. It waits for Twilio's `start` and admits it only
//! with a valid one-time stream token from `/twiml` ([`super::stream_token`]), for a call
//! id no other stream holds, whose record has no stream yet, to a callee not on the
//! do-not-call list; anything else is closed at once with nothing recorded. Then it reads
//! Twilio's messages and decodes the callee's μ-law audio into the session, sends 李明's
//! clips back as 20 ms `media` frames paced in real time (never more than [`LEAD`] ahead of
//! the wall clock), follows each clip with a `mark` named after its `PlayId` (the mark
//! coming back is the end of playback; one not back [`MARK_GRACE`] after the clip's end
//! counts as played), answers barge-in with `clear`, and hangs up by closing the stream and
//! then completing the call through the Calls API. A socket lost without Twilio's `stop`
//! (reset, closed, an unreadable or oversized frame) is a failed line, not a hang-up.
//! Recognition, timers, turns and the store are the core's. Writing to the socket goes
//! through a bounded channel to a writer task, so a slow socket only ever slows its own
//! call.

use crate::audio::{FRAME_MS, FRAME_SAMPLES, mulaw};
use crate::session::PlayId;
use crate::store::{NewCall, Store, StoreError, normalize_number};
use crate::transport::calls::CallEnv;
use crate::transport::driver::{CallCore, CallIo, CallStart};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::Instrument;

use super::protocol::{self, Inbound, StartInfo};
use super::rest::{Completion, TwilioRest};
use super::stream_token::{StreamTokens, unix_now};

/// How far ahead of real time outgoing audio may run (Twilio buffers it). Enough to ride
/// over a late timer tick, small enough that `clear` and the end of a clip stay precise.
pub const LEAD: Duration = Duration::from_millis(60);
/// Messages waiting for the socket writer of one call.
const OUT_QUEUE: usize = 32;
/// A connection that sends no `start` within this time is closed.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a clip's end (its last frame played out at Twilio) its mark may take to
/// come back before the clip counts as played anyway: a mark lost on the way must not
/// stall the call (no silence timer, no hang-up after the closing line).
pub const MARK_GRACE: Duration = Duration::from_secs(2);

/// Everything the call driver needs from the server.
#[derive(Clone)]
pub(crate) struct TwilioEnv {
    pub(crate) call: CallEnv,
    /// The Calls API client for the hang-up fallback, when the account is known.
    pub(crate) rest: Option<TwilioRest>,
    /// Issued by `/twiml`, redeemed by `start`.
    pub(crate) tokens: Arc<StreamTokens>,
    /// Call ids with a stream in this process.
    pub(crate) streams: Arc<LiveStreams>,
}

/// The call ids that have a live stream, so a second stream for one call is refused
/// before it can touch the call's record.
#[derive(Default)]
pub(crate) struct LiveStreams(Mutex<HashSet<String>>);

/// Holds a call id in [`LiveStreams`] until dropped.
struct StreamClaim {
    streams: Arc<LiveStreams>,
    call_id: String,
}

impl LiveStreams {
    fn claim(self: &Arc<Self>, call_id: &str) -> Option<StreamClaim> {
        let mut live = self.0.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(call_id.to_string()).then(|| StreamClaim {
            streams: Arc::clone(self),
            call_id: call_id.to_string(),
        })
    }
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        let mut live = self.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.call_id);
    }
}

/// Why a `start` was not made a call.
#[derive(Debug, thiserror::Error)]
enum NotAdmitted {
    #[error("{0}")]
    Token(#[from] super::stream_token::Refusal),
    #[error("the `{0}` parameter is missing or invalid")]
    Parameter(&'static str),
    #[error("another stream is live for this call")]
    Live,
    #[error("the call already has a stream or has ended; its record is kept as it is")]
    Taken,
    #[error("the call's record belongs to CallSid {0}")]
    OtherCall(String),
    #[error("the callee is on the do-not-call list")]
    DoNotCall,
    #[error("cannot check or record the call: {0}")]
    Store(String),
}

/// A `start` made a call: who it is, and its hold on the call id.
struct Admitted {
    call_id: String,
    to_number: String,
    _claim: StreamClaim,
}

/// Runs one WebSocket connection to its end. Never panics on anything Twilio sends.
pub(crate) async fn run(socket: WebSocket, env: TwilioEnv, conn: u64) {
    let span = tracing::info_span!("call", call_id = tracing::field::Empty, conn);
    drive(socket, env).instrument(span).await;
}

async fn drive(socket: WebSocket, env: TwilioEnv) {
    let _live = env.call.live.enter();
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
            _ = env.call.live.hard_stop.cancelled() => break None,
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

    let admitted = match start {
        Some(start) => match admit(&env, &start).await {
            Ok(admitted) => Some((start, admitted)),
            Err(why) => {
                refuse(&out_tx, &start, &why);
                None
            }
        },
        None => None,
    };
    if let Some((start, admitted)) = admitted {
        let _started = env.call.live.call_started();
        let t0 = Instant::now();
        let (core, io) = start_call(&env, start, &admitted, t0, out_tx, &mut stream);
        core.drive(io, 0).await;
        drop(admitted);
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

/// Decides whether `start` is a call: its token (issued by `/twiml` for this CallSid and
/// exactly these parameters, unexpired, unused), a call id no other stream holds, a callee
/// not on the do-not-call list, and a record it may take — a new one, or the one
/// `place_call` made for this CallSid that has no stream and no end yet. Records the call
/// (or attaches the stream to its record) before anything is played.
async fn admit(env: &TwilioEnv, start: &StartInfo) -> Result<Admitted, NotAdmitted> {
    let params = &start.custom_parameters;
    env.tokens.redeem(&start.call_sid, params, unix_now())?;
    // `/twiml` issued these; with a valid token they are as it wrote them.
    let call_id = params
        .get("call_id")
        .filter(|id| !id.is_empty() && id.len() <= 100)
        .cloned()
        .ok_or(NotAdmitted::Parameter("call_id"))?;
    let to_number = params
        .get("to")
        .and_then(|n| normalize_number(n).ok())
        .ok_or(NotAdmitted::Parameter("to"))?;
    let claim = env.streams.claim(&call_id).ok_or(NotAdmitted::Live)?;
    let new_call = NewCall {
        call_id: call_id.clone(),
        transport: "twilio".into(),
        to_number: Some(to_number.clone()),
        from_number: params.get("from").cloned(),
        call_sid: Some(start.call_sid.clone()),
        stream_sid: Some(start.stream_sid.clone()),
        started_at: time::OffsetDateTime::now_utc(),
    };
    let store = env.call.deps.store.clone();
    let recorded = tokio::task::spawn_blocking(move || record_start(&store, &new_call)).await;
    match recorded {
        Ok(Ok(())) => Ok(Admitted {
            call_id,
            to_number,
            _claim: claim,
        }),
        Ok(Err(why)) => Err(why),
        Err(err) => Err(NotAdmitted::Store(format!("the store task failed: {err}"))),
    }
}

/// The store side of [`admit`]; the caller holds the call id's [`StreamClaim`], so nothing
/// else in this process writes the record between the check and the write.
fn record_start(store: &Store, call: &NewCall) -> Result<(), NotAdmitted> {
    let failed = |err: StoreError| NotAdmitted::Store(err.to_string());
    let to = call.to_number.as_deref().unwrap_or_default();
    // Respect the callee: when the list cannot be read, do not talk to the number.
    if store.is_dnc(to).map_err(failed)? {
        return Err(NotAdmitted::DoNotCall);
    }
    let call_sid = call.call_sid.as_deref().unwrap_or_default();
    let stream_sid = call.stream_sid.as_deref().unwrap_or_default();
    match store.get_call(&call.call_id).map_err(failed)? {
        None => match store.start_call(call) {
            Ok(()) => Ok(()),
            Err(StoreError::DuplicateCall { .. }) => Err(NotAdmitted::Taken),
            Err(err) => Err(failed(err)),
        },
        Some(row)
            if row.stream_sid.is_some() || row.outcome.is_some() || row.ended_at.is_some() =>
        {
            Err(NotAdmitted::Taken)
        }
        Some(row) if row.call_sid.as_deref().is_some_and(|sid| sid != call_sid) => {
            Err(NotAdmitted::OtherCall(row.call_sid.unwrap_or_default()))
        }
        Some(_) => store
            .set_stream(&call.call_id, call_sid, stream_sid)
            .map_err(failed),
    }
}

/// Closes a stream that is not a call. Nothing is recorded: the parameters are not to be
/// believed, so no record of theirs is touched.
fn refuse(out: &mpsc::Sender<Message>, start: &StartInfo, why: &NotAdmitted) {
    let claimed_call_id = start.custom_parameters.get("call_id");
    let claimed_to = start.custom_parameters.get("to");
    match why {
        NotAdmitted::Store(err) => tracing::error!(
            call_sid = %start.call_sid, ?claimed_call_id, %err,
            "stream refused: the store cannot check or record the call"
        ),
        NotAdmitted::DoNotCall => tracing::warn!(
            call_sid = %start.call_sid, ?claimed_call_id, ?claimed_to,
            "stream refused: the callee was put on the do-not-call list after the webhook"
        ),
        NotAdmitted::Token(_) | NotAdmitted::Parameter(_) => tracing::warn!(
            call_sid = %start.call_sid, stream_sid = %start.stream_sid, ?claimed_call_id, ?claimed_to,
            "forged stream refused, closing it, nothing recorded: {why}"
        ),
        NotAdmitted::Live | NotAdmitted::Taken | NotAdmitted::OtherCall(_) => tracing::warn!(
            call_sid = %start.call_sid, stream_sid = %start.stream_sid, ?claimed_call_id,
            "second stream for one call refused, closing it, nothing recorded: {why}"
        ),
    }
    let frame = CloseFrame {
        code: axum::extract::ws::close_code::POLICY,
        reason: "stream refused".into(),
    };
    let _ = out.try_send(Message::Close(Some(frame)));
}

/// Sets up both halves of an admitted call (its record is already written).
fn start_call<'a>(
    env: &TwilioEnv,
    start: StartInfo,
    admitted: &Admitted,
    t0: Instant,
    out: mpsc::Sender<Message>,
    stream: &'a mut SplitStream<WebSocket>,
) -> (CallCore, StreamIo<'a>) {
    let call_id = admitted.call_id.clone();
    tracing::Span::current().record("call_id", call_id.as_str());
    tracing::info!(call_sid = %start.call_sid, stream_sid = %start.stream_sid, to = %admitted.to_number, "stream started");
    let core = CallCore::new(
        CallStart {
            call_id,
            call_sid: start.call_sid.clone(),
            to_number: Some(admitted.to_number.clone()),
            t0,
        },
        &env.call,
    );
    let io = StreamIo {
        stream,
        out,
        rest: env.rest.clone(),
        store: env.call.deps.store.clone(),
        call_sid: start.call_sid,
        stream_sid: start.stream_sid,
        ticker: None,
        playout_end: t0,
        marks_out: VecDeque::new(),
        socket_open: true,
        bad_messages: 0,
    };
    (core, io)
}

/// Twilio's half of one call: the Media Stream.
struct StreamIo<'a> {
    stream: &'a mut SplitStream<WebSocket>,
    out: mpsc::Sender<Message>,
    rest: Option<TwilioRest>,
    /// For the Calls API fallback's event, written after the call's own queue may be gone.
    store: Store,
    call_sid: String,
    stream_sid: String,
    /// Wakes the loop every 20 ms while audio is queued (made on the first wait).
    ticker: Option<Interval>,
    /// When the audio already sent will have finished playing at Twilio.
    playout_end: Instant,
    /// Marks sent and not back yet, oldest first, each with the time after which its clip
    /// counts as played anyway (its end at Twilio + [`MARK_GRACE`]).
    marks_out: VecDeque<(PlayId, Instant)>,
    socket_open: bool,
    bad_messages: u64,
}

enum StreamInput {
    Message(Option<Result<Message, axum::Error>>),
    /// Time to send more audio (sent after every event anyway).
    Tick,
    /// The oldest outstanding mark is overdue.
    MarkOverdue,
}

impl CallIo for StreamIo<'_> {
    type Input = StreamInput;
    const PEER: &'static str = "callee";
    const MEDIA_END: &'static str = "the socket closed";

    async fn next_input(&mut self, playing: bool) -> StreamInput {
        let pumping = self.socket_open && playing;
        let ticker = self.ticker.get_or_insert_with(|| {
            let mut ticker = tokio::time::interval(Duration::from_millis(FRAME_MS));
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        let mark_due = self.marks_out.front().map(|(_, due)| *due);
        tokio::select! {
            biased;
            msg = self.stream.next(), if self.socket_open => StreamInput::Message(msg),
            _ = ticker.tick(), if pumping => StreamInput::Tick,
            _ = sleep_until_opt(mark_due), if self.socket_open && mark_due.is_some() => {
                StreamInput::MarkOverdue
            }
            else => std::future::pending().await,
        }
    }

    async fn on_input(&mut self, core: &mut CallCore, input: StreamInput) {
        match input {
            StreamInput::Message(msg) => self.on_message(core, msg),
            StreamInput::Tick => {}
            StreamInput::MarkOverdue => self.mark_overdue(core),
        }
    }

    fn after_actions(&mut self, core: &mut CallCore) {
        self.pump(core);
    }

    async fn stop_playback(&mut self, core: &mut CallCore, dropped: usize) {
        self.playout_end = Instant::now();
        // The session dropped these plays; Twilio returns their marks, which it ignores.
        self.marks_out.clear();
        tracing::info!(dropped, "barge-in: clear");
        if self.socket_open {
            self.send_control(core, protocol::clear_message(&self.stream_sid))
                .await;
        }
    }

    async fn hang_up(&mut self, core: &mut CallCore) {
        tracing::info!("hanging up: closing the stream");
        self.close_socket(core).await;
        self.complete_via_rest(core);
    }

    async fn cut(&mut self, core: &mut CallCore) {
        if self.socket_open {
            let _ = self.out.try_send(Message::Close(None));
        }
        self.socket_gone(core);
    }

    async fn close(&mut self, core: &mut CallCore) {
        if self.socket_open {
            self.close_socket(core).await;
        }
    }
}

impl StreamIo<'_> {
    /// Sends the audio that is due: frames until the playout runs `LEAD` ahead of now, and
    /// each clip's mark right after its last frame. Never waits.
    fn pump(&mut self, core: &mut CallCore) {
        if !self.socket_open {
            return;
        }
        let now = Instant::now();
        if self.playout_end < now {
            self.playout_end = now;
        }
        let clips = Arc::clone(&core.clips);
        while let Some(front) = core.queue.front() {
            let (play_id, offset, started) = (front.play_id, front.offset, front.started);
            let clip = clips.get(&front.line);
            let total = clip.map_or(0, |c| c.mulaw.len());
            if clip.is_none() && !started {
                tracing::error!(line = %front.line, "no clip for this line; skipping it");
            }
            if offset >= total {
                let msg = protocol::mark_message(&self.stream_sid, &play_id.to_string());
                if !self.try_send(core, msg) {
                    return;
                }
                self.marks_out
                    .push_back((play_id, self.playout_end.max(now) + MARK_GRACE));
                core.queue.pop_front();
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
            if !self.try_send(core, protocol::media_message(&self.stream_sid, &frame)) {
                return;
            }
            if let Some(front) = core.queue.front_mut() {
                front.started = true;
                front.offset = end;
            }
            self.playout_end += Duration::from_millis(FRAME_MS);
            if !started {
                core.first_frame_sent(play_id);
            }
        }
    }

    fn try_send(&mut self, core: &mut CallCore, text: String) -> bool {
        match self.out.try_send(Message::Text(text.into())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.socket_gone(core);
                false
            }
        }
    }

    async fn send_control(&mut self, core: &mut CallCore, text: String) {
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            self.out.send(Message::Text(text.into())),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.socket_gone(core),
            Err(_) => tracing::warn!("socket too slow: a control message was not queued"),
        }
    }

    async fn close_socket(&mut self, core: &mut CallCore) {
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
        core.queue.clear();
        self.socket_gone(core);
    }

    fn socket_gone(&mut self, core: &mut CallCore) {
        self.socket_open = false;
        core.media_gone();
    }

    /// Fallback after closing the stream: end the call through the Calls API too.
    fn complete_via_rest(&self, core: &CallCore) {
        let Some(rest) = self.rest.clone() else {
            return;
        };
        if self.call_sid.is_empty() {
            return;
        }
        let call_sid = self.call_sid.clone();
        let call_id = core.call_id.clone();
        let store = self.store.clone();
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

    /// The oldest outstanding mark did not come back in time: its clip (and every one
    /// before it) counts as played, so the call goes on to its silence timer or hang-up.
    fn mark_overdue(&mut self, core: &mut CallCore) {
        let now = Instant::now();
        while let Some(&(play_id, due)) = self.marks_out.front() {
            if due > now {
                break;
            }
            self.marks_out.pop_front();
            tracing::warn!(
                play_id,
                "mark not back {MARK_GRACE:?} after its clip ended: counting the clip as played"
            );
            core.event("mark_timeout", play_id.to_string());
            let at = core.now();
            core.session.on_playback_finished(at, play_id);
        }
    }

    /// The socket is gone without Twilio's `stop`: the line failed, nobody hung up.
    fn line_lost(&mut self, core: &mut CallCore, why: String) {
        let now = core.now();
        self.socket_gone(core);
        core.line_failed(now, &why);
        // Twilio may still hold the call (a half-open socket): end it there too.
        self.complete_via_rest(core);
    }

    fn on_message(&mut self, core: &mut CallCore, msg: Option<Result<Message, axum::Error>>) {
        let now = core.now();
        let text = match msg {
            None => {
                self.line_lost(core, "the socket ended without Twilio's stop".into());
                return;
            }
            Some(Err(err)) => {
                // A reset connection, a broken frame, a frame over the size limit.
                self.line_lost(
                    core,
                    format!("the socket failed without Twilio's stop: {err}"),
                );
                return;
            }
            Some(Ok(Message::Close(frame))) => {
                self.line_lost(
                    core,
                    format!("the socket was closed without Twilio's stop ({frame:?})"),
                );
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
                core.session.on_audio(now, &samples);
            }
            Ok(Inbound::Mark { name }) => match name.parse::<PlayId>() {
                Ok(play_id) => {
                    tracing::debug!(play_id, "mark back: clip played");
                    // Marks come back in order: the ones before it are settled too.
                    if let Some(at) = self.marks_out.iter().position(|(id, _)| *id == play_id) {
                        self.marks_out.drain(..=at);
                    }
                    core.session.on_playback_finished(now, play_id);
                }
                Err(_) => tracing::debug!(%name, "mark that is not ours ignored"),
            },
            Ok(Inbound::Dtmf { digit }) => {
                tracing::info!(%digit, "dtmf");
                core.session.on_dtmf(now, digit);
            }
            Ok(Inbound::Stop { .. }) => {
                tracing::info!(now, "stream stopped: call over");
                self.socket_gone(core);
                core.session.on_hangup(now);
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
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
