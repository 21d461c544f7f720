//! One answered SIP call: the thin driver around [`Session`], like
//! `transport/twilio/call.rs` but with RTP instead of a WebSocket.
//!
//! The call's task owns its RTP socket. Every 20 ms (a tokio interval) it sends one RTP
//! packet: the next frame of 李明's current clip, or μ-law silence when nothing plays, so
//! the stream's timestamps run with the wall clock. A clip counts as played when its last
//! frame has been sent. The caller's PCMU packets are decoded into the session; its BYE or
//! CANCEL (dialog state `Terminated`) is the session's hang-up; the session's `HangUp`
//! becomes the bot's BYE. Recognition runs on the shared pool in spawned tasks, and turns,
//! do-not-call and the outcome go to the store through an ordered per-call queue.

use crate::audio::{FRAME_MS, FRAME_SAMPLES, mulaw};
use crate::labels::Outcome;
use crate::session::{Action, Millis, PlayId, Session, Transcript, TurnRecord, UtteranceId};
use crate::store::{NewCall, Store};
use crate::transport::twilio::call::{CallDeps, CallEvent, LiveCalls};
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::rtp;
use super::sdp::PCMU;

/// After the callee hung up, how long to wait for pending recognitions to settle the outcome.
const LINGER: Duration = Duration::from_secs(20);
/// The same, when the server is shutting down.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(3);
/// Between the last frame of the closing line and the BYE: the far end's jitter buffer
/// still has to play it out.
const PLAYOUT_TAIL: Duration = Duration::from_millis(200);
/// How long to wait for the BYE transaction.
const BYE_TIMEOUT: Duration = Duration::from_secs(5);
/// μ-law silence.
const SILENCE: u8 = 0xFF;
/// RFC 3389 comfort noise and RFC 4733 telephone events: known, not audio, ignored.
const PT_COMFORT_NOISE: u8 = 13;

/// What every SIP call shares with the server.
#[derive(Clone)]
pub(crate) struct SipEnv {
    pub(crate) deps: CallDeps,
    pub(crate) events: broadcast::Sender<CallEvent>,
    pub(crate) live: LiveCalls,
    pub(crate) dialogs: Arc<DialogLayer>,
}

/// An INVITE that was checked and answered with 200 OK.
pub(crate) struct CallSetup {
    pub(crate) call_id: String,
    /// The SIP Call-ID, stored as the call's `call_sid`.
    pub(crate) sip_call_id: String,
    /// The caller's number (the person 李明 talks to), when its user part is one.
    pub(crate) to_number: Option<String>,
    /// What the caller dialled (the request URI's user part).
    pub(crate) from_number: Option<String>,
    pub(crate) dialog: InviteDialog,
    pub(crate) states: DialogStateReceiver,
    pub(crate) rtp: UdpSocket,
    pub(crate) remote_rtp: SocketAddr,
    /// The SDP answer sent in the 200 OK (repeated for a re-INVITE).
    pub(crate) answer: String,
    /// When the 200 OK went out: call time 0.
    pub(crate) t0: Instant,
}

/// One queued store write.
type StoreOp = Box<dyn FnOnce(&Store) + Send>;

/// Store writes of one call, applied in order off the async threads.
/// (The same as the Twilio driver's private `StoreLog`.)
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

    fn event(&self, call_id: &str, kind: &'static str, detail: String) {
        let call_id = call_id.to_string();
        self.push(move |s| {
            if let Err(err) = s.record_event(&call_id, kind, &detail) {
                tracing::warn!(%err, kind, "cannot record the event");
            }
        });
    }

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

/// Runs an answered call to its end (the caller instruments it with the call's span).
pub(crate) async fn run(setup: CallSetup, env: SipEnv) {
    let _live = env.live.enter();
    let mut call = CallDriver::new(setup, env);
    call.run().await;
    call.finish().await;
}

struct CallDriver {
    env: SipEnv,
    call_id: String,
    to_number: Option<String>,
    dialog: InviteDialog,
    states: DialogStateReceiver,
    rtp: UdpSocket,
    remote_rtp: SocketAddr,
    /// The caller's RTP came from somewhere else than its SDP said, and we follow it.
    latched: bool,
    answer: String,
    sender: rtp::Sender,
    session: Session,
    t0: Instant,
    store: StoreLog,
    asr_tx: mpsc::UnboundedSender<(UtteranceId, Result<Transcript, String>)>,
    asr_rx: mpsc::UnboundedReceiver<(UtteranceId, Result<Transcript, String>)>,
    recognitions: HashMap<UtteranceId, tokio::task::AbortHandle>,
    queue: VecDeque<QueuedPlay>,
    pending_turns: Vec<(TurnRecord, Vec<PlayId>)>,
    batch_plays: Vec<PlayId>,
    opening_sent: bool,
    /// The dialog is up: RTP flows both ways.
    media_open: bool,
    /// The bot sent its BYE.
    bye_sent: bool,
    callee_gone_at: Option<Instant>,
    interrupted: bool,
    dnc_recorded: bool,
    last_tick: Option<Millis>,
    bad_packets: u64,
    send_errors: u64,
    frames_in: u64,
    frames_out: u64,
}

