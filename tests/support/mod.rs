//! Test doubles for Twilio: a real server on 127.0.0.1:0, a fake Twilio that signs its
//! requests and speaks Media Streams over a real WebSocket (playing the bot's audio back in
//! real time and returning its marks when that audio "has played"), and a fake Calls API.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use renewal_bot::asr::{AsrConfig, RecognizerPool};
use renewal_bot::audio::clips::ClipLibrary;
use renewal_bot::audio::{mulaw, wav};
use renewal_bot::dialog::Script;
use renewal_bot::session::SessionConfig;
use renewal_bot::store::Store;
use renewal_bot::transport::twilio::signature;
use renewal_bot::transport::twilio::{AppState, ServeConfig, router};
use renewal_bot::transport::{CallDeps, CallEvent};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const TOKEN: &str = "test-auth-token-0123456789";
pub const ACCOUNT: &str = "AC00000000000000000000000000000000";
pub const FROM: &str = "+14155550100";

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "renewal_bot=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn script() -> Arc<Script> {
    static SCRIPT: OnceLock<Arc<Script>> = OnceLock::new();
    SCRIPT
        .get_or_init(|| {
            Arc::new(
                Script::load(&repo_path("script"))
                    .unwrap_or_else(|e| panic!("cannot load script/: {e}")),
            )
        })
        .clone()
}

pub fn clips() -> Arc<ClipLibrary> {
    static CLIPS: OnceLock<Arc<ClipLibrary>> = OnceLock::new();
    CLIPS
        .get_or_init(|| {
            Arc::new(ClipLibrary::load(&repo_path("audio")).unwrap_or_else(|e| {
                panic!("cannot load 李明's clips from audio/: {e} (render them with tools/tts)")
            }))
        })
        .clone()
}

/// The real whisper pool, shared by the tests of one binary. Fails (never skips) when the
/// model is missing.
pub fn pool() -> RecognizerPool {
    static POOL: OnceLock<RecognizerPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let path = repo_path(AsrConfig::default_model_path().to_str().unwrap_or_default());
        assert!(
            path.is_file(),
            "the whisper model is missing at {}: run `models/fetch` first",
            path.display()
        );
        RecognizerPool::start(AsrConfig::for_script(path, &script()))
            .unwrap_or_else(|e| panic!("cannot start the recognizer: {e} (run `models/fetch`)"))
    })
    .clone()
}

pub struct ServerOpts {
    pub token: Option<String>,
    pub recognizer: Option<RecognizerPool>,
    pub account_sid: Option<String>,
    pub api_base: Option<String>,
    pub session: SessionConfig,
    pub store: Option<Store>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            token: Some(TOKEN.into()),
            recognizer: None,
            account_sid: None,
            api_base: None,
            session: SessionConfig::default(),
            store: None,
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub state: AppState,
    pub store: Store,
    pub token: Option<String>,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `/twiml` answered.
#[derive(Debug, Clone)]
pub struct Twiml {
    pub xml: String,
    pub stream_url: String,
    pub params: BTreeMap<String, String>,
}

impl TestServer {
    pub async fn start(opts: ServerOpts) -> TestServer {
        init_tracing();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let base = format!("http://{addr}");
        let store = match opts.store {
            Some(s) => s,
            None => Store::open_in_memory().expect("in-memory store"),
        };
        let config = ServeConfig {
            listen: addr,
            public_url: Some(base.clone()),
            auth_token: opts.token.clone(),
            account_sid: opts.account_sid,
            twilio_api_base: opts.api_base.unwrap_or_else(|| "http://127.0.0.1:9".into()),
            audio_dir: repo_path("audio"),
            script_dir: repo_path("script"),
            shutdown_grace: Duration::from_secs(5),
        };
        let state = AppState::new(
            &config,
            CallDeps {
                store: store.clone(),
                recognizer: opts.recognizer,
                script: script(),
                clips: clips(),
                session: opts.session,
            },
        );
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            addr,
            base,
            state,
            store,
            token: opts.token,
            http: reqwest::Client::new(),
            task,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/media", self.addr)
    }

