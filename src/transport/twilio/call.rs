//! One live call on a Media Streams WebSocket: Twilio's half of a call, driven by
//! `transport::driver::CallCore` around the [`Session`](crate::session::Session).
//!
//! Each connection runs in its own task. It waits for Twilio's `start`, then reads Twilio's
//! messages and decodes the callee's μ-law audio into the session, sends 李明's clips back
//! as 20 ms `media` frames paced in real time (never more than [`LEAD`] ahead of the wall
//! clock), follows each clip with a `mark` named after its `PlayId` (the mark coming back is
//! the end of playback), answers barge-in with `clear`, and hangs up by closing the stream
//! and then completing the call through the Calls API. Recognition, timers, turns and the
//! store are the core's. Writing to the socket goes through a bounded channel to a writer
//! task, so a slow socket only ever slows its own call.

use crate::audio::{FRAME_MS, FRAME_SAMPLES, mulaw};
use crate::session::PlayId;
use crate::store::{NewCall, Store, normalize_number};
use crate::transport::calls::CallEnv;
use crate::transport::driver::{CallCore, CallIo, CallStart};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
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

/// Everything the call driver needs from the server.
#[derive(Clone)]
pub(crate) struct TwilioEnv {
    pub(crate) call: CallEnv,
    /// The Calls API client for the hang-up fallback, when the account is known.
    pub(crate) rest: Option<TwilioRest>,
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

    if let Some(start) = start {
        let t0 = Instant::now();
        let (core, io) = start_call(&env, start, t0, out_tx, &mut stream);
        core.drive(io, 0).await;
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

/// Reads the call's data from `start`, records the call (or attaches the stream to the
/// record `place_call` made), and sets up both halves of the call.
fn start_call<'a>(
    env: &TwilioEnv,
    start: StartInfo,
    t0: Instant,
    out: mpsc::Sender<Message>,
    stream: &'a mut SplitStream<WebSocket>,
) -> (CallCore, StreamIo<'a>) {
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
    let core = CallCore::new(
        CallStart {
            call_id: call_id.clone(),
            call_sid: start.call_sid.clone(),
            to_number: to_number.clone(),
            t0,
        },
        &env.call,
    );
    let new_call = NewCall {
        call_id: call_id.clone(),
        transport: "twilio".into(),
        to_number,
        from_number: params.get("from").cloned(),
        call_sid: Some(start.call_sid.clone()),
        stream_sid: Some(start.stream_sid.clone()),
        started_at: time::OffsetDateTime::now_utc(),
    };
    core.write(move |s| {
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
    let io = StreamIo {
        stream,
        out,
        rest: env.rest.clone(),
        store: env.call.deps.store.clone(),
        call_sid: start.call_sid,
        stream_sid: start.stream_sid,
        ticker: None,
        playout_end: t0,
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
    socket_open: bool,
    bad_messages: u64,
}

enum StreamInput {
    Message(Option<Result<Message, axum::Error>>),
    /// Time to send more audio (sent after every event anyway).
    Tick,
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
        tokio::select! {
            biased;
            msg = self.stream.next(), if self.socket_open => StreamInput::Message(msg),
            _ = ticker.tick(), if pumping => StreamInput::Tick,
            else => std::future::pending().await,
        }
    }

    async fn on_input(&mut self, core: &mut CallCore, input: StreamInput) {
        match input {
            StreamInput::Message(msg) => self.on_message(core, msg),
            StreamInput::Tick => {}
        }
    }

    fn after_actions(&mut self, core: &mut CallCore) {
        self.pump(core);
    }

    async fn stop_playback(&mut self, core: &mut CallCore, dropped: usize) {
        self.playout_end = Instant::now();
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

    fn on_message(&mut self, core: &mut CallCore, msg: Option<Result<Message, axum::Error>>) {
        let now = core.now();
        let text = match msg {
            None => {
                tracing::info!(now, "socket closed by the far end: callee hung up");
                self.socket_gone(core);
                core.session.on_hangup(now);
                return;
            }
            Some(Err(err)) => {
                tracing::info!(now, %err, "socket dropped: treating as hang-up");
                self.socket_gone(core);
                core.session.on_hangup(now);
                return;
            }
            Some(Ok(Message::Close(frame))) => {
                tracing::info!(now, ?frame, "socket closed by Twilio: call over");
                self.socket_gone(core);
                core.session.on_hangup(now);
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