impl CallDriver {
    fn new(setup: CallSetup, env: SipEnv) -> CallDriver {
        let CallSetup {
            call_id,
            sip_call_id,
            to_number,
            from_number,
            dialog,
            states,
            rtp,
            remote_rtp,
            answer,
            t0,
        } = setup;
        let session = Session::new(
            &call_id,
            Arc::clone(&env.deps.script),
            env.deps.session.clone(),
        );
        let store = StoreLog::new(env.deps.store.clone());
        let (asr_tx, asr_rx) = mpsc::unbounded_channel();
        let _ = env.events.send(CallEvent::Started {
            call_id: call_id.clone(),
            call_sid: sip_call_id.clone(),
        });
        let new_call = NewCall {
            call_id: call_id.clone(),
            transport: "sip".into(),
            to_number: to_number.clone(),
            from_number,
            call_sid: Some(sip_call_id),
            stream_sid: None,
            started_at: time::OffsetDateTime::now_utc(),
        };
        store.push(move |s| {
            if let Err(err) = s.start_call(&new_call) {
                tracing::error!(%err, "cannot record the call start");
            }
        });
        let sender = rtp::Sender::new(PCMU);
        tracing::info!(rtp_local = ?rtp.local_addr().ok(), %remote_rtp, ssrc = sender.ssrc(), "media started");
        CallDriver {
            env,
            call_id,
            to_number,
            dialog,
            states,
            rtp,
            remote_rtp,
            latched: false,
            answer,
            sender,
            session,
            t0,
            store,
            asr_tx,
            asr_rx,
            recognitions: HashMap::new(),
            queue: VecDeque::new(),
            pending_turns: Vec::new(),
            batch_plays: Vec::new(),
            opening_sent: false,
            media_open: true,
            bye_sent: false,
            callee_gone_at: None,
            interrupted: false,
            dnc_recorded: false,
            last_tick: None,
            bad_packets: 0,
            send_errors: 0,
            frames_in: 0,
            frames_out: 0,
        }
    }

    fn now(&self) -> Millis {
        self.t0.elapsed().as_millis() as Millis
    }

    async fn run(&mut self) {
        self.session.start(self.now());
        self.drain_actions().await;
        // Burst: a late tick is caught up at once, so the audio keeps real-time length.
        let mut ticker = tokio::time::interval(Duration::from_millis(FRAME_MS));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let hard_stop = self.env.live.hard_stop.clone();
        let mut buf = vec![0u8; 2048];
        let mut states_open = true;

        while !self.session.is_ended() {
            let deadline = self.session.next_deadline().map(|d| {
                let d = match self.last_tick {
                    Some(last) if d <= last => last + 1,
                    _ => d,
                };
                self.t0 + Duration::from_millis(d)
            });
            let linger_until = self.callee_gone_at.map(|at| {
                at + if self.interrupted {
                    SHUTDOWN_LINGER
                } else {
                    LINGER
                }
            });
            tokio::select! {
                biased;
                _ = hard_stop.cancelled(), if !self.interrupted => {
                    self.interrupt().await;
                }
                state = self.states.recv(), if states_open => match state {
                    Some(state) => self.on_dialog_state(state).await,
                    None => states_open = false,
                },
                _ = ticker.tick(), if self.media_open => {
                    self.send_frame();
                }
                received = self.rtp.recv_from(&mut buf), if self.media_open => {
                    match received {
                        Ok((len, from)) => self.on_rtp(&buf[..len.min(buf.len())], from),
                        // E.g. ICMP port unreachable from an earlier send: not fatal.
                        Err(err) => tracing::debug!(%err, "RTP receive error"),
                    }
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
                    tracing::warn!("the session did not settle after the hang-up; ending the record");
                    break;
                }
            }
            self.drain_actions().await;
        }
    }

