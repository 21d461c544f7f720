//! What the SIP tests share: the library's SIP server on a free UDP port of 127.0.0.1, a
//! raw SIP user agent on a real UDP socket (requests written by hand, responses read back),
//! the SDP offers it sends, RTP streams sent in real time, and sipp scenarios.
#![allow(dead_code)]

use crate::support::{clips, init_tracing, pool, script};
use renewal_bot::labels::Outcome;
use renewal_bot::session::SessionConfig;
use renewal_bot::store::Store;
use renewal_bot::transport::sip::{SipConfig, SipServer};
use renewal_bot::transport::{CallDeps, CallEvent};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

/// A config on 127.0.0.1:0 with the flags' defaults.
pub fn local_config() -> SipConfig {
    SipConfig::new("127.0.0.1:0".parse().expect("addr"), None).expect("config")
}

pub async fn start_server(store: Store, with_asr: bool) -> SipServer {
    start_server_with(local_config(), store, with_asr, SessionConfig::default()).await
}

pub async fn start_server_with(
    config: SipConfig,
    store: Store,
    with_asr: bool,
    session: SessionConfig,
) -> SipServer {
    init_tracing();
    let deps = CallDeps {
        store,
        recognizer: with_asr.then(pool),
        script: script(),
        clips: clips(),
        session,
    };
    SipServer::start(config, deps)
        .await
        .expect("start the SIP server")
}

/// Waits for the end of one call; returns its call id and outcome.
pub async fn wait_ended(
    events: &mut broadcast::Receiver<CallEvent>,
    limit: Duration,
) -> (String, Option<Outcome>) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Ok(CallEvent::Ended { call_id, summary })) => {
                return (call_id, summary.map(|s| s.outcome));
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => panic!("call events: {err}"),
            Err(_) => panic!("no call ended within {limit:?}"),
        }
    }
}

/// Waits until the server has no live call; fails after 10 s.
pub async fn wait_idle(server: &SipServer) {
    wait_live_at_most(server, 0).await;
}

