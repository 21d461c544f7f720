//! One answered SIP call: SIP's half of a call, driven by
//! `transport::driver::CallCore` around the
//! [`Session`](crate::session::Session), with RTP instead of a WebSocket.
//!
//! The call is recorded when its 200 OK goes out, but nothing is sent before the caller's
//! ACK: the session (and with it the opening line and the RTP stream) starts at the ACK,
//! one round trip later. A caller that never confirms — a scanner, a forged source
//! address that cannot see the 200 OK's To tag — gets no audio at all, so the bot cannot
//! be made to stream at a third party. No ACK within `--ack-timeout-s` (at most RFC 3261's
//! 64 × T1 = 32 s): BYE, and the call is recorded `no_response` with its reason, never
//! do-not-call; the same for a BYE or CANCEL before the ACK (the bot never spoke).
//!
//! Only RTP from where the caller said it would come is heard ([`RtpLatch`]: the SDP's
//! address and port, or with `--symmetric-rtp` the first port of the INVITE's source IP);
//! other datagrams are dropped, counted and recorded as an `rtp_foreign` event.
//!
//! The call's task owns its RTP socket. Every 20 ms (a tokio interval) it sends one RTP
//! packet: the next frame of 李明's current clip, or μ-law silence when nothing plays, so
//! the stream's timestamps run with the wall clock. A clip counts as played when its last
//! frame has been sent. The caller's PCMU packets are decoded into the session; its BYE or
//! CANCEL (dialog state `Terminated`) is the session's hang-up; the session's `HangUp`
//! becomes the bot's BYE. Recognition, timers, turns, do-not-call and the outcome are the
//! core's.

use crate::audio::{FRAME_MS, FRAME_SAMPLES, mulaw};
use crate::labels::Outcome;
use crate::store::{NewCall, Store};
use crate::transport::calls::{CallEnv, CallEvent};
use crate::transport::driver::{CallCore, CallIo, CallStart, MediaStats};
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::media::{RtpLatch, Source};
use super::rtp;
use super::sdp::PCMU;

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
    pub(crate) call: CallEnv,
    pub(crate) dialogs: Arc<DialogLayer>,
}

/// An INVITE that was checked and rung (180), about to be answered with 200 OK.
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
    /// Whose RTP is the caller's, and where the bot's goes.
    pub(crate) latch: RtpLatch,
    /// The SDP answer for the 200 OK (repeated for a re-INVITE).
    pub(crate) answer: String,
    /// How long the 200 OK waits for its ACK.
    pub(crate) ack_timeout: Duration,
}

/// Records the call, answers it and runs it to its end (the caller instruments it with the
/// call's span). `slot`: the call's place under `--max-calls`, freed just before it stops
/// counting as live.
pub(crate) async fn run(mut setup: CallSetup, env: SipEnv, slot: OwnedSemaphorePermit) {
    let _live = env.call.live.enter();
    let _slot = slot;
    // A call the caller saw answered always has a record.
    record_start(&setup, &env.call.deps.store).await;
    let headers = vec![Header::ContentType("application/sdp".into())];
    let body = Some(setup.answer.clone().into_bytes());
    let answered_at = Instant::now();
    let wait = match setup.dialog.accept(Some(headers), body) {
        Ok(()) => {
            tracing::info!("answered: 200 OK; waiting for the ACK");
            wait_for_ack(&mut setup, &env, answered_at).await
        }
        Err(err) => {
            tracing::warn!(%err, "cannot send 200 OK: giving the call up");
            AckWait::NotAnswered(err.to_string())
        }
    };
    match wait {
        AckWait::Confirmed => {
            let (core, io) = start_call(setup, &env, answered_at);
            let started_at = core.now();
            core.drive(io, started_at).await;
        }
        unconfirmed => never_connected(setup, &env, unconfirmed, answered_at).await,
    }
}

