//! The SIP transport end to end: the library's SIP server on a free UDP port of 127.0.0.1,
//!
//! - called by a real softphone (baresip, headless: a fixture callee WAV as its microphone,
//!   what it hears recorded by its `sndfile` module), with the real whisper pool: the call
//!   reaches the fixture case's outcome, the bot hangs up with BYE, and the recording holds
//!   the bot's opening line;
//! - fed garbage datagrams, a malformed INVITE, a bad SDP offer, a do-not-call caller and
//!   bad RTP by a raw UDP client: it answers each as SIP allows and a following call works.
//!
//! baresip must be installed (`apt-get install -y baresip-core`); the test fails, never
//! skips, without it. Run: `cargo test --release --test sip_calls -- --nocapture`.

mod sip_peer;
mod support;

use renewal_bot::audio::clips::ClipLibrary;
use renewal_bot::audio::{mulaw, wav};
use renewal_bot::eval::manifest::Manifest;
use renewal_bot::labels::Outcome;
use renewal_bot::store::Store;
use sip_peer::{RawUac, answered, offer, start_server, wait_ended};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{clips, pool, repo_path};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

/// The fixture case the softphone plays: one decisive utterance after the opening.
const CASE: &str = "wp-wrong-number";
/// The softphone's own number (its SIP user part).
const CALLER: &str = "+8613800000001";

fn baresip_installed() {
    match std::process::Command::new("baresip").arg("-h").output() {
        Ok(_) => {}
        Err(err) => panic!(
            "baresip is needed for this test ({err}): install it with \
             `apt-get update && apt-get install -y baresip-core`"
        ),
    }
}

fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("local addr").port()
}

/// 8 kHz mono 16-bit WAV: `lead_ms` of silence, the utterance, `tail_ms` of silence.
fn write_callee_wav(path: &Path, utterance: &Path, lead_ms: u64, tail_ms: u64) {
    let audio = wav::read_mono(utterance)
        .and_then(|a| a.to_rate(8_000))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", utterance.display()));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = hound::WavWriter::create(path, spec).expect("create the callee WAV");
    for _ in 0..lead_ms * 8 {
        out.write_sample(0i16).expect("write");
    }
    for s in &audio.samples {
        out.write_sample((s * 32767.0).clamp(-32768.0, 32767.0) as i16)
            .expect("write");
    }
    for _ in 0..tail_ms * 8 {
        out.write_sample(0i16).expect("write");
    }
    out.finalize().expect("finish the callee WAV");
}

/// A headless baresip: the WAV as microphone, what it hears dumped to `rec/`.
fn write_baresip_config(dir: &Path, sip_port: u16, callee_wav: &Path) -> PathBuf {
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).expect("rec dir");
    let config = format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t127.0.0.1:{sip_port}\n\
         call_local_timeout\t120\n\
         call_max_calls\t\t4\n\
         audio_buffer\t\t20\n\
         audio_player\t\taubridge,nil\n\
         audio_source\t\taufile,{wav}\n\
         audio_alert\t\taubridge,nil\n\
         ausrc_srate\t\t8000\n\
         auplay_srate\t\t8000\n\
         ausrc_channels\t\t1\n\
         auplay_channels\t\t1\n\
         rtcp_mux\t\tno\n\
         jitter_buffer_delay\t1-5\n\
         net_interface\t\t127.0.0.1\n\
         module_path\t\t/usr/lib/baresip/modules\n\
         module\t\t\tg711.so\n\
         module\t\t\taufile.so\n\
         module\t\t\taubridge.so\n\
         module\t\t\tsndfile.so\n\
         module_tmp\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         snd_path\t\t{rec}\n",
        wav = callee_wav.display(),
        rec = rec.display(),
    );
    std::fs::write(dir.join("config"), config).expect("baresip config");
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:{CALLER}@127.0.0.1>;regint=0;audio_codecs=PCMU\n"),
    )
    .expect("baresip accounts");
    std::fs::write(dir.join("contacts"), "").expect("baresip contacts");
    rec
}