    async fn drain_actions(&mut self) {
        self.batch_plays.clear();
        while let Some(action) = self.session.poll_action() {
            self.apply(action).await;
        }
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
                tracing::info!(dropped, "barge-in: playback stopped");
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
                        "do-not-call requested but the caller's number is unknown"
                    ),
                }
            }
            Action::HangUp => {
                // The closing line's last frame is sent; let the far end play it out.
                tokio::time::sleep(PLAYOUT_TAIL).await;
                self.send_bye("the call is finished").await;
            }
        }
    }

    /// Sends the bot's BYE (once) and stops the media.
    async fn send_bye(&mut self, why: &str) {
        self.media_open = false;
        self.queue.clear();
        if self.bye_sent || self.callee_gone_at.is_some() {
            return;
        }
        self.bye_sent = true;
        let now = self.now();
        tracing::info!(now, why, "hanging up: BYE");
        let detail = match tokio::time::timeout(BYE_TIMEOUT, self.dialog.bye()).await {
            Ok(Ok(())) => "bye_sent".to_string(),
            Ok(Err(err)) => {
                tracing::warn!(%err, "BYE failed");
                format!("bye_failed: {err}")
            }
            Err(_) => {
                tracing::warn!("no answer to the BYE within {BYE_TIMEOUT:?}");
                "bye_timeout".to_string()
            }
        };
        self.store.event(&self.call_id, "hangup", detail);
    }

    async fn on_dialog_state(&mut self, state: DialogState) {
        match state {
            DialogState::Confirmed(..) => tracing::debug!("ACK received: dialog confirmed"),
            DialogState::Terminated(_, reason) => {
                if self.bye_sent {
                    tracing::debug!(?reason, "dialog terminated after our BYE");
                    return;
                }
                let now = self.now();
                let detail = match reason {
                    TerminatedReason::UacBye => "callee_bye".to_string(),
                    TerminatedReason::UacCancel => "callee_cancel".to_string(),
                    TerminatedReason::Timeout => "ack_timeout".to_string(),
                    other => format!("{other:?}"),
                };
                tracing::info!(now, %detail, "the caller hung up");
                self.store.event(&self.call_id, "hangup", detail);
                self.callee_gone();
                self.session.on_hangup(now);
            }
            DialogState::Updated(_, _, handle) => {
                // A re-INVITE (session refresh, hold): the media stays as it is.
                tracing::info!("re-INVITE: answering with the same SDP");
                let headers = vec![Header::ContentType("application/sdp".into())];
                let body = Some(self.answer.clone().into_bytes());
                if let Err(err) = handle.respond(StatusCode::OK, Some(headers), body).await {
                    tracing::warn!(%err, "cannot answer the re-INVITE");
                }
            }
            DialogState::Info(_, request, handle) => {
                let body = String::from_utf8_lossy(&request.body);
                if let Some(digit) = sip_info_digit(&body) {
                    tracing::info!(%digit, "dtmf (SIP INFO)");
                    let now = self.now();
                    self.session.on_dtmf(now, digit);
                }
                let _ = handle.reply(StatusCode::OK).await;
            }
            DialogState::Options(_, _, handle) => {
                let _ = handle.reply(StatusCode::OK).await;
            }
            DialogState::Message(_, _, handle)
            | DialogState::Notify(_, _, handle)
            | DialogState::Refer(_, _, handle)
            | DialogState::Publish(_, _, handle) => {
                tracing::info!("in-dialog request the bot does not handle: 405");
                let _ = handle.reply(StatusCode::MethodNotAllowed).await;
            }
            other => tracing::debug!(state = %other, "dialog state"),
        }
    }

    fn callee_gone(&mut self) {
        self.media_open = false;
        self.queue.clear();
        if self.callee_gone_at.is_none() {
            self.callee_gone_at = Some(Instant::now());
        }
    }

    fn on_rtp(&mut self, data: &[u8], from: SocketAddr) {
        if from != self.remote_rtp {
            if self.latched || self.frames_in > 0 {
                self.bad_packet(&format!("RTP from {from}, not the caller"));
                return;
            }
            // Symmetric RTP: the caller is behind NAT or its SDP named another address.
            tracing::info!(sdp = %self.remote_rtp, actual = %from, "following the caller's RTP source");
            self.remote_rtp = from;
            self.latched = true;
        }
        match rtp::parse(data) {
            Ok(packet) if packet.payload_type == PCMU => {
                self.frames_in += 1;
                let samples = mulaw::decode_all(packet.payload);
                let now = self.now();
                self.session.on_audio(now, &samples);
            }
            Ok(packet) if packet.payload_type == PT_COMFORT_NOISE => {}
            Ok(packet) if packet.payload_type >= 96 => {
                // Dynamic types: telephone-event was not accepted in the answer.
                tracing::trace!(pt = packet.payload_type, "dynamic payload type ignored");
            }
            Ok(packet) => {
                self.bad_packet(&format!("payload type {} not PCMU", packet.payload_type));
            }
            Err(err) => self.bad_packet(&err.to_string()),
        }
    }

    fn bad_packet(&mut self, what: &str) {
        self.bad_packets += 1;
        if self.bad_packets <= 5 || self.bad_packets.is_power_of_two() {
            tracing::warn!(count = self.bad_packets, "bad RTP packet ignored: {what}");
        }
    }

    /// One 20 ms tick: sends the next frame of the current clip, or silence.
    fn send_frame(&mut self) {
        let clips = Arc::clone(&self.env.deps.clips);
        let mut frame = [SILENCE; FRAME_SAMPLES];
        let mut first_of = None;
        let mut finished = None;
        while let Some(front) = self.queue.front_mut() {
            let Some(clip) = clips.get(&front.line) else {
                tracing::error!(line = %front.line, "no clip for this line; skipping it");
                let play_id = front.play_id;
                self.queue.pop_front();
                let now = self.now();
                self.session.on_playback_finished(now, play_id);
                continue;
            };
            let total = clip.mulaw.len();
            let end = (front.offset + FRAME_SAMPLES).min(total);
            let chunk = &clip.mulaw[front.offset.min(end)..end];
            frame[..chunk.len()].copy_from_slice(chunk);
            if !front.started {
                front.started = true;
                first_of = Some(front.play_id);
            }
            front.offset = end;
            if end >= total {
                finished = Some(front.play_id);
                self.queue.pop_front();
            }
            break;
        }
        let packet = self.sender.packet(&frame);
        match self.rtp.try_send_to(&packet, self.remote_rtp) {
            Ok(_) => self.frames_out += 1,
            Err(err) => {
                self.send_errors += 1;
                if self.send_errors <= 3 || self.send_errors.is_power_of_two() {
                    tracing::warn!(%err, count = self.send_errors, "RTP send failed");
                }
            }
        }
        if let Some(play_id) = first_of {
            self.first_frame_sent(play_id);
        }
        if let Some(play_id) = finished {
            let now = self.now();
            tracing::debug!(play_id, "clip sent to its last frame");
            self.session.on_playback_finished(now, play_id);
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
            self.store
                .event(&self.call_id, "opening_delay_ms", now.to_string());
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

    /// The server is stopping and the grace period is over: end the call now.
    async fn interrupt(&mut self) {
        self.interrupted = true;
        let now = self.now();
        tracing::warn!(now, "server shutting down: cutting the call");
        self.store.event(
            &self.call_id,
            "interrupted",
            "server shut down before the call finished; the outcome below is not the callee's"
                .into(),
        );
        self.send_bye("server shutting down").await;
        self.callee_gone();
        if !self.session.is_ended() {
            self.session.on_hangup(now);
        }
    }

    /// Writes the end of the call, waits until the store has it, and forgets the dialog.
    async fn finish(mut self) {
        self.batch_plays.clear();
        while let Some(action) = self.session.poll_action() {
            self.apply(action).await;
        }
        for (turn, _) in std::mem::take(&mut self.pending_turns) {
            self.record_turn(turn, None);
        }
        if self.callee_gone_at.is_none() {
            self.send_bye("the call record is being closed").await;
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
        tracing::info!(
            outcome = %outcome,
            do_not_call = dnc,
            duration_ms = duration,
            frames_in = self.frames_in,
            frames_out = self.frames_out,
            bad_packets = self.bad_packets,
            "call ended"
        );
        let call_id = self.call_id.clone();
        self.store.push(move |s| {
            if let Err(err) = s.finish_call(&call_id, outcome, dnc, duration) {
                tracing::error!(%err, "cannot record the end of the call");
            }
        });
        self.env.dialogs.remove_dialog(&self.dialog.id());
        let events = self.env.events.clone();
        let call_id = self.call_id.clone();
        self.store.flush().await;
        let _ = events.send(CallEvent::Ended { call_id, summary });
    }
}

/// The key of an `application/dtmf-relay` INFO body (`Signal=5`).
fn sip_info_digit(body: &str) -> Option<char> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("signal"))
        .and_then(|(_, v)| v.trim().chars().next())
        .filter(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::sip_info_digit;

    #[test]
    fn reads_dtmf_relay_bodies() {
        assert_eq!(sip_info_digit("Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(sip_info_digit("signal = #\r\n"), Some('#'));
        assert_eq!(sip_info_digit("Duration=160\r\n"), None);
        assert_eq!(sip_info_digit("Signal=x"), None);
    }
}