/// Records the call as started, before it is answered and before anything else is
/// written for it.
async fn record_start(setup: &CallSetup, store: &Store) {
    let new_call = NewCall {
        call_id: setup.call_id.clone(),
        transport: "sip".into(),
        to_number: setup.to_number.clone(),
        from_number: setup.from_number.clone(),
        call_sid: Some(setup.sip_call_id.clone()),
        stream_sid: None,
        started_at: time::OffsetDateTime::now_utc(),
    };
    let store = store.clone();
    let span = tracing::Span::current();
    let done = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        if let Err(err) = store.start_call(&new_call) {
            tracing::error!(%err, "cannot record the call start");
        }
    })
    .await;
    if let Err(err) = done {
        tracing::error!(%err, "recording the call start panicked");
    }
}

/// How the wait for the ACK ended.
enum AckWait {
    Confirmed,
    /// No ACK within the deadline.
    TimedOut,
    /// The dialog ended first (the caller's BYE or CANCEL, rsipstack's own 64 × T1).
    Terminated(TerminatedReason),
    /// The server is stopping.
    Shutdown,
    /// The 200 OK could not be sent.
    NotAnswered(String),
}

/// Waits for the ACK of the 200 OK. RTP that arrives meanwhile is read and dropped: the
/// session has not started and nothing is sent.
async fn wait_for_ack(setup: &mut CallSetup, env: &SipEnv, answered_at: Instant) -> AckWait {
    let deadline = answered_at + setup.ack_timeout;
    let hard_stop = env.call.live.hard_stop.clone();
    let mut buf = [0u8; 2048];
    let mut early_packets = 0u64;
    let result = loop {
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => break AckWait::Shutdown,
            state = setup.states.recv() => match state {
                Some(DialogState::Confirmed(..)) => break AckWait::Confirmed,
                Some(DialogState::Terminated(_, reason)) => break AckWait::Terminated(reason),
                Some(other) => tracing::debug!(state = %other, "dialog state before the ACK"),
                // Nobody can confirm the dialog any more.
                None => break AckWait::TimedOut,
            },
            _ = tokio::time::sleep_until(deadline) => break AckWait::TimedOut,
            received = setup.rtp.recv_from(&mut buf) => {
                if received.is_ok() {
                    early_packets += 1;
                }
            }
        }
    };
    let waited_ms = answered_at.elapsed().as_millis();
    if early_packets > 0 {
        tracing::debug!(early_packets, "RTP before the ACK dropped");
    }
    match &result {
        AckWait::Confirmed => tracing::info!(waited_ms, "ACK received: the call starts"),
        AckWait::TimedOut => tracing::warn!(
            waited_ms,
            "no ACK for the 200 OK within {:?} (--ack-timeout-s): hanging up",
            setup.ack_timeout
        ),
        AckWait::Terminated(reason) => {
            tracing::info!(waited_ms, ?reason, "the dialog ended before the ACK")
        }
        AckWait::Shutdown => tracing::warn!(waited_ms, "server shutting down before the ACK"),
        AckWait::NotAnswered(_) => {}
    }
    result
}

