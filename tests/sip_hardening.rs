//! The SIP endpoint against hostile and broken peers (issue 10, defects 7 and 8), each
//! against the library's real SIP server on 127.0.0.1 with real peers — sipp, or raw UDP
//! sockets that write SIP and RTP by hand — and each checking the store afterwards (the
//! call record, its events, the do-not-call list):
//!
//! - RTP injected from a third address (another port of the caller's IP; with
//!   `--symmetric-rtp`, another IP) never reaches the session: the real whisper pool is
//!   running, the injected words would end the call as `hostile` and put the caller on the
//!   do-not-call list, yet the call ends `no_response` with no turn and no entry, and the
//!   injector gets none of the bot's audio;
//! - a 200 OK whose ACK never comes (sipp) gets no RTP and is hung up with BYE at the ACK
//!   deadline, recorded `no_response` without do-not-call;
//! - beyond `--max-calls` an INVITE gets 503 with Retry-After, and nothing is recorded;
//! - an INVITE flood from one source (sipp) is cut to the token bucket's burst, while
//!   another source still gets through;
//! - an SDP `c=` address outside `--allow-media-net` (and not the caller's own) gets 488.
//!
//! sipp must be installed (`scripts/bootstrap --softphone`); those tests fail, never skip,
//! without it. Run: `cargo test --release --test sip_hardening -- --nocapture`.

mod sip_peer;
mod support;

use renewal_bot::labels::Outcome;
use renewal_bot::session::SessionConfig;
use renewal_bot::store::Store;
use renewal_bot::transport::sip::admission::InviteRate;
use renewal_bot::transport::sip::media::{MediaNet, MediaPolicy};
use sip_peer::{
    RawUac, count_datagrams, local_config, offer, rtp_packets, run_sipp, send_paced,
    sipp_installed, start_server, start_server_with, wait_ended, wait_idle, wait_live_at_most,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{clips, fixtures, turn_mulaw};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

const SHORT: Duration = Duration::from_secs(3);
/// A callee whose first words end the call as `hostile` (and put it on the list).
const HOSTILE_CASE: &str = "ho-first-words";

fn file_store(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("calls.sqlite")).expect("open the store")
}

/// The μ-law of the hostile case's first utterance.
fn hostile_words() -> Vec<u8> {
    let (manifest, dir) = fixtures();
    let case = manifest
        .cases
        .iter()
        .find(|c| c.name == HOSTILE_CASE)
        .unwrap_or_else(|| panic!("no case {HOSTILE_CASE} in tests/fixtures/calls.toml"));
    turn_mulaw(&dir, &case.turns[0])
}

fn event_details(store: &Store, call_id: &str, kind: &str) -> Vec<String> {
    store
        .call_events(call_id)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.detail)
        .collect()
}

/// Answers every request the bot sends on `uac` (its BYE) with 200 OK.
fn answer_requests(uac: Arc<RawUac>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(request) = uac.request_from_bot(Duration::from_secs(120)).await {
            uac.reply_ok(&request).await;
        }
    })
}