/// Waits until at most `n` calls are live (a call counts until just after its `Ended`
/// event, and its `--max-calls` slot is free when it no longer counts); fails after 10 s.
pub async fn wait_live_at_most(server: &SipServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.live_calls() > n {
        assert!(
            Instant::now() < deadline,
            "{} calls still live after 10 s",
            server.live_calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw SIP user agent on its own UDP socket.
pub struct RawUac {
    pub socket: UdpSocket,
    pub bot: SocketAddr,
    pub local: SocketAddr,
}

/// A response: status code, the raw text.
pub struct Response {
    pub status: u16,
    pub text: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.text.split("\r\n\r\n").next().unwrap_or_default();
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.header("To").and_then(|t| t.split("tag=").nth(1))
    }
}

/// A request the bot sent (e.g. its BYE).
pub struct Request {
    pub method: String,
    pub text: String,
}

impl RawUac {
    pub async fn new(bot: SocketAddr) -> RawUac {
        RawUac::bind("127.0.0.1:0", bot).await
    }

    /// A user agent on a given local address (e.g. 127.0.0.2:0 for a second source IP).
    pub async fn bind(local: &str, bot: SocketAddr) -> RawUac {
        let socket = UdpSocket::bind(local).await.expect("bind");
        let local = socket.local_addr().expect("addr");
        RawUac { socket, bot, local }
    }

    pub async fn send(&self, text: &str) {
        self.socket
            .send_to(text.as_bytes(), self.bot)
            .await
            .expect("send");
    }

    /// The next response with a status of at least `min` (skips e.g. 100 Trying), or None.
    pub async fn response(&self, min: u16, limit: Duration) -> Option<Response> {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (len, _) = timeout(left, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            let Some(status) = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            else {
                continue; // a request (e.g. the bot's BYE) is not waited for here
            };
            if status >= min {
                return Some(Response { status, text });
            }
        }
    }

    /// The next request from the bot (responses are skipped), or None.
    pub async fn request_from_bot(&self, limit: Duration) -> Option<Request> {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (len, _) = timeout(left, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            if text.starts_with("SIP/2.0 ") {
                continue;
            }
            let method = text.split(' ').next().unwrap_or_default().to_string();
            return Some(Request { method, text });
        }
    }

    /// Answers a request of the bot's with 200 OK (its Via, From, To, Call-ID and CSeq).
    pub async fn reply_ok(&self, request: &Request) {
        let head = request.text.split("\r\n\r\n").next().unwrap_or_default();
        let mut out = String::from("SIP/2.0 200 OK\r\n");
        for line in head.lines().skip(1) {
            let name = line.split(':').next().unwrap_or_default().trim();
            if ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        self.send(&out).await;
    }

    pub fn request(
        &self,
        method: &str,
        call_id: &str,
        from_user: &str,
        cseq: u32,
        to_tag: Option<&str>,
        sdp: Option<&str>,
    ) -> String {
        let branch = format!("z9hG4bK{}", uuid::Uuid::new_v4().simple());
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let cseq_method = if method == "ACK" { "ACK" } else { method };
        let (ctype, body) = match sdp {
            Some(b) => ("Content-Type: application/sdp\r\n", b),
            None => ("", ""),
        };
        format!(
            "{method} sip:bot@{bot} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{from_user}@127.0.0.1>;tag=t-{call_id}\r\n\
             To: <sip:bot@{bot}>{to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {cseq_method}\r\n\
             Contact: <sip:{from_user}@{local}>\r\n\
             {ctype}Content-Length: {len}\r\n\r\n{body}",
            bot = self.bot,
            local = self.local,
            len = body.len(),
        )
    }

    /// INVITE → 200 OK → ACK; returns the To tag and the bot's RTP address.
    pub async fn call(
        &self,
        call_id: &str,
        from_user: &str,
        rtp: SocketAddr,
    ) -> (String, SocketAddr) {
        self.send(&self.request("INVITE", call_id, from_user, 1, None, Some(&offer(rtp))))
            .await;
        let ok = self
            .response(200, Duration::from_secs(3))
            .await
            .expect("INVITE answered");
        assert_eq!(ok.status, 200, "{}", ok.text);
        let (tag, bot_rtp) = answered(&ok);
        self.send(&self.request("ACK", call_id, from_user, 1, Some(&tag), None))
            .await;
        (tag, bot_rtp)
    }

    /// BYE, and its 200 OK.
    pub async fn hang_up(&self, call_id: &str, from_user: &str, tag: &str) {
        self.send(&self.request("BYE", call_id, from_user, 2, Some(tag), None))
            .await;
        let ok = self
            .response(200, Duration::from_secs(3))
            .await
            .expect("BYE answered");
        assert_eq!(ok.status, 200, "{}", ok.text);
    }
}

/// A PCMU offer with RTP at `rtp`.
pub fn offer(rtp: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {}\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        rtp.ip(),
        rtp.port()
    )
}

/// The To tag and the bot's RTP address from a 200 OK.
pub fn answered(ok: &Response) -> (String, SocketAddr) {
    let to_tag = ok.to_tag().map(str::to_string).expect("To tag in 200");
    let body = ok.body();
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    (to_tag, format!("{ip}:{port}").parse().expect("RTP address"))
}

/// RTP packets (PCMU, 20 ms of μ-law each) of `mulaw`, with their own SSRC.
pub fn rtp_packets(mulaw: &[u8], ssrc: u32) -> Vec<Vec<u8>> {
    mulaw
        .chunks(160)
        .enumerate()
        .map(|(i, chunk)| {
            let seq = i as u16;
            let ts = (i as u32).wrapping_mul(160);
            let mut p = vec![0x80, 0x00];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

/// Sends `packets` from `socket` to `to`, one every 20 ms.
pub async fn send_paced(socket: &UdpSocket, to: SocketAddr, packets: &[Vec<u8>]) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for p in packets {
        tick.tick().await;
        socket.send_to(p, to).await.expect("send RTP");
    }
}

/// How many datagrams arrive on `socket` within `within`.
pub async fn count_datagrams(socket: &UdpSocket, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        n += 1;
    }
    n
}

/// Whether sipp is installed; the tests that need it fail, never skip, without it.
pub fn sipp_installed() {
    match std::process::Command::new("sipp").arg("-v").output() {
        Ok(_) => {}
        Err(err) => panic!(
            "sipp is needed for this test ({err}): install it with `scripts/bootstrap \
             --softphone` (apt-get install -y sip-tester)"
        ),
    }
}

/// Runs sipp as a client of `bot` with `scenario` (XML text) from `local_ip`; `extra` are
/// more flags (e.g. `-m 1`). Returns its exit status and what it printed and logged.
pub async fn run_sipp(
    dir: &Path,
    scenario: &str,
    bot: SocketAddr,
    local_ip: &str,
    extra: &[&str],
    limit: Duration,
) -> (Option<i32>, String) {
    let path = dir.join("scenario.xml");
    std::fs::write(&path, scenario).expect("write the sipp scenario");
    let errors = dir.join("errors.log");
    let output = tokio::process::Command::new("sipp")
        .arg(bot.to_string())
        .arg("-sf")
        .arg(&path)
        .args(["-i", local_ip, "-nostdin", "-trace_err", "-error_file"])
        .arg(&errors)
        .args(extra)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(limit, output)
        .await
        .unwrap_or_else(|_| panic!("sipp did not finish within {limit:?}"))
        .expect("run sipp");
    let logged = std::fs::read_to_string(&errors).unwrap_or_default();
    let text = format!(
        "{}\n{}\n{logged}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}