/// A call whose dialog was never confirmed: the bot said nothing, so it is nobody's
/// decision — `no_response`, never do-not-call. Hangs up where the dialog still stands.
async fn never_connected(setup: CallSetup, env: &SipEnv, why: AckWait, answered_at: Instant) {
    let CallSetup {
        call_id,
        dialog,
        ack_timeout,
        ..
    } = setup;
    let bye_needed = matches!(why, AckWait::TimedOut | AckWait::Shutdown);
    let mut events: Vec<(&'static str, String)> = Vec::new();
    if matches!(why, AckWait::Shutdown) {
        events.push((
            "interrupted",
            "server shut down before the caller's ACK; nothing was said".into(),
        ));
    }
    let reason = match why {
        AckWait::TimedOut => format!("ack_timeout: no ACK within {} s", ack_timeout.as_secs()),
        AckWait::Terminated(TerminatedReason::Timeout) => {
            "ack_timeout: no ACK within 64*T1 (the SIP stack's BYE)".to_string()
        }
        AckWait::Terminated(TerminatedReason::UacBye) => "callee_bye_before_ack".to_string(),
        AckWait::Terminated(TerminatedReason::UacCancel) => "callee_cancel_before_ack".to_string(),
        AckWait::Terminated(other) => format!("{other:?} before the ACK"),
        AckWait::Shutdown => "shutdown_before_ack".to_string(),
        AckWait::NotAnswered(err) => format!("answer_failed: {err}"),
        AckWait::Confirmed => "confirmed".to_string(),
    };
    let detail = if bye_needed {
        match tokio::time::timeout(BYE_TIMEOUT, dialog.bye()).await {
            Ok(Ok(())) => format!("{reason}; bye_sent"),
            Ok(Err(err)) => {
                tracing::warn!(%err, "BYE failed");
                format!("{reason}; bye_failed: {err}")
            }
            Err(_) => {
                tracing::warn!("no answer to the BYE within {BYE_TIMEOUT:?}");
                format!("{reason}; bye_timeout")
            }
        }
    } else {
        reason
    };
    events.push(("hangup", detail));
    env.dialogs.remove_dialog(&dialog.id());
    let duration = answered_at.elapsed().as_millis() as u64;
    let outcome = Outcome::NoResponse;
    tracing::info!(%outcome, do_not_call = false, duration_ms = duration, "call ended before it started");
    let store = env.call.deps.store.clone();
    let id = call_id.clone();
    let span = tracing::Span::current();
    let done = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        for (kind, detail) in events {
            if let Err(err) = store.record_event(&id, kind, &detail) {
                tracing::warn!(%err, kind, "cannot record the event");
            }
        }
        if let Err(err) = store.finish_call(&id, outcome, false, duration) {
            tracing::error!(%err, "cannot record the end of the call");
        }
    })
    .await;
    if let Err(err) = done {
        tracing::error!(%err, "recording the end of the call panicked");
    }
    let _ = env.call.events.send(CallEvent::Ended {
        call_id,
        summary: None,
    });
}

/// Sets up both halves of a confirmed call; call time 0 is the ACK.
fn start_call(setup: CallSetup, env: &SipEnv, answered_at: Instant) -> (CallCore, RtpIo) {
    let CallSetup {
        call_id,
        sip_call_id,
        to_number,
        dialog,
        states,
        rtp,
        latch,
        answer,
        ..
    } = setup;
    let core = CallCore::new(
        CallStart {
            call_id,
            call_sid: sip_call_id,
            to_number,
            t0: Instant::now(),
        },
        &env.call,
    );
    core.event("ack_ms", answered_at.elapsed().as_millis().to_string());
    let sender = rtp::Sender::new(PCMU);
    tracing::info!(rtp_local = ?rtp.local_addr().ok(), rtp_from = %latch.describe(), send_to = %latch.send_to(), ssrc = sender.ssrc(), "media started");
    let io = RtpIo {
        dialogs: Arc::clone(&env.dialogs),
        dialog,
        states,
        states_open: true,
        rtp,
        latch,
        foreign: ForeignRtp::default(),
        answer,
        sender,
        ticker: None,
        buf: vec![0u8; 2048],
        media_open: true,
        bye_sent: false,
        bad_packets: 0,
        send_errors: 0,
        frames_in: 0,
        frames_out: 0,
    };
    (core, io)
}

/// SIP's half of one call: the dialog and the RTP stream.
struct RtpIo {
    dialogs: Arc<DialogLayer>,
    dialog: InviteDialog,
    states: DialogStateReceiver,
    states_open: bool,
    rtp: UdpSocket,
    latch: RtpLatch,
    /// Datagrams from sources that are not the caller's.
    foreign: ForeignRtp,
    answer: String,
    sender: rtp::Sender,
    /// One packet every 20 ms (made on the first wait).
    ticker: Option<Interval>,
    buf: Vec<u8>,
    /// The dialog is up: RTP flows both ways.
    media_open: bool,
    /// The bot sent its BYE.
    bye_sent: bool,
    bad_packets: u64,
    send_errors: u64,
    frames_in: u64,
    frames_out: u64,
}

enum RtpInput {
    /// A dialog state change (rare, and large: boxed); `None` when the dialog's channel closed.
    State(Option<Box<DialogState>>),
    /// Time for the next packet.
    Tick,
    Packet(std::io::Result<(usize, SocketAddr)>),
}