/// One call in which a third party sends the hostile words to the bot's RTP port, starting
/// before the caller's own RTP and speaking after the opening line:
/// - `symmetric: false`: the SDP names the caller's RTP socket; the injector is another
///   port of the same IP (127.0.0.1);
/// - `symmetric: true` (`--symmetric-rtp`): the SDP names a private address the caller
///   cannot be reached at (behind NAT), the caller's RTP comes from its signalling IP
///   (127.0.0.1), the injector from another IP (127.0.0.2).
async fn injected_speech_is_not_heard(symmetric: bool) {
    const CALLER: &str = "+8613800000021";
    let words = hostile_words();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir);
    let mut config = local_config();
    config.symmetric_rtp = symmetric;
    let session = SessionConfig {
        silence_timeout_ms: 6_000,
        ..SessionConfig::default()
    };
    let server = start_server_with(config, store.clone(), true, session).await;
    let mut events = server.subscribe();

    let uac = Arc::new(RawUac::new(server.local_addr()).await);
    let caller_rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let injector = UdpSocket::bind(if symmetric {
        "127.0.0.2:0"
    } else {
        "127.0.0.1:0"
    })
    .await
    .expect("bind the injector");
    let sdp_rtp: SocketAddr = if symmetric {
        "10.20.30.40:4000".parse().expect("addr")
    } else {
        caller_rtp.local_addr().expect("addr")
    };
    let (_tag, bot_rtp) = uac.call("inject-1", CALLER, sdp_rtp).await;
    let answering = answer_requests(Arc::clone(&uac));

    // The injector: silence at once (to be the first source), the words after the opening.
    let opening_ms = clips().get("opening").expect("opening").duration_ms;
    let mut stream = vec![0xFFu8; (opening_ms as usize + 800) * 8];
    stream.extend_from_slice(&words);
    stream.extend(std::iter::repeat_n(0xFF, 8_000));
    let injected = rtp_packets(&stream, 0x1d1d_1d1d);
    let inject = async {
        send_paced(&injector, bot_rtp, &injected).await;
    };
    // The caller: silence from 300 ms on, until the bot hangs up.
    let silence = rtp_packets(&vec![0xFFu8; 160 * 3_000], 0xca11_e700);
    let caller = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = timeout(
            Duration::from_secs(60),
            send_paced(&caller_rtp, bot_rtp, &silence),
        )
        .await;
    };
    let listen_caller = count_datagrams(&caller_rtp, Duration::from_secs(8));
    let listen_injector = count_datagrams(&injector, Duration::from_secs(8));
    let ended = async {
        let _ = tokio::join!(inject);
        wait_ended(&mut events, Duration::from_secs(90)).await
    };
    let (caller_heard, injector_heard, (call_id, outcome)) = tokio::select! {
        r = async { tokio::join!(listen_caller, listen_injector, ended) } => r,
        _ = caller => panic!("the caller's RTP stream ran out before the call ended"),
    };
    answering.abort();
    eprintln!(
        "symmetric_rtp={symmetric}: bot RTP packets heard by the caller {caller_heard}, \
         by the injector {injector_heard}; outcome {outcome:?}"
    );

    let row = store.get_call(&call_id).expect("read").expect("stored");
    let turns = store.call_turns(&call_id).expect("turns");
    assert!(
        turns.is_empty(),
        "injected audio reached the session: {:?}",
        turns.iter().map(|t| &t.transcript).collect::<Vec<_>>()
    );
    assert_eq!(
        outcome,
        Some(Outcome::NoResponse),
        "the injected words decided the call"
    );
    assert_eq!(row.outcome.as_deref(), Some("no_response"));
    assert!(!row.do_not_call);
    assert!(
        !store.is_dnc(CALLER).expect("dnc"),
        "injected words put the caller on the do-not-call list"
    );
    let foreign = event_details(&store, &call_id, "rtp_foreign");
    assert_eq!(foreign.len(), 1, "the dropped RTP is recorded: {foreign:?}");
    assert!(
        foreign[0].contains(&injector.local_addr().expect("addr").to_string()),
        "{foreign:?}"
    );
    assert_eq!(injector_heard, 0, "the bot sent its audio to the injector");
    assert!(
        caller_heard > 100,
        "the caller heard only {caller_heard} packets"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_from_another_port_never_reaches_the_session() {
    injected_speech_is_not_heard(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_rtp_follows_only_the_signalling_address() {
    injected_speech_is_not_heard(true).await;
}

/// sipp: INVITE with an SDP naming `rtp_port`, the 200 OK never ACKed (its retransmissions
/// absorbed), then the bot's BYE answered.
fn no_ack_scenario(caller: &str, rtp_port: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE, no ACK">
  <send retrans="500">
    <![CDATA[
      INVITE sip:bot@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:bot@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- 1 1 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio {rtp_port} RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200"/>
  <label id="1"/>
  <recv response="200" optional="true" next="1"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_ok_never_acknowledged_gets_no_media_and_is_hung_up() {
    const CALLER: &str = "+8613800000031";
    sipp_installed();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir);
    let mut config = local_config();
    config.ack_timeout = Duration::from_secs(2);
    let server = start_server_with(config, store.clone(), false, SessionConfig::default()).await;
    let mut events = server.subscribe();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let rtp_port = rtp.local_addr().expect("addr").port();

    let started = Instant::now();
    let listen = count_datagrams(&rtp, Duration::from_secs(8));
    let scenario = no_ack_scenario(CALLER, rtp_port);
    let sipp = async {
        let result = run_sipp(
            dir.path(),
            &scenario,
            server.local_addr(),
            "127.0.0.1",
            &["-m", "1", "-recv_timeout", "15000"],
            Duration::from_secs(30),
        )
        .await;
        (result, started.elapsed().as_secs_f32())
    };
    let (rtp_packets_heard, ((status, sipp_log), sipp_secs)) = tokio::join!(listen, sipp);
    eprintln!("sipp (INVITE, no ACK) finished after {sipp_secs:.1} s: {status:?}");
    assert_eq!(
        status,
        Some(0),
        "sipp did not get the bot's BYE in time:\n{sipp_log}"
    );
    let (call_id, _) = wait_ended(&mut events, Duration::from_secs(10)).await;
    assert_eq!(
        rtp_packets_heard, 0,
        "the bot sent RTP to an unconfirmed dialog"
    );

    let row = store.get_call(&call_id).expect("read").expect("stored");
    assert_eq!(row.to_number.as_deref(), Some(CALLER));
    assert_eq!(row.outcome.as_deref(), Some("no_response"));
    assert!(!row.do_not_call);
    assert!(!store.is_dnc(CALLER).expect("dnc"));
    let hangups = event_details(&store, &call_id, "hangup");
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    assert!(hangups[0].starts_with("ack_timeout"), "{hangups:?}");
    assert!(store.call_turns(&call_id).expect("turns").is_empty());
    wait_idle(&server).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_calls_get_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir);
    let mut config = local_config();
    config.max_calls = 2;
    let server = start_server_with(config, store.clone(), false, SessionConfig::default()).await;
    let mut events = server.subscribe();
    let bot = server.local_addr();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let rtp_addr = rtp.local_addr().expect("addr");

    let first = RawUac::new(bot).await;
    let second = RawUac::new(bot).await;
    let (tag1, _) = first.call("cap-1", "+8613800000041", rtp_addr).await;
    let (tag2, _) = second.call("cap-2", "+8613800000042", rtp_addr).await;

    // A third call at once: 503 with Retry-After, and no record.
    const REFUSED: &str = "+8613800000043";
    let third = RawUac::new(bot).await;
    third
        .send(&third.request("INVITE", "cap-3", REFUSED, 1, None, Some(&offer(rtp_addr))))
        .await;
    let r = third.response(200, SHORT).await.expect("INVITE answered");
    assert_eq!(r.status, 503, "{}", r.text);
    let retry_after: u32 = r
        .header("Retry-After")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("503 without a Retry-After: {}", r.text));
    assert!(retry_after > 0);
    third
        .send(&third.request("ACK", "cap-3", REFUSED, 1, r.to_tag(), None))
        .await;
    let calls = store.recent_calls(10).expect("calls");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.to_number.as_deref() != Some(REFUSED))
    );
    assert!(!store.is_dnc(REFUSED).expect("dnc"));

    // A slot frees when a call ends; the next INVITE is answered.
    first.hang_up("cap-1", "+8613800000041", &tag1).await;
    wait_ended(&mut events, Duration::from_secs(10)).await;
    wait_live_at_most(&server, 1).await;
    let fourth = RawUac::new(bot).await;
    let (tag4, _) = fourth.call("cap-4", "+8613800000044", rtp_addr).await;
    second.hang_up("cap-2", "+8613800000042", &tag2).await;
    fourth.hang_up("cap-4", "+8613800000044", &tag4).await;
    for _ in 0..2 {
        wait_ended(&mut events, Duration::from_secs(10)).await;
    }
    let calls = store.recent_calls(10).expect("calls");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.outcome.is_some()), "{calls:?}");
    wait_idle(&server).await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// sipp: INVITE (no retransmission), and if the 200 OK comes: ACK, then BYE.