/// The best normalized cross-correlation of `needle` inside `hay`, and its offset.
fn best_match(hay: &[f32], needle: &[f32]) -> (f32, usize) {
    let n_energy: f32 = needle.iter().map(|x| x * x).sum();
    let mut best = (0.0f32, 0usize);
    if hay.len() < needle.len() || n_energy == 0.0 {
        return best;
    }
    // Running energy of the window of `hay`.
    let mut h_energy: f32 = hay[..needle.len()].iter().map(|x| x * x).sum();
    for lag in 0..=hay.len() - needle.len() {
        if lag > 0 {
            let out = hay[lag - 1];
            let inn = hay[lag + needle.len() - 1];
            h_energy = (h_energy - out * out + inn * inn).max(0.0);
        }
        if h_energy <= 1e-9 {
            continue;
        }
        let dot: f32 = hay[lag..lag + needle.len()]
            .iter()
            .zip(needle)
            .map(|(a, b)| a * b)
            .sum();
        let c = dot / (h_energy * n_energy).sqrt();
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

fn opening_samples(clips: &ClipLibrary) -> Vec<f32> {
    let clip = clips.get("opening").expect("the opening clip");
    mulaw::decode_all(&clip.mulaw)
        .into_iter()
        .map(|s| f32::from(s) / 32768.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_call_reaches_the_outcome_and_hears_the_opening() {
    baresip_installed();
    let started = Instant::now();
    let manifest = Manifest::load(&repo_path("tests/fixtures/calls.toml")).expect("manifest");
    let case = manifest
        .cases
        .iter()
        .find(|c| c.name == CASE)
        .unwrap_or_else(|| panic!("no case {CASE} in tests/fixtures/calls.toml"));
    assert_eq!(case.turns.len(), 1, "{CASE} should be a single utterance");
    let utterance = case.turns[0].audio.clone().expect("the case's audio");
    // Warm the recognizer up before the call so the first decode is not a cold start.
    let _ = pool();

    let store = Store::open_in_memory().expect("store");
    let server = start_server(store.clone(), true).await;
    let bot = server.local_addr();
    let mut events = server.subscribe();

    let dir = tempfile::tempdir().expect("tempdir");
    let callee_wav = dir.path().join("callee.wav");
    let opening_ms = clips().get("opening").expect("opening").duration_ms;
    // Speak after the opening has played, then stay silent long enough for the reply.
    write_callee_wav(&callee_wav, &utterance, opening_ms + 1_500, 60_000);
    let rec = write_baresip_config(dir.path(), free_udp_port(), &callee_wav);
    let log_path = dir.path().join("baresip.log");
    let log = std::fs::File::create(&log_path).expect("baresip log");
    let mut baresip = tokio::process::Command::new("timeout")
        .args(["-s", "TERM", "-k", "5", "150", "baresip", "-f"])
        .arg(dir.path())
        .args(["-t", "140", "-e"])
        .arg(format!("/dial sip:bot@{bot}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start baresip under timeout");

    let (call_id, outcome) = wait_ended(&mut events, Duration::from_secs(140)).await;
    let call_secs = started.elapsed().as_secs_f32();
    // The call is over (the bot's BYE closed it at baresip too): stop baresip.
    if let Some(pid) = baresip.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = timeout(Duration::from_secs(10), baresip.wait()).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: String = log
        .lines()
        .filter(|l| !l.contains("audio=") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("--- baresip (status lines dropped) ---\n{tail}\n---");

    // The stored call.
    assert_eq!(outcome, Some(case.outcome), "the session's outcome");
    let row = store
        .get_call(&call_id)
        .expect("read the call")
        .expect("the call is stored");
    assert_eq!(row.transport, "sip");
    assert_eq!(row.to_number.as_deref(), Some(CALLER));
    assert_eq!(row.outcome.as_deref(), Some(case.outcome.as_str()));
    let turns = store.call_turns(&call_id).expect("turns");
    assert!(!turns.is_empty(), "no turn stored");
    eprintln!(
        "turns: {:?}",
        turns
            .iter()
            .map(|t| (&t.transcript, &t.intent, &t.reply, t.latency_ms))
            .collect::<Vec<_>>()
    );
    let events_stored = store.call_events(&call_id).expect("events");
    let hangup: Vec<&str> = events_stored
        .iter()
        .filter(|e| e.kind == "hangup")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(hangup, ["bye_sent"], "the bot should hang up with BYE");
    let opening_delay = events_stored
        .iter()
        .find(|e| e.kind == "opening_delay_ms")
        .map(|e| e.detail.clone());
    assert!(
        log.contains("terminated"),
        "baresip did not see the call end:\n{tail}"
    );

    // What baresip heard holds the opening line.
    let heard_path = std::fs::read_dir(&rec)
        .expect("rec dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("baresip recorded nothing in {}", rec.display()));
    let heard = wav::read_mono(&heard_path)
        .and_then(|a| a.to_rate(8_000))
        .expect("read what baresip heard");
    let opening = opening_samples(&clips());
    // Two seconds from inside the opening, searched for in the first eight seconds heard.
    let needle = &opening[8_000..24_000.min(opening.len())];
    let hay = &heard.samples[..heard.samples.len().min(8 * 8_000)];
    let (correlation, lag) = best_match(hay, needle);
    let heard_delay_ms = (lag as f32 / 8.0) - 1_000.0;
    eprintln!(
        "SIP call: outcome {outcome:?}, opening delay after 200 OK {opening_delay:?} ms, \
         opening heard at {heard_delay_ms:.0} ms of baresip's recording \
         (correlation {correlation:.3}), call + test {call_secs:.1} s"
    );
    assert!(
        correlation > 0.9,
        "baresip's recording does not contain the opening line (best correlation {correlation:.3})"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_requests_do_not_stop_the_server() {
    let store = Store::open_in_memory().expect("store");
    let server = start_server(store.clone(), false).await;
    let mut events = server.subscribe();
    let uac = RawUac::new(server.local_addr()).await;
    let short = Duration::from_secs(3);

    // Garbage and a request line with no headers: dropped, never answered, no crash.
    uac.send("\u{0}\u{1}\u{2} this is not SIP at all \u{7f}")
        .await;
    uac.socket
        .send_to(&[0xff, 0xfe, 0x00, 0x80, 0x12], uac.bot)
        .await
        .expect("send");
    uac.send("INVITE sip:bot@127.0.0.1 SIP/2.0\r\n\r\n").await;
    uac.send("INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\nCSeq: x\r\n\r\n")
        .await;
    assert!(
        uac.response(100, Duration::from_millis(500))
            .await
            .is_none(),
        "a malformed request got an answer"
    );

    // Still alive: OPTIONS is answered.
    let options = uac.request("OPTIONS", "opt-1", "prober", 1, None, None);
    uac.send(&options).await;
    let r = uac.response(200, short).await.expect("OPTIONS answered");
    assert_eq!(r.status, 200);

    // An offer the bot cannot use: 488.
    let bad_sdp = uac.request(
        "INVITE",
        "bad-sdp-1",
        "+8613800000002",
        1,
        None,
        Some("v=0\r\nm=audio 4000 RTP/AVP 8\r\n"),
    );
    uac.send(&bad_sdp).await;
    let r = uac.response(200, short).await.expect("bad SDP answered");
    assert_eq!(r.status, 488, "{}", r.text);
    uac.send(&uac.request(
        "ACK",
        "bad-sdp-1",
        "+8613800000002",
        1,
        r.header("To").and_then(|t| t.split("tag=").nth(1)),
        None,
    ))
    .await;

    // A caller on the do-not-call list: 603, and no call is recorded.
    store
        .add_dnc("+86 139 0000 0000", "test", None)
        .expect("add dnc");
    let rtp_peer = UdpSocket::bind("127.0.0.1:0").await.expect("rtp bind");
    let rtp_addr = rtp_peer.local_addr().expect("rtp addr");
    let dnc_invite = uac.request(
        "INVITE",
        "dnc-1",
        "+8613900000000",
        1,
        None,
        Some(&offer(rtp_addr)),
    );
    uac.send(&dnc_invite).await;
    let r = uac.response(200, short).await.expect("DNC INVITE answered");
    assert_eq!(r.status, 603, "{}", r.text);
    assert!(store.recent_calls(10).expect("calls").is_empty());

    // A good call after all that: 200 with a PCMU answer, RTP flows, our BYE ends it.
    let invite = uac.request(
        "INVITE",
        "good-1",
        "+8613800000003",
        1,
        None,
        Some(&offer(rtp_addr)),
    );
    let t_invite = Instant::now();
    uac.send(&invite).await;
    let ok = uac.response(200, short).await.expect("INVITE answered");
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.body().contains("RTP/AVP 0"), "answer: {}", ok.body());
    let (to_tag, bot_rtp) = answered(&ok);
    uac.send(&uac.request("ACK", "good-1", "+8613800000003", 1, Some(&to_tag), None))
        .await;

    // The bot's RTP: PT 0, 160-byte payloads, consecutive sequence numbers and timestamps.
    let mut buf = [0u8; 2048];
    let mut packets = Vec::new();
    while packets.len() < 25 {
        let (len, _) = timeout(short, rtp_peer.recv_from(&mut buf))
            .await
            .expect("RTP from the bot")
            .expect("recv");
        packets.push(buf[..len].to_vec());
    }
    let first_rtp_ms = t_invite.elapsed().as_millis();
    for pair in packets.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(a.len(), 172);
        assert_eq!(a[0], 0x80);
        assert_eq!(a[1] & 0x7f, 0);
        let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
        let ts = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(seq(b), seq(a).wrapping_add(1));
        assert_eq!(ts(b), ts(a).wrapping_add(160));
        assert_eq!(a[8..12], b[8..12], "one SSRC");
    }
    assert!(
        packets[..10]
            .iter()
            .any(|p| p[12..].iter().any(|&b| b != 0xff)),
        "the opening line should start at once, not silence"
    );

    // Bad RTP and a burst of silence-ish PCMU into the bot: nothing breaks.
    rtp_peer
        .send_to(&[1, 2, 3], bot_rtp)
        .await
        .expect("send junk rtp");
    rtp_peer
        .send_to(&[0x80; 12], bot_rtp)
        .await
        .expect("send junk rtp");
    let mut pkt = vec![0x80, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
    pkt.extend_from_slice(&[0xff; 160]);
    rtp_peer.send_to(&pkt, bot_rtp).await.expect("send rtp");

    // Caller hangs up.
    uac.send(&uac.request("BYE", "good-1", "+8613800000003", 2, Some(&to_tag), None))
        .await;
    let bye_ok = uac.response(200, short).await.expect("BYE answered");
    assert_eq!(bye_ok.status, 200, "{}", bye_ok.text);
    let (call_id, outcome) = wait_ended(&mut events, Duration::from_secs(30)).await;
    assert_eq!(outcome, Some(Outcome::CalleeHangup));
    let row = store.get_call(&call_id).expect("read").expect("stored");
    assert_eq!(row.transport, "sip");
    assert_eq!(row.to_number.as_deref(), Some("+8613800000003"));
    assert_eq!(row.outcome.as_deref(), Some("callee_hangup"));
    assert_eq!(row.call_sid.as_deref(), Some("good-1"));
    let hangups: Vec<String> = store
        .call_events(&call_id)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "hangup")
        .map(|e| e.detail)
        .collect();
    assert_eq!(hangups, ["callee_bye"]);
    eprintln!("raw UAC: first 25 RTP packets within {first_rtp_ms} ms of the INVITE");

    // And the server still answers.
    uac.send(&uac.request("OPTIONS", "opt-2", "prober", 1, None, None))
        .await;
    assert_eq!(uac.response(200, short).await.expect("OPTIONS").status, 200);
    sip_peer::wait_idle(&server).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_calls_are_independent() {
    const CALLS: usize = 3;
    let store = Store::open_in_memory().expect("store");
    let server = start_server(store.clone(), false).await;
    let mut events = server.subscribe();
    let short = Duration::from_secs(3);

    let mut legs = Vec::new();
    for i in 0..CALLS {
        let uac = RawUac::new(server.local_addr()).await;
        let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("rtp bind");
        let call_id = format!("multi-{i}");
        let user = format!("+861380000010{i}");
        let invite = uac.request(
            "INVITE",
            &call_id,
            &user,
            1,
            None,
            Some(&offer(rtp.local_addr().expect("addr"))),
        );
        uac.send(&invite).await;
        legs.push((uac, rtp, call_id, user));
    }
    let mut bot_ports = Vec::new();
    let mut tags = Vec::new();
    for (uac, rtp, call_id, user) in &legs {
        let ok = uac.response(200, short).await.expect("INVITE answered");
        assert_eq!(ok.status, 200, "{}", ok.text);
        let (tag, bot_rtp) = answered(&ok);
        uac.send(&uac.request("ACK", call_id, user, 1, Some(&tag), None))
            .await;
        let mut buf = [0u8; 2048];
        let (len, from) = timeout(short, rtp.recv_from(&mut buf))
            .await
            .expect("RTP on every call")
            .expect("recv");
        assert_eq!(len, 172);
        assert_eq!(from, bot_rtp, "RTP comes from the port in the answer");
        bot_ports.push(bot_rtp.port());
        tags.push(tag);
    }
    bot_ports.sort_unstable();
    bot_ports.dedup();
    assert_eq!(bot_ports.len(), CALLS, "each call has its own RTP port");
    assert_eq!(server.live_calls(), CALLS);

    // Hang up the middle call only: the others go on.
    let (uac, _, call_id, user) = &legs[1];
    uac.send(&uac.request("BYE", call_id, user, 2, Some(&tags[1]), None))
        .await;
    assert_eq!(uac.response(200, short).await.expect("BYE").status, 200);
    let (ended, _) = wait_ended(&mut events, Duration::from_secs(10)).await;
    let row = store.get_call(&ended).expect("read").expect("stored");
    assert_eq!(row.call_sid.as_deref(), Some("multi-1"));
    for (i, (_, rtp, _, _)) in legs.iter().enumerate() {
        if i == 1 {
            continue;
        }
        let mut buf = [0u8; 2048];
        // Drain what queued up, then expect fresh packets.
        while timeout(Duration::from_millis(1), rtp.recv_from(&mut buf))
            .await
            .is_ok()
        {}
        timeout(short, rtp.recv_from(&mut buf))
            .await
            .expect("the other calls still stream")
            .expect("recv");
    }
    for (i, (uac, _, call_id, user)) in legs.iter().enumerate() {
        if i == 1 {
            continue;
        }
        uac.send(&uac.request("BYE", call_id, user, 2, Some(&tags[i]), None))
            .await;
        assert_eq!(uac.response(200, short).await.expect("BYE").status, 200);
    }
    for _ in 0..CALLS - 1 {
        wait_ended(&mut events, Duration::from_secs(10)).await;
    }
    let calls = store.recent_calls(10).expect("calls");
    assert_eq!(calls.len(), CALLS);
    assert!(
        calls
            .iter()
            .all(|c| c.transport == "sip" && c.outcome.as_deref() == Some("callee_hangup"))
    );
    server.shutdown(Duration::from_secs(1)).await;
}