impl CallIo for RtpIo {
    type Input = RtpInput;
    const PEER: &'static str = "caller";
    const MEDIA_END: &'static str = "the hang-up";

    async fn next_input(&mut self, _playing: bool) -> RtpInput {
        // Burst: a late tick is caught up at once, so the audio keeps real-time length.
        let ticker = self.ticker.get_or_insert_with(|| {
            let mut ticker = tokio::time::interval(Duration::from_millis(FRAME_MS));
            ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
            ticker
        });
        tokio::select! {
            biased;
            state = self.states.recv(), if self.states_open => RtpInput::State(state.map(Box::new)),
            _ = ticker.tick(), if self.media_open => RtpInput::Tick,
            received = self.rtp.recv_from(&mut self.buf), if self.media_open => RtpInput::Packet(received),
            else => std::future::pending().await,
        }
    }

    async fn on_input(&mut self, core: &mut CallCore, input: RtpInput) {
        match input {
            RtpInput::State(Some(state)) => self.on_dialog_state(core, *state).await,
            RtpInput::State(None) => self.states_open = false,
            RtpInput::Tick => self.send_frame(core),
            RtpInput::Packet(Ok((len, from))) => {
                let len = len.min(self.buf.len());
                let data = std::mem::take(&mut self.buf);
                self.on_rtp(core, &data[..len], from);
                self.buf = data;
            }
            // E.g. ICMP port unreachable from an earlier send: not fatal.
            RtpInput::Packet(Err(err)) => tracing::debug!(%err, "RTP receive error"),
        }
    }

    async fn stop_playback(&mut self, _core: &mut CallCore, dropped: usize) {
        tracing::info!(dropped, "barge-in: playback stopped");
    }

    async fn hang_up(&mut self, core: &mut CallCore) {
        // The closing line's last frame is sent; let the far end play it out.
        tokio::time::sleep(PLAYOUT_TAIL).await;
        self.send_bye(core, "the call is finished").await;
    }

    async fn cut(&mut self, core: &mut CallCore) {
        self.send_bye(core, "server shutting down").await;
        self.callee_gone(core);
    }

    async fn close(&mut self, core: &mut CallCore) {
        if !core.is_media_gone() {
            self.send_bye(core, "the call record is being closed").await;
        }
        if self.foreign.packets > 0 {
            tracing::warn!(
                packets = self.foreign.packets,
                "RTP from addresses that are not the caller's was dropped: {}",
                self.foreign.describe()
            );
            core.event("rtp_foreign", self.foreign.describe());
        }
    }

    fn stats(&self) -> Option<MediaStats> {
        Some(MediaStats {
            frames_in: self.frames_in,
            frames_out: self.frames_out,
            bad_packets: self.bad_packets,
        })
    }

    /// Forgets the dialog.
    fn release(self) {
        self.dialogs.remove_dialog(&self.dialog.id());
    }
}

impl RtpIo {
    /// Sends the bot's BYE (once) and stops the media.
    async fn send_bye(&mut self, core: &mut CallCore, why: &str) {
        self.media_open = false;
        core.queue.clear();
        if self.bye_sent || core.is_media_gone() {
            return;
        }
        self.bye_sent = true;
        let now = core.now();
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
        core.event("hangup", detail);
    }