fn flood_scenario(rtp_port: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE flood">
  <send>
    <![CDATA[
      INVITE sip:bot@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:flooder@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:bot@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:flooder@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- 1 1 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio {rtp_port} RTP/AVP 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK sip:bot@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:flooder@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="300"/>
  <send retrans="500">
    <![CDATA[
      BYE sip:bot@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:flooder@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_flood_from_one_source_is_cut_to_the_burst() {
    const BURST: u32 = 3;
    const FLOOD: usize = 20;
    sipp_installed();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir);
    let mut config = local_config();
    // Practically no refill, so what gets through does not depend on timing.
    config.invite_rate = InviteRate {
        per_second: 0.001,
        burst: BURST,
    };
    config.max_calls = 100;
    let server = start_server_with(config, store.clone(), false, SessionConfig::default()).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let rtp_port = rtp.local_addr().expect("addr").port();

    let calls = FLOOD.to_string();
    let started = Instant::now();
    let (status, log) = run_sipp(
        dir.path(),
        &flood_scenario(rtp_port),
        server.local_addr(),
        "127.0.0.1",
        &[
            "-m",
            &calls,
            "-r",
            "100",
            "-l",
            &calls,
            "-nr",
            "-recv_timeout",
            "2000",
        ],
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "sipp flood of {FLOOD} INVITEs finished after {:.1} s with {status:?}",
        started.elapsed().as_secs_f32()
    );
    assert!(
        log.contains("Successful call"),
        "sipp did not report its calls:\n{log}"
    );
    // Every answered call is over (sipp hung up); wait for the records to settle.
    wait_idle(&server).await;
    let calls = store.recent_calls(100).expect("calls");
    assert_eq!(
        calls.len(),
        BURST as usize,
        "{FLOOD} INVITEs from one source made {} calls",
        calls.len()
    );
    assert!(calls.iter().all(|c| c.outcome.is_some()), "{calls:?}");

    // The flooding source is still limited; another source is not.
    let rtp_addr = rtp.local_addr().expect("addr");
    let same = RawUac::new(server.local_addr()).await;
    same.send(&same.request(
        "INVITE",
        "after-flood-1",
        "+8613800000051",
        1,
        None,
        Some(&offer(rtp_addr)),
    ))
    .await;
    assert!(
        same.response(100, Duration::from_millis(800))
            .await
            .is_none(),
        "the flooding source got an answer"
    );
    let other = RawUac::bind("127.0.0.2:0", server.local_addr()).await;
    let (tag, _) = other
        .call("after-flood-2", "+8613800000052", rtp_addr)
        .await;
    other.hang_up("after-flood-2", "+8613800000052", &tag).await;
    wait_idle(&server).await;
    let calls = store.recent_calls(100).expect("calls");
    assert_eq!(calls.len(), BURST as usize + 1);
    assert!(
        calls
            .iter()
            .all(|c| c.to_number.as_deref() != Some("+8613800000051"))
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_addresses_outside_the_allowed_networks_get_488() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(&dir);
    let server = start_server(store.clone(), false).await;
    let uac = RawUac::new(server.local_addr()).await;

    // Default: loopback and RFC 1918 only; a public address (TEST-NET-3) and a wildcard
    // are refused.
    for (i, target) in ["203.0.113.9:4000", "0.0.0.0:4000"].iter().enumerate() {
        let call_id = format!("reflect-{i}");
        uac.send(&uac.request(
            "INVITE",
            &call_id,
            "+8613800000061",
            1,
            None,
            Some(&offer(target.parse().expect("addr"))),
        ))
        .await;
        let r = uac.response(200, SHORT).await.expect("INVITE answered");
        assert_eq!(r.status, 488, "{target}: {}", r.text);
        let warning = r.header("Warning").unwrap_or_default();
        assert!(warning.contains("--allow-media-net"), "{warning}");
        uac.send(&uac.request("ACK", &call_id, "+8613800000061", 1, r.to_tag(), None))
            .await;
    }
    assert!(store.recent_calls(10).expect("calls").is_empty());
    assert!(!store.is_dnc("+8613800000061").expect("dnc"));
    server.shutdown(Duration::from_secs(1)).await;

    // Only 192.0.2.0/24 configured: another loopback address is refused, the caller's own
    // address (where its INVITE came from) is still answered.
    let mut config = local_config();
    config.media = MediaPolicy {
        nets: vec!["192.0.2.0/24".parse::<MediaNet>().expect("net")],
    };
    let server = start_server_with(config, store.clone(), false, SessionConfig::default()).await;
    let mut events = server.subscribe();
    let uac = RawUac::new(server.local_addr()).await;
    uac.send(&uac.request(
        "INVITE",
        "reflect-3",
        "+8613800000062",
        1,
        None,
        Some(&offer("127.0.0.5:4000".parse().expect("addr"))),
    ))
    .await;
    let r = uac.response(200, SHORT).await.expect("INVITE answered");
    assert_eq!(r.status, 488, "{}", r.text);
    assert!(store.recent_calls(10).expect("calls").is_empty());
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let (tag, _) = uac
        .call("own-1", "+8613800000063", rtp.local_addr().expect("addr"))
        .await;
    uac.hang_up("own-1", "+8613800000063", &tag).await;
    let (call_id, _) = wait_ended(&mut events, Duration::from_secs(10)).await;
    let row = store.get_call(&call_id).expect("read").expect("stored");
    assert_eq!(row.to_number.as_deref(), Some("+8613800000063"));
    assert_eq!(store.recent_calls(10).expect("calls").len(), 1);
    server.shutdown(Duration::from_secs(1)).await;
}