    fn sign(&self, url: &str, params: &[(&str, &str)]) -> Option<String> {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.token
            .as_deref()
            .map(|t| signature::compute(t, url, &owned))
    }

    /// A form POST signed as Twilio would sign it.
    pub async fn post_signed(&self, path: &str, params: &[(&str, &str)]) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.post(&url).form(params);
        if let Some(sig) = self.sign(&url, params) {
            req = req.header("X-Twilio-Signature", sig);
        }
        req.send().await.expect("POST")
    }

    /// Twilio fetching the TwiML when the callee answers.
    pub async fn twiml(&self, call_sid: &str, to: &str) -> Twiml {
        let resp = self
            .post_signed(
                "/twiml",
                &[
                    ("AccountSid", ACCOUNT),
                    ("CallSid", call_sid),
                    ("CallStatus", "in-progress"),
                    ("Direction", "outbound-api"),
                    ("From", FROM),
                    ("To", to),
                    ("AnsweredBy", "human"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200, "/twiml answered {}", resp.status());
        let xml = resp.text().await.expect("twiml body");
        parse_twiml(&xml)
    }

    /// Opens `/media` with a valid signature (or `signature` as given).
    pub async fn connect_media(
        &self,
        signature: Option<&str>,
    ) -> Result<WsStream, tokio_tungstenite::tungstenite::Error> {
        let url = self.ws_url();
        let mut request = url.as_str().into_client_request()?;
        let sig = match signature {
            Some(s) => Some(s.to_string()),
            None => self.sign(&url, &[]),
        };
        if let Some(sig) = sig {
            request
                .headers_mut()
                .insert("X-Twilio-Signature", sig.parse().expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(ws)
    }

    /// Waits for the `Ended` event of `call_id` (the store has the whole record then).
    pub async fn wait_ended(
        events: &mut tokio::sync::broadcast::Receiver<CallEvent>,
        call_id: &str,
        limit: Duration,
    ) -> Option<renewal_bot::session::CallSummary> {
        let deadline = Instant::now() + limit;
        loop {
            let ev = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("call {call_id} did not end within {limit:?}"));
            match ev {
                Ok(CallEvent::Ended {
                    call_id: id,
                    summary,
                }) if id == call_id => return summary,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel: {e}"),
            }
        }
    }
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn parse_twiml(xml: &str) -> Twiml {
    let attr = |tag_start: usize, name: &str| -> Option<String> {
        let rest = &xml[tag_start..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let key = format!("{name}=\"");
        let at = tag.find(&key)? + key.len();
        let len = tag[at..].find('"')?;
        Some(
            tag[at..at + len]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        )
    };
    let stream_at = xml.find("<Stream ").expect("TwiML has <Stream>");
    let stream_url = attr(stream_at, "url").expect("Stream url");
    let mut params = BTreeMap::new();
    let mut from = 0;
    while let Some(i) = xml[from..].find("<Parameter ") {
        let at = from + i;
        if let (Some(n), Some(v)) = (attr(at, "name"), attr(at, "value")) {
            params.insert(n, v);
        }
        from = at + 1;
    }
    Twiml {
        xml: xml.to_string(),
        stream_url,
        params,
    }
}

pub fn connected_msg() -> String {
    serde_json::json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
}

pub fn start_msg(stream_sid: &str, call_sid: &str, params: &BTreeMap<String, String>) -> String {
    serde_json::json!({
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        }
    })
    .to_string()
}

pub fn media_msg(stream_sid: &str, seq: u64, chunk: u64, payload: &[u8]) -> String {
    serde_json::json!({
        "event": "media",
        "sequenceNumber": seq.to_string(),
        "streamSid": stream_sid,
        "media": {
            "track": "inbound",
            "chunk": chunk.to_string(),
            "timestamp": (chunk * 20).to_string(),
            "payload": BASE64.encode(payload)
        }
    })
    .to_string()
}

pub fn mark_msg(stream_sid: &str, seq: u64, name: &str) -> String {
    serde_json::json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": stream_sid, "mark": {"name": name}}).to_string()
}

pub fn stop_msg(stream_sid: &str, seq: u64, call_sid: &str) -> String {
    serde_json::json!({"event": "stop", "sequenceNumber": seq.to_string(), "streamSid": stream_sid, "stop": {"accountSid": ACCOUNT, "callSid": call_sid}}).to_string()
}

// ------------------------------------------------------------------ fixture manifest

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub outcome: String,
    pub dnc: Option<bool>,
    pub end: Option<String>,
    #[serde(rename = "turn", default)]
    pub turns: Vec<Turn>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Turn {
    pub audio: Option<String>,
    pub text: Option<String>,
}

impl Case {
    pub fn expected_dnc(&self) -> bool {
        self.dnc.unwrap_or_else(|| {
            self.outcome
                .parse::<renewal_bot::labels::Outcome>()
                .map(|o| o.adds_to_do_not_call())
                .unwrap_or(false)
        })
    }

    pub fn hangs_up(&self) -> bool {
        self.end.as_deref() == Some("hangup")
    }
}

/// `tests/fixtures/calls.toml`; fails with a clear message when it is not there.
pub fn fixtures() -> (Manifest, PathBuf) {
    let path = repo_path("tests/fixtures/calls.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (render the fixtures with tools/tts/render_fixtures.py)",
            path.display()
        )
    });
    let manifest: Manifest =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    (manifest, dir)
}

/// A turn's audio as 8 kHz μ-law.
pub fn turn_mulaw(dir: &Path, turn: &Turn) -> Vec<u8> {
    let rel = turn.audio.as_deref().expect("a turn without audio");
    let audio = wav::read_mono(&dir.join(rel)).unwrap_or_else(|e| panic!("{e}"));
    let audio = audio.to_rate(8_000).unwrap_or_else(|e| panic!("{e}"));
    mulaw::encode_all(&audio.to_i16())
}

// ------------------------------------------------------------------ the fake Twilio call

/// How the fake callee behaves.
#[derive(Debug, Clone, Default)]
pub struct CallPlan {
    /// Each turn's audio, μ-law 8 kHz.
    pub turns: Vec<Vec<u8>>,
    /// Hang up (stop + close) right after the last turn instead of staying silent.
    pub hang_up_after_last: bool,
    /// Start the first turn this long after the bot's first frame (talk over the opening).
    pub barge_in_after: Option<Duration>,
    /// The line fails (without Twilio's `stop`) at this point of the call.
    pub line_failure: Option<FailAt>,
    /// Twilio never returns the bot's marks (a lossy or misbehaving media path).
    pub marks_never_return: bool,
    /// Send no inbound `media` at all (not even silence).
    pub no_inbound_media: bool,
    /// Gap between the bot's last mark coming back and the next turn.
    pub reply_gap: Duration,
    /// Give up after this long.
    pub limit: Duration,
}

impl CallPlan {
    pub fn new(turns: Vec<Vec<u8>>) -> CallPlan {
        CallPlan {
            turns,
            reply_gap: Duration::from_millis(400),
            limit: Duration::from_secs(150),
            ..Default::default()
        }
    }
}

/// How a line fails, each without Twilio's `stop` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFailure {
    /// TCP reset (RST): SO_LINGER 0, then the socket is dropped.
    Reset,
    /// The TCP connection just ends (FIN), no WebSocket close frame.
    Vanish,
    /// A WebSocket close frame, but no `stop` before it.
    CloseWithoutStop,
    /// One text frame far over the server's message limit (1 MiB of JSON).
    OversizedFrame,
}

/// When the line fails: `delay` after the plan's first `after_turns` turns ended (after
/// the bot's first frame when `after_turns` is 0).
#[derive(Debug, Clone, Copy)]
pub struct FailAt {
    pub how: LineFailure,
    pub after_turns: usize,
    pub delay: Duration,
}

/// Makes the line fail as `how` says. Returns once the socket is gone (for an oversized
/// frame: once the server closed it, or after 10 s).
pub async fn fail_line(ws: WsStream, stream_sid: &str, how: LineFailure) {
    match how {
        LineFailure::Reset => {
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                tcp.set_zero_linger().expect("SO_LINGER 0");
            }
            drop(ws);
        }
        LineFailure::Vanish => {
            let mut tcp = ws.into_inner();
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = &mut tcp {
                use tokio::io::AsyncWriteExt as _;
                let _ = tcp.shutdown().await;
            }
            drop(tcp);
        }
        LineFailure::CloseWithoutStop => {
            let mut ws = ws;
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        LineFailure::OversizedFrame => {
            let mut ws = ws;
            let padding = "A".repeat(1 << 20);
            let big = media_msg(stream_sid, 1_000_000, 1_000_000, padding.as_bytes());
            let _ = ws.send(Message::text(big)).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
}

/// Reads what the server sends on a stream it should refuse: Ok once the server closed the
/// socket without sending any audio, Err naming what it sent instead (or that it kept the
/// socket open for 5 s).
pub async fn refused(mut ws: WsStream) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("the socket stayed open for 5 s".into()),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Ok(()),
            Ok(Some(Ok(Message::Text(text)))) => {
                return Err(format!("the server answered the stream: {text:.120}"));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Opens `/media` and sends `connected` and a `start` with these parameters: what anyone
/// holding a signed upgrade can do.
pub async fn start_stream(
    server: &TestServer,
    stream_sid: &str,
    call_sid: &str,
    params: &BTreeMap<String, String>,
) -> WsStream {
    let mut ws = server.connect_media(None).await.expect("open /media");
    ws.send(Message::text(connected_msg()))
        .await
        .expect("send connected");
    ws.send(Message::text(start_msg(stream_sid, call_sid, params)))
        .await
        .expect("send start");
    ws
}

/// What the fake Twilio saw, times since `start` was sent.
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    pub first_media: Option<Duration>,
    pub media_frames: usize,
    /// Largest amount of bot audio buffered ahead of real time.
    pub max_lead: Duration,
    pub marks_from_bot: Vec<(String, Duration)>,
    pub marks_returned: Vec<(String, Duration)>,
    pub clears: Vec<Duration>,
    pub turn_started: Vec<Duration>,
    pub turn_ended: Vec<Duration>,
    /// When the bot closed the socket.
    pub closed_by_bot: Option<Duration>,
    /// Marks not yet returned when the bot closed (should be none).
    pub marks_pending_at_close: usize,
    /// Bot audio still unplayed when it closed.
    pub unplayed_at_close: Duration,
    pub hung_up_by_callee: bool,
    /// The plan's line failure happened.
    pub line_failed: bool,
    pub timed_out: bool,
}

/// Plays one call as Twilio would: `connected`, `start`, then 20 ms frames in real time
/// (turn audio or silence), bot audio "played" in real time, marks returned when played,
/// `clear` honoured. Returns when the bot closes, the plan hangs up or makes the line
/// fail, or the limit passes.
pub async fn fake_call(
    ws: WsStream,
    call_sid: &str,
    params: &BTreeMap<String, String>,
    plan: CallPlan,
) -> CallLog {
    let stream_sid = format!("MZ{}", uuid::Uuid::new_v4().simple());
    let (mut tx, mut rx) = ws.split();
    let mut log = CallLog::default();
    let _ = tx.send(Message::text(connected_msg())).await;
    let t0 = Instant::now();
    let _ = tx
        .send(Message::text(start_msg(&stream_sid, call_sid, params)))
        .await;
    let mut seq = 2u64;
    let mut chunk = 0u64;
    let mut playout_end = Instant::now();
    let mut pending_marks: VecDeque<(String, Instant)> = VecDeque::new();
    let mut last_line_played: Option<Instant> = None;
    let mut last_turn_end: Option<Instant> = None;
    let mut first_bot_frame: Option<Instant> = None;
    let mut turn_idx = 0usize;
    let mut speaking: Option<usize> = None; // offset in the current turn
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = vec![0xFFu8; 160];
    let deadline = t0 + plan.limit;

    loop {
        tokio::select! {
            msg = rx.next() => {
                let now = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        log.closed_by_bot = Some(now - t0);
                        log.marks_pending_at_close = pending_marks.len();
                        log.unplayed_at_close = playout_end.saturating_duration_since(now);
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                let v: serde_json::Value = serde_json::from_str(&text).expect("bot sent JSON");
                match v["event"].as_str() {
                    Some("media") => {
                        assert_eq!(v["streamSid"], stream_sid.as_str());
                        let payload = BASE64.decode(v["media"]["payload"].as_str().unwrap_or_default()).expect("base64 from the bot");
                        assert_eq!(payload.len(), 160, "bot frames are 20 ms");
                        log.media_frames += 1;
                        if log.first_media.is_none() {
                            log.first_media = Some(now - t0);
                            first_bot_frame = Some(now);
                        }
                        playout_end = playout_end.max(now) + Duration::from_millis(20);
                        log.max_lead = log.max_lead.max(playout_end - now);
                    }
                    Some("mark") => {
                        let name = v["mark"]["name"].as_str().unwrap_or_default().to_string();
                        log.marks_from_bot.push((name.clone(), now - t0));
                        pending_marks.push_back((name, playout_end.max(now)));
                    }
                    Some("clear") => {
                        log.clears.push(now - t0);
                        playout_end = now;
                        // Twilio returns the pending marks at once.
                        while let Some((name, _)) = pending_marks.pop_front() {
                            if !plan.marks_never_return {
                                let _ = tx.send(Message::text(mark_msg(&stream_sid, seq, &name))).await;
                                seq += 1;
                                log.marks_returned.push((name, now - t0));
                            }
                            last_line_played = Some(now);
                        }
                    }
                    other => panic!("unexpected message from the bot: {other:?} {text}"),
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now >= deadline {
                    log.timed_out = true;
                    break;
                }
                while pending_marks.front().is_some_and(|(_, due)| *due <= now) {
                    if let Some((name, _)) = pending_marks.pop_front() {
                        if !plan.marks_never_return {
                            let _ = tx.send(Message::text(mark_msg(&stream_sid, seq, &name))).await;
                            seq += 1;
                            log.marks_returned.push((name, now - t0));
                        }
                        // The line has played (the callee heard it), mark or not.
                        last_line_played = Some(now);
                    }
                }
                if let Some(fail) = plan.line_failure {
                    let since = if fail.after_turns == 0 {
                        first_bot_frame
                    } else if turn_idx >= fail.after_turns {
                        last_turn_end
                    } else {
                        None
                    };
                    if since.is_some_and(|at| now >= at + fail.delay) {
                        log.line_failed = true;
                        let ws = tx.reunite(rx).expect("the halves of one socket");
                        fail_line(ws, &stream_sid, fail.how).await;
                        return log;
                    }
                }
                if speaking.is_none() && turn_idx < plan.turns.len() {
                    let ready = match (plan.barge_in_after, turn_idx, first_bot_frame) {
                        (Some(after), 0, Some(first)) => now >= first + after,
                        (Some(_), 0, None) => false,
                        _ => {
                            let bot_spoke_since = match (last_line_played, last_turn_end) {
                                (Some(m), Some(t)) => m > t,
                                (Some(_), None) => true,
                                _ => false,
                            };
                            bot_spoke_since
                                && pending_marks.is_empty()
                                && playout_end <= now
                                && last_line_played.is_some_and(|m| now >= m + plan.reply_gap)
                        }
                    };
                    if ready {
                        speaking = Some(0);
                        log.turn_started.push(now - t0);
                    }
                }
                let frame: Vec<u8> = match speaking {
                    Some(offset) => {
                        let audio = &plan.turns[turn_idx];
                        let end = (offset + 160).min(audio.len());
                        let mut f = audio[offset..end].to_vec();
                        f.resize(160, 0xFF);
                        if end >= audio.len() {
                            speaking = None;
                            turn_idx += 1;
                            last_turn_end = Some(now);
                            log.turn_ended.push(now - t0);
                        } else {
                            speaking = Some(end);
                        }
                        f
                    }
                    None => silence.clone(),
                };
                chunk += 1;
                if !plan.no_inbound_media {
                    let _ = tx.send(Message::text(media_msg(&stream_sid, seq, chunk, &frame))).await;
                    seq += 1;
                }
                if plan.hang_up_after_last && turn_idx >= plan.turns.len() && speaking.is_none() {
                    // A moment of line noise, then the callee hangs up.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = tx.send(Message::text(stop_msg(&stream_sid, seq, call_sid))).await;
                    let _ = tx.send(Message::Close(None)).await;
                    log.hung_up_by_callee = true;
                    break;
                }
            }
        }
    }
    log
}

/// Runs one fixture case against the server: `/twiml`, `/media`, replay; returns the call
/// id and what the fake Twilio saw.
pub async fn run_case(server: &TestServer, dir: &Path, case: &Case, to: &str) -> (String, CallLog) {
    let call_sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    let twiml = server.twiml(&call_sid, to).await;
    let call_id = twiml
        .params
        .get("call_id")
        .cloned()
        .expect("call_id parameter");
    let ws = server.connect_media(None).await.expect("open /media");
    let mut plan = CallPlan::new(case.turns.iter().map(|t| turn_mulaw(dir, t)).collect());
    plan.hang_up_after_last = case.hangs_up();
    let log = fake_call(ws, &call_sid, &twiml.params, plan).await;
    (call_id, log)
}

pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v.get(rank.min(v.len() - 1)).copied()
}

// ------------------------------------------------------------------ fake Calls API

/// One request the fake Calls API received.
#[derive(Debug, Clone)]
pub struct RestRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub form: Vec<(String, String)>,
}

/// A call the fake Twilio made, as its call list shows it (the Call resource's fields, times
/// in RFC 2822 as Twilio writes them).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeCall {
    pub sid: String,
    pub account_sid: String,
    pub to: String,
    pub from: String,
    /// `queued` when created, then `ringing`, `in-progress`, `completed`, ...
    pub status: String,
    pub direction: String,
    pub date_created: String,
    pub date_updated: String,
    /// Null until the call is dialled (Twilio: "Null if the call has not yet been dialed").
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub duration: Option<String>,
    pub api_version: String,
    pub uri: String,
}

/// How the fake answers a create-call request.
#[derive(Debug, Clone)]
pub enum CreateMode {
    /// With the answer given to [`FakeRest::start`]; a 2xx answer creates the call.
    Answer,
    /// Creates the call, then answers this (status, body) instead: the answer is lost on
    /// the way, as with a Twilio-side failure after the call was made.
    CreateThenAnswer(u16, String),
    /// Creates the call and never answers (the dialer is killed while it waits).
    CreateThenHang,
    /// Like [`CreateMode::CreateThenHang`] for calls to this number; answers the others.
    CreateThenHangFor(String),
}

#[derive(Clone)]
struct FakeRestState {
    requests: Arc<Mutex<Vec<RestRequest>>>,
    list_requests: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<Vec<FakeCall>>>,
    create: Arc<(u16, String)>,
    create_mode: Arc<Mutex<CreateMode>>,
    list_failure: Arc<Mutex<Option<(u16, String)>>>,
    update: Arc<(u16, String)>,
}

pub struct FakeRest {
    pub base: String,
    pub requests: Arc<Mutex<Vec<RestRequest>>>,
    state: FakeRestState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// RFC 2822 in GMT, the way the Calls API writes times: `Tue, 31 Aug 2010 20:36:28 +0000`.
pub fn rfc2822(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

impl FakeRest {
    /// A fake `api.twilio.com`: create-call answers `create`, call updates answer `update`
    /// (status code, JSON body; `{n}` in `create` is replaced by the request's number). A
    /// call created with a 2xx answer joins the account's call list
    /// (`GET .../Calls.json`, filtered and paged as Twilio does).
    pub async fn start(create: (u16, &str), update: (u16, &str)) -> FakeRest {
        Self::start_on("127.0.0.1:0", create, update).await
    }

    /// [`FakeRest::start`] on a given address (a restarted fake keeps its port).
    pub async fn start_on(addr: &str, create: (u16, &str), update: (u16, &str)) -> FakeRest {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = FakeRestState {
            requests: Arc::clone(&requests),
            list_requests: Arc::new(Mutex::new(Vec::new())),
            calls: Arc::new(Mutex::new(Vec::new())),
            create: Arc::new((create.0, create.1.to_string())),
            create_mode: Arc::new(Mutex::new(CreateMode::Answer)),
            list_failure: Arc::new(Mutex::new(None)),
            update: Arc::new((update.0, update.1.to_string())),
        };
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Calls.json",
                axum::routing::post(fake_create).get(fake_list),
            )
            .route(
                "/2010-04-01/Accounts/{account}/Calls/{call}",
                axum::routing::post(fake_update),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRest {
            base: format!("http://{addr}"),
            requests,
            state,
            task,
        }
    }

    /// The create and update requests, in order.
    pub fn requests(&self) -> Vec<RestRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The create-call requests for `to`.
    pub fn creates_to(&self, to: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("/Calls.json"))
            .filter(|r| r.form.iter().any(|(k, v)| k == "To" && v == to))
            .count()
    }

    /// The query strings of the list requests, in order.
    pub fn list_requests(&self) -> Vec<String> {
        self.state
            .list_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The account's calls, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.state
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn set_create_mode(&self, mode: CreateMode) {
        if let Ok(mut m) = self.state.create_mode.lock() {
            *m = mode;
        }
    }

    /// Makes the list requests fail with (status, body), or work again with `None`.
    pub fn fail_lists(&self, failure: Option<(u16, &str)>) {
        if let Ok(mut f) = self.state.list_failure.lock() {
            *f = failure.map(|(code, body)| (code, body.to_string()));
        }
    }

    /// Moves a call on: `ringing` and later statuses have a start time, final ones an end.
    pub fn set_status(&self, sid: &str, status: &str) {
        let now = rfc2822(time::OffsetDateTime::now_utc());
        if let Ok(mut calls) = self.state.calls.lock() {
            for call in calls.iter_mut().filter(|c| c.sid == sid) {
                call.status = status.to_string();
                call.date_updated = now.clone();
                if status != "queued" && call.start_time.is_none() {
                    call.start_time = Some(now.clone());
                }
                if matches!(
                    status,
                    "completed" | "busy" | "no-answer" | "failed" | "canceled"
                ) {
                    call.end_time = Some(now.clone());
                    call.duration = Some("0".into());
                }
            }
        }
    }
}

fn record(state: &FakeRestState, path: String, headers: &HeaderMap, body: &Bytes) {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Ok(mut r) = state.requests.lock() {
        r.push(RestRequest {
            path,
            authorization,
            form,
        });
    }
}

fn reply(answer: &(u16, String)) -> Response {
    let status = StatusCode::from_u16(answer.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/json")],
        answer.1.clone(),
    )
        .into_response()
}

/// HTTP Basic for ACCOUNT:TOKEN, as the client must send.
fn authorized(headers: &HeaderMap) -> bool {
    let expected = format!("Basic {}", BASE64.encode(format!("{ACCOUNT}:{TOKEN}")));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

async fn fake_create(
    State(state): State<FakeRestState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, uri.path().to_string(), &headers, &body);
    // `{n}` in the answer becomes this request's number, so each created call gets its
    // own CallSid as on Twilio.
    let n = state.requests.lock().map(|r| r.len()).unwrap_or_default();
    let answer = (
        state.create.0,
        state.create.1.replace("{n}", &format!("{n:032}")),
    );
    let mode = state
        .create_mode
        .lock()
        .map(|m| m.clone())
        .unwrap_or(CreateMode::Answer);
    let makes_call = match &mode {
        CreateMode::Answer => (200..300).contains(&answer.0),
        CreateMode::CreateThenHangFor(to) if !form_has(&body, "To", to) => {
            (200..300).contains(&answer.0)
        }
        _ => true,
    };
    if makes_call {
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let field = |key: &str| {
            form.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let sid = serde_json::from_str::<serde_json::Value>(&answer.1)
            .ok()
            .and_then(|v| v["sid"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("CA{n:032}"));
        let now = rfc2822(time::OffsetDateTime::now_utc());
        if let Ok(mut calls) = state.calls.lock() {
            calls.push(FakeCall {
                uri: format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json"),
                sid,
                account_sid: ACCOUNT.into(),
                to: field("To"),
                from: field("From"),
                status: "queued".into(),
                direction: "outbound-api".into(),
                date_created: now.clone(),
                date_updated: now,
                start_time: None,
                end_time: None,
                duration: None,
                api_version: "2010-04-01".into(),
            });
        }
    }
    match mode {
        CreateMode::CreateThenHangFor(to) if !form_has(&body, "To", &to) => reply(&answer),
        CreateMode::Answer | CreateMode::CreateThenHangFor(_)
            if !(200..300).contains(&answer.0) =>
        {
            reply(&answer)
        }
        CreateMode::Answer => reply(&answer),
        CreateMode::CreateThenAnswer(code, body) => reply(&(code, body)),
        CreateMode::CreateThenHang | CreateMode::CreateThenHangFor(_) => {
            std::future::pending().await
        }
    }
}

fn form_has(body: &Bytes, key: &str, value: &str) -> bool {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .iter()
        .any(|(k, v)| k == key && v == value)
}

/// `GET /2010-04-01/Accounts/{sid}/Calls.json`: the account's calls, most recent first,
/// filtered by `To`, `From`, `Status` and `StartTime` (`StartTime>=YYYY-MM-DD` arrives as
/// the key `StartTime>`; a call not dialled yet has no start time and matches no
/// `StartTime` filter), `PageSize` at a time (default 50) with `next_page_uri` to go on.
async fn fake_list(
    State(state): State<FakeRestState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let query = uri.query().unwrap_or_default().to_string();
    if let Ok(mut r) = state.list_requests.lock() {
        r.push(query.clone());
    }
    if !authorized(&headers) {
        return reply(&(
            401,
            r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#.into(),
        ));
    }
    if let Some(failure) = state.list_failure.lock().ok().and_then(|f| f.clone()) {
        return reply(&failure);
    }
    let params: Vec<(String, String)> = serde_urlencoded::from_str(&query).unwrap_or_default();
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let date_of = |rfc: &Option<String>| {
        rfc.as_deref()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc2822).ok()
            })
            .map(|t| t.to_offset(time::UtcOffset::UTC).date().to_string())
    };
    let mut calls: Vec<FakeCall> = state
        .calls
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| param("To").is_none_or(|to| c.to == to))
        .filter(|c| param("From").is_none_or(|from| c.from == from))
        .filter(|c| param("Status").is_none_or(|status| c.status == status))
        .filter(|c| {
            let started = date_of(&c.start_time);
            param("StartTime>").is_none_or(|d| started.as_ref().is_some_and(|s| *s >= d))
                && param("StartTime<").is_none_or(|d| started.as_ref().is_some_and(|s| *s <= d))
                && param("StartTime").is_none_or(|d| started.as_ref().is_some_and(|s| *s == d))
        })
        .collect();
    calls.reverse();
    let page_size: usize = param("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let page: usize = param("Page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let from = page * page_size;
    let shown: Vec<FakeCall> = calls.iter().skip(from).take(page_size).cloned().collect();
    let path = uri.path();
    let others: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "Page" | "PageSize" | "PageToken"))
        .cloned()
        .collect();
    let page_uri = |page: usize| {
        let mut query = others.clone();
        query.push(("PageSize".into(), page_size.to_string()));
        query.push(("Page".into(), page.to_string()));
        query.push(("PageToken".into(), format!("PA{}", page * page_size)));
        format!(
            "{path}?{}",
            serde_urlencoded::to_string(&query).unwrap_or_default()
        )
    };
    let next = (from + page_size < calls.len()).then(|| page_uri(page + 1));
    let body = serde_json::json!({
        "calls": shown,
        "end": (from + shown.len()).saturating_sub(1),
        "first_page_uri": page_uri(0),
        "next_page_uri": next,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": (page > 0).then(|| page_uri(page - 1)),
        "start": from,
        "uri": format!("{path}?{query}"),
    });
    reply(&(200, body.to_string()))
}

async fn fake_update(
    State(state): State<FakeRestState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, uri.path().to_string(), &headers, &body);
    reply(&state.update)
}