    async fn on_dialog_state(&mut self, core: &mut CallCore, state: DialogState) {
        match state {
            DialogState::Confirmed(..) => tracing::debug!("ACK received: dialog confirmed"),
            DialogState::Terminated(_, reason) => {
                if self.bye_sent {
                    tracing::debug!(?reason, "dialog terminated after our BYE");
                    return;
                }
                let now = core.now();
                let detail = match reason {
                    TerminatedReason::UacBye => "callee_bye".to_string(),
                    TerminatedReason::UacCancel => "callee_cancel".to_string(),
                    TerminatedReason::Timeout => "ack_timeout".to_string(),
                    other => format!("{other:?}"),
                };
                tracing::info!(now, %detail, "the caller hung up");
                core.event("hangup", detail);
                self.callee_gone(core);
                core.session.on_hangup(now);
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
                    let now = core.now();
                    core.session.on_dtmf(now, digit);
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

    fn callee_gone(&mut self, core: &mut CallCore) {
        self.media_open = false;
        core.queue.clear();
        core.media_gone();
    }

    fn on_rtp(&mut self, core: &mut CallCore, data: &[u8], from: SocketAddr) {
        match self.latch.classify(from) {
            Source::Caller => {}
            Source::Candidate => {
                if rtp::parse(data).is_err() {
                    self.foreign_packet(from);
                    return;
                }
                self.latch.latch(from);
                tracing::info!(rtp_from = %from, "symmetric RTP: following the caller's RTP source");
            }
            Source::Foreign => {
                self.foreign_packet(from);
                return;
            }
        }
        match rtp::parse(data) {
            Ok(packet) if packet.payload_type == PCMU => {
                self.frames_in += 1;
                let samples = mulaw::decode_all(packet.payload);
                let now = core.now();
                core.session.on_audio(now, &samples);
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

    /// A datagram from an address that is not the caller's: dropped unread.
    fn foreign_packet(&mut self, from: SocketAddr) {
        let packets = self.foreign.add(from);
        if packets <= 3 || packets.is_power_of_two() {
            tracing::warn!(
                %from,
                packets,
                expected = %self.latch.describe(),
                "RTP from an address that is not the caller's: dropped"
            );
        }
    }

    fn bad_packet(&mut self, what: &str) {
        self.bad_packets += 1;
        if self.bad_packets <= 5 || self.bad_packets.is_power_of_two() {
            tracing::warn!(count = self.bad_packets, "bad RTP packet ignored: {what}");
        }
    }

    /// One 20 ms tick: sends the next frame of the current clip, or silence.
    fn send_frame(&mut self, core: &mut CallCore) {
        let clips = Arc::clone(&core.clips);
        let mut frame = [SILENCE; FRAME_SAMPLES];
        let mut first_of = None;
        let mut finished = None;
        while let Some(front) = core.queue.front_mut() {
            let Some(clip) = clips.get(&front.line) else {
                tracing::error!(line = %front.line, "no clip for this line; skipping it");
                let play_id = front.play_id;
                core.queue.pop_front();
                let now = core.now();
                core.session.on_playback_finished(now, play_id);
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
                core.queue.pop_front();
            }
            break;
        }
        let packet = self.sender.packet(&frame);
        match self.rtp.try_send_to(&packet, self.latch.send_to()) {
            Ok(_) => self.frames_out += 1,
            Err(err) => {
                self.send_errors += 1;
                if self.send_errors <= 3 || self.send_errors.is_power_of_two() {
                    tracing::warn!(%err, count = self.send_errors, "RTP send failed");
                }
            }
        }
        if let Some(play_id) = first_of {
            core.first_frame_sent(play_id);
        }
        if let Some(play_id) = finished {
            let now = core.now();
            tracing::debug!(play_id, "clip sent to its last frame");
            core.session.on_playback_finished(now, play_id);
        }
    }
}

/// Datagrams from addresses that are not the caller's, for the log and the call's events.
#[derive(Debug, Default)]
struct ForeignRtp {
    packets: u64,
    /// The first few sources, in order.
    sources: Vec<SocketAddr>,
}

impl ForeignRtp {
    const SOURCES_KEPT: usize = 4;

    /// Counts one; returns the count so far.
    fn add(&mut self, from: SocketAddr) -> u64 {
        self.packets += 1;
        if self.sources.len() < Self::SOURCES_KEPT && !self.sources.contains(&from) {
            self.sources.push(from);
        }
        self.packets
    }

    /// `"52 packets from 127.0.0.1:4242, 127.0.0.2:999"`.
    fn describe(&self) -> String {
        let sources: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
        let more = if self.sources.len() == Self::SOURCES_KEPT {
            " (and maybe others)"
        } else {
            ""
        };
        format!("{} packets from {}{more}", self.packets, sources.join(", "))
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
