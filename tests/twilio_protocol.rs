//! The Twilio transport without speech recognition: signatures, routes, and a media stream
//! abused in every way a network can (malformed JSON, unknown events, bad base64, media
//! before `start`, the socket dropped mid-clip). A real server on 127.0.0.1:0, a real
//! WebSocket; the server must stay up and every call record must be complete.

mod support;

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use renewal_bot::labels::Outcome;
use renewal_bot::session::SessionConfig;
use renewal_bot::store::{NewCall, Store};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn status_of(server: &TestServer, path: &str, sig: Option<&str>) -> u16 {
    let url = format!("{}{path}", server.base);
    let mut req = server
        .http
        .post(&url)
        .form(&[("CallSid", "CA1"), ("CallStatus", "completed")]);
    if let Some(sig) = sig {
        req = req.header("X-Twilio-Signature", sig);
    }
    req.send().await.expect("POST").status().as_u16()
}

#[tokio::test]
async fn unsigned_or_badly_signed_requests_get_403() {
    let server = TestServer::start(ServerOpts::default()).await;
    for path in ["/twiml", "/status"] {
        assert_eq!(status_of(&server, path, None).await, 403, "{path} unsigned");
        assert_eq!(
            status_of(&server, path, Some("bm90IGEgc2lnbmF0dXJl")).await,
            403,
            "{path} bad signature"
        );
    }
    // Signed for another URL (what a proxy rewriting the host would produce).
    let params = vec![("CallSid".to_string(), "CA1".to_string())];
    let wrong = renewal_bot::transport::twilio::signature::compute(
        TOKEN,
        "https://elsewhere.example.com/twiml",
        &params,
    );
    assert_eq!(status_of(&server, "/twiml", Some(&wrong)).await, 403);

    for sig in [Some("bm90IGEgc2lnbmF0dXJl"), Some("")] {
        match server.connect_media(sig).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "/media with {sig:?}")
            }
            Err(other) => panic!("/media with {sig:?}: unexpected error {other}"),
            Ok(_) => panic!("/media with {sig:?} was accepted"),
        }
    }
    // Without a signature header at all.
    let url = server.ws_url();
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("unsigned /media: {:?}", other.map(|_| ())),
    }

    let health = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.expect("json");
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn twiml_connects_a_bidirectional_stream_with_parameters() {
    let server = TestServer::start(ServerOpts::default()).await;
    let twiml = server.twiml("CA42", "+8613800000001").await;
    assert!(twiml.xml.contains("<Connect><Stream"), "{}", twiml.xml);
    assert!(!twiml.xml.contains("<Start>"), "{}", twiml.xml);
    assert_eq!(
        twiml.stream_url,
        server.ws_url(),
        "stream URL from the public URL"
    );
    assert!(
        !twiml.stream_url.contains('?'),
        "no query string on the stream URL"
    );
    assert_eq!(twiml.params["to"], "+8613800000001");
    assert_eq!(twiml.params["call_sid"], "CA42");
    assert!(!twiml.params["call_id"].is_empty());

    // A number on the do-not-call list is hung up at once.
    server
        .store
        .add_dnc("+8613800000002", "test", None)
        .expect("add dnc");
    let resp = server
        .post_signed(
            "/twiml",
            &[
                ("CallSid", "CA43"),
                ("To", "+8613800000002"),
                ("From", FROM),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let xml = resp.text().await.expect("body");
    assert!(
        xml.contains("<Hangup/>") && !xml.contains("<Stream"),
        "{xml}"
    );
}

#[tokio::test]
async fn status_callbacks_are_recorded_and_finish_calls_without_a_stream() {
    let server = TestServer::start(ServerOpts::default()).await;
    server
        .store
        .start_call(&NewCall {
            call_id: "c-nostream".into(),
            transport: "twilio".into(),
            to_number: Some("+8613800000003".into()),
            from_number: Some(FROM.into()),
            call_sid: Some("CA-ns".into()),
            stream_sid: None,
            started_at: time::OffsetDateTime::now_utc(),
        })
        .expect("start_call");
    for status in ["initiated", "ringing", "completed"] {
        let resp = server
            .post_signed(
                "/status",
                &[
                    ("CallSid", "CA-ns"),
                    ("CallStatus", status),
                    ("CallDuration", "3"),
                ],
            )
            .await;
        assert!(resp.status().is_success(), "{status}: {}", resp.status());
    }
    let events = server.store.call_events("c-nostream").expect("events");
    let kinds: Vec<_> = events.iter().map(|e| e.detail.clone()).collect();
    assert_eq!(events.len(), 3, "{kinds:?}");
    assert!(kinds[2].starts_with("completed"), "{kinds:?}");
    let call = server.store.get_call("c-nostream").unwrap().unwrap();
    assert_eq!(call.outcome.as_deref(), Some(Outcome::NoResponse.as_str()));
    assert_eq!(call.duration_ms, Some(3_000));
    assert!(call.ended_at.is_some());
    // An unknown CallSid is acknowledged and ignored.
    let resp = server
        .post_signed(
            "/status",
            &[("CallSid", "CA-unknown"), ("CallStatus", "ringing")],
        )
        .await;
    assert!(resp.status().is_success());
}

/// Garbage on the stream is logged and skipped; the call goes on, then the line drops
/// mid-clip (no `stop`): the record is complete with outcome line_failed, the number stays
/// off the do-not-call list, and the server still works.
#[tokio::test]
async fn garbage_on_the_stream_and_a_dropped_socket_leave_a_complete_record() {
    let server = TestServer::start(ServerOpts::default()).await;
    let mut events = server.state.subscribe();
    let to = "+8613800000010";
    let twiml = server.twiml("CA-garbage", to).await;
    let call_id = twiml.params["call_id"].clone();
    let mut ws = server.connect_media(None).await.expect("open /media");
    let stream_sid = "MZgarbage";

    ws.send(Message::text(connected_msg())).await.unwrap();
    // Media before start, malformed JSON, an unknown event, binary data.
    ws.send(Message::text(media_msg(stream_sid, 1, 1, &[0xFF; 160])))
        .await
        .unwrap();
    ws.send(Message::text("{this is not json")).await.unwrap();
    ws.send(Message::text(r#"{"event":"transcription","x":1}"#))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let start_sent = tokio::time::Instant::now();
    ws.send(Message::text(start_msg(
        stream_sid,
        "CA-garbage",
        &twiml.params,
    )))
    .await
    .unwrap();
    // After start: bad base64, a media message without payload, a mark we never sent,
    // a second start, a dtmf with two digits, then valid silence.
    ws.send(Message::text(
        r#"{"event":"media","streamSid":"MZgarbage","media":{"payload":"%%%not-base64%%%"}}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        r#"{"event":"media","streamSid":"MZgarbage"}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(mark_msg(stream_sid, 5, "not-a-play-id")))
        .await
        .unwrap();
    ws.send(Message::text(mark_msg(stream_sid, 6, "999")))
        .await
        .unwrap();
    ws.send(Message::text(start_msg(
        stream_sid,
        "CA-garbage",
        &twiml.params,
    )))
    .await
    .unwrap();
    ws.send(Message::text(
        r#"{"event":"dtmf","streamSid":"MZgarbage","dtmf":{"digit":"12"}}"#,
    ))
    .await
    .unwrap();

    // The opening line arrives promptly, in 20 ms frames, with no burst.
    let mut frames = 0;
    let mut first = None;
    let mut playout_end = tokio::time::Instant::now();
    let mut max_lead = Duration::ZERO;
    while frames < 50 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("bot audio")
            .expect("socket open")
            .expect("message");
        let Message::Text(text) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        if v["event"] == "media" {
            let now = tokio::time::Instant::now();
            first.get_or_insert(now - start_sent);
            playout_end = playout_end.max(now) + Duration::from_millis(20);
            max_lead = max_lead.max(playout_end - now);
            frames += 1;
            ws.send(Message::text(media_msg(
                stream_sid,
                10 + frames,
                frames,
                &[0xFF; 160],
            )))
            .await
            .unwrap();
        }
    }
    let first = first.unwrap();
    println!("opening delay {first:?}, max lead {max_lead:?}");
    assert!(first < Duration::from_millis(300), "opening took {first:?}");
    assert!(
        max_lead <= Duration::from_millis(150),
        "burst: {max_lead:?} ahead"
    );

    // The line drops mid-clip: no stop message, the TCP connection just goes away.
    drop(ws);
    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(30)).await;
    let summary = summary.expect("a summary");
    assert_eq!(summary.outcome, Outcome::LineFailed);
    let call = server.store.get_call(&call_id).unwrap().expect("call row");
    assert_eq!(call.outcome.as_deref(), Some("line_failed"));
    assert!(call.ended_at.is_some());
    assert_eq!(call.call_sid.as_deref(), Some("CA-garbage"));
    assert_eq!(call.stream_sid.as_deref(), Some(stream_sid));
    assert_eq!(call.to_number.as_deref(), Some(to));
    assert!(!call.do_not_call, "a dropped line is not a refusal");
    assert!(!server.store.is_dnc(to).unwrap());

    // The server is still up and takes the next call.
    let health = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let twiml = server.twiml("CA-next", "+8613800000011").await;
    let mut ws = server.connect_media(None).await.expect("second call");
    ws.send(Message::text(start_msg("MZnext", "CA-next", &twiml.params)))
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("second call audio");
    assert!(matches!(msg, Some(Ok(Message::Text(_)))));
}

/// A socket that closes before `start` leaves nothing behind and breaks nothing.
#[tokio::test]
async fn a_socket_closed_before_start_is_harmless() {
    let server = TestServer::start(ServerOpts::default()).await;
    let mut ws = server.connect_media(None).await.expect("open");
    ws.send(Message::text(connected_msg())).await.unwrap();
    ws.send(Message::text("garbage")).await.unwrap();
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.state.live_calls(), 0);
    assert_eq!(server.store.recent_calls(10).unwrap().len(), 0);
}

/// Sockets that connect but never send a valid `start` are not calls: `/healthz` and the
/// live count say zero while they hang open, and a real call next to them counts one.
#[tokio::test]
async fn sockets_waiting_for_start_are_not_counted_as_live_calls() {
    let server = TestServer::start(ServerOpts::default()).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut ws = server.connect_media(None).await.expect("open");
        ws.send(Message::text(connected_msg())).await.unwrap();
        idle.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.state.live_calls(), 0);
    let health: serde_json::Value = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["live_calls"], 0, "{health}");

    let twiml = server.twiml("CA-real", "+8613800000012").await;
    let mut ws = server.connect_media(None).await.expect("call");
    ws.send(Message::text(start_msg("MZreal", "CA-real", &twiml.params)))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the call's audio");
    assert!(matches!(first, Some(Ok(Message::Text(_)))));
    assert_eq!(server.state.live_calls(), 1);
    drop(idle);
}

/// With a short silence timeout and no speech: the opening plays, the bot gives up, plays
/// the closing line, closes the socket only after that line's mark came back, and ends the
/// call through the Calls API as a fallback (which answers 20404: already ended).
#[tokio::test]
async fn silent_callee_gets_the_closing_line_then_the_hang_up() {
    let rest = FakeRest::start(
        (201, "{}"),
        (
            404,
            r#"{"code": 20404, "message": "The requested resource was not found", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}"#,
        ),
    )
    .await;
    let server = TestServer::start(ServerOpts {
        account_sid: Some(ACCOUNT.into()),
        api_base: Some(rest.base.clone()),
        session: SessionConfig {
            silence_timeout_ms: 2_000,
            ..SessionConfig::default()
        },
        ..ServerOpts::default()
    })
    .await;
    let mut events = server.state.subscribe();
    let to = "+8613800000020";
    let call_sid = "CA-silent";
    let twiml = server.twiml(call_sid, to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let log = fake_call(ws, call_sid, &twiml.params, CallPlan::new(vec![])).await;
    println!("{log:#?}");
    assert!(!log.timed_out, "the bot never hung up");
    let closed = log.closed_by_bot.expect("the bot closed the socket");
    assert!(log.first_media.unwrap() < Duration::from_millis(300));
    assert!(log.marks_from_bot.len() >= 2, "opening and closing marks");
    let (last_mark, back_at) = log.marks_returned.last().cloned().expect("marks returned");
    assert_eq!(log.marks_from_bot.last().unwrap().0, last_mark);
    assert!(
        closed >= back_at,
        "closed at {closed:?} before the last mark came back at {back_at:?}"
    );
    assert_eq!(log.marks_pending_at_close, 0);
    assert_eq!(log.unplayed_at_close, Duration::ZERO);

    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(10))
        .await
        .expect("summary");
    assert_eq!(summary.outcome, Outcome::NoResponse);
    let call = server.store.get_call(&call_id).unwrap().unwrap();
    assert_eq!(call.outcome.as_deref(), Some("no_response"));
    assert!(!call.do_not_call);
    assert!(!server.store.is_dnc(to).unwrap());

    // The Status=completed fallback went out, with basic auth, and 20404 was fine.
    let mut tries = 0;
    let request = loop {
        if let Some(r) = rest
            .requests()
            .into_iter()
            .find(|r| r.path.ends_with(&format!("/Calls/{call_sid}.json")))
        {
            break r;
        }
        tries += 1;
        assert!(tries < 50, "no Status=completed request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        request.form,
        vec![("Status".to_string(), "completed".to_string())]
    );
    assert!(
        request
            .authorization
            .unwrap_or_default()
            .starts_with("Basic ")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = server.store.call_events(&call_id).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rest_hangup" && e.detail == "already ended"),
        "{events:?}"
    );
}

/// `--insecure-skip-signature`: no token, requests pass unsigned.
#[tokio::test]
async fn insecure_mode_accepts_unsigned_requests() {
    let server = TestServer::start(ServerOpts {
        token: None,
        ..ServerOpts::default()
    })
    .await;
    assert_eq!(status_of(&server, "/status", None).await, 204);
    let resp = server
        .http
        .post(format!("{}/twiml", server.base))
        .form(&[("CallSid", "CA1"), ("To", "+8613800000030")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        tokio_tungstenite::connect_async(server.ws_url())
            .await
            .is_ok()
    );
}

/// Shutdown with a call still live: after the grace period the call is cut, its record is
/// finished and marked `interrupted`, and the cut does not put the callee on the list.
#[tokio::test]
async fn shutdown_cuts_live_calls_after_the_grace_period_and_finishes_their_records() {
    let server = TestServer::start(ServerOpts::default()).await;
    let mut events = server.state.subscribe();
    let to = "+8613800000040";
    let twiml = server.twiml("CA-shutdown", to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let params = twiml.params.clone();
    let caller = tokio::spawn(async move {
        let mut plan = CallPlan::new(vec![]);
        plan.limit = Duration::from_secs(30);
        fake_call(ws, "CA-shutdown", &params, plan).await
    });
    // Let the opening start, then stop the server with a short grace period.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(server.state.live_calls(), 1);
    let stopped = tokio::time::Instant::now();
    server.state.drain(Duration::from_millis(300)).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "drain took {:?}",
        stopped.elapsed()
    );
    assert_eq!(server.state.live_calls(), 0);
    let log = caller.await.expect("fake caller");
    assert!(
        log.closed_by_bot.is_some(),
        "the socket was closed by the server"
    );
    TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(5)).await;
    let call = server.store.get_call(&call_id).unwrap().expect("row");
    assert!(
        call.ended_at.is_some() && call.outcome.is_some(),
        "{call:?}"
    );
    assert!(!call.do_not_call, "a shutdown is not the callee's refusal");
    assert!(!server.store.is_dnc(to).unwrap());
    let events = server.store.call_events(&call_id).unwrap();
    assert!(events.iter().any(|e| e.kind == "interrupted"), "{events:?}");
}

/// Everything the store holds, as text: calls, their turns and events, the do-not-call list.
fn snapshot(store: &Store) -> String {
    let calls = store.recent_calls(1_000).expect("calls");
    let mut out = format!("{calls:#?}\n{:#?}\n", store.list_dnc().expect("dnc list"));
    for call in &calls {
        let turns = store.call_turns(&call.call_id).expect("turns");
        let events = store.call_events(&call.call_id).expect("events");
        out.push_str(&format!("{turns:#?}\n{events:#?}\n"));
    }
    out
}

/// Waits until the store has the end of the call.
async fn finished_record(server: &TestServer, call_id: &str) -> renewal_bot::store::CallRow {
    for _ in 0..300 {
        if let Some(row) = server.store.get_call(call_id).expect("get_call")
            && row.outcome.is_some()
            && row.ended_at.is_some()
        {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("call {call_id} has no outcome after 30 s");
}

fn with(params: &BTreeMap<String, String>, name: &str, value: &str) -> BTreeMap<String, String> {
    let mut edited = params.clone();
    edited.insert(name.to_string(), value.to_string());
    edited
}

/// Anyone who can open a signed upgrade (its signature is the same for every call) can send
/// any `start`. Only a stream that carries the one-time token `/twiml` issued, unused,
/// unexpired, for this CallSid and exactly these parameters is a call: every other start
/// is closed at once, hears nothing, and changes nothing in the store — no record, no
/// event, no do-not-call entry, no overwritten call.
#[tokio::test]
async fn forged_stream_starts_are_refused_and_leave_the_store_unchanged() {
    let server = TestServer::start(ServerOpts::default()).await;
    let mut events = server.state.subscribe();
    // Another callee's finished call, and a number already on the list.
    let victim = "+8613800000050";
    server
        .store
        .start_call(&NewCall {
            call_id: "c-victim".into(),
            transport: "twilio".into(),
            to_number: Some(victim.into()),
            from_number: Some(FROM.into()),
            call_sid: Some("CA-victim".into()),
            stream_sid: Some("MZvictim".into()),
            started_at: time::OffsetDateTime::now_utc(),
        })
        .expect("victim call");
    server
        .store
        .finish_call("c-victim", Outcome::SelfService, false, 30_000)
        .expect("finish victim call");
    let listed = "+8613800000051";
    server
        .store
        .add_dnc(listed, "asked in an earlier call", None)
        .expect("add dnc");

    let to = "+8613800000052";
    let twiml = server.twiml("CA-legit", to).await;
    let genuine = twiml.params.clone();
    let token = genuine.get("token").cloned().unwrap_or_default();
    let before = snapshot(&server.store);

    // The genuine token with its last character changed.
    let mut flipped = token.clone();
    let last = flipped.pop();
    flipped.push(if last == Some('A') { 'B' } else { 'A' });
    let mut no_token = genuine.clone();
    no_token.remove("token");
    let forgeries: Vec<(&str, &str, BTreeMap<String, String>)> = vec![
        ("no token", "CA-legit", no_token),
        (
            "garbage token",
            "CA-legit",
            with(&genuine, "token", "garbage"),
        ),
        (
            "one character changed",
            "CA-legit",
            with(&genuine, "token", &flipped),
        ),
        ("token for another CallSid", "CA-other", genuine.clone()),
        (
            "call_sid parameter edited",
            "CA-other",
            with(&genuine, "call_sid", "CA-other"),
        ),
        (
            "another callee's number",
            "CA-legit",
            with(&genuine, "to", victim),
        ),
        ("a listed number", "CA-legit", with(&genuine, "to", listed)),
        (
            "an existing call's id",
            "CA-legit",
            with(&genuine, "call_id", "c-victim"),
        ),
        (
            "from edited",
            "CA-legit",
            with(&genuine, "from", "+14155550199"),
        ),
        (
            "a parameter added",
            "CA-legit",
            with(&genuine, "extra", "1"),
        ),
    ];
    for (what, call_sid, params) in &forgeries {
        let ws = start_stream(&server, "MZforged", call_sid, params).await;
        if let Err(err) = refused(ws).await {
            panic!("forged start ({what}) was not refused: {err}");
        }
    }
    assert_eq!(
        snapshot(&server.store),
        before,
        "a forged start changed the store"
    );
    assert!(!token.is_empty(), "/twiml issues a stream token");

    // The genuine start is a call; the same token again, during the call and after it, is not.
    let mut call = start_stream(&server, "MZlegit", "CA-legit", &genuine).await;
    let first = tokio::time::timeout(Duration::from_secs(5), call.next())
        .await
        .expect("the genuine stream gets audio")
        .expect("socket open")
        .expect("message");
    assert!(matches!(first, Message::Text(_)), "{first:?}");
    let replay = start_stream(&server, "MZreplay", "CA-legit", &genuine).await;
    if let Err(err) = refused(replay).await {
        panic!("a replayed token was accepted during the call: {err}");
    }
    call.send(Message::text(stop_msg("MZlegit", 3, "CA-legit")))
        .await
        .unwrap();
    call.close(None).await.ok();
    let call_id = genuine["call_id"].clone();
    TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(30)).await;
    let after_call = snapshot(&server.store);
    let replay = start_stream(&server, "MZreplay2", "CA-legit", &genuine).await;
    if let Err(err) = refused(replay).await {
        panic!("a replayed token was accepted after the call: {err}");
    }
    assert_eq!(
        snapshot(&server.store),
        after_call,
        "a replay changed the store"
    );
    let row = server.store.get_call(&call_id).unwrap().expect("row");
    assert_eq!(row.stream_sid.as_deref(), Some("MZlegit"));
    let victim_row = server.store.get_call("c-victim").unwrap().expect("victim");
    assert_eq!(victim_row.stream_sid.as_deref(), Some("MZvictim"));
    assert_eq!(victim_row.outcome.as_deref(), Some("self_service"));
    assert!(!server.store.is_dnc(victim).unwrap());
}

/// A call placed through the Calls API whose webhook Twilio fetches twice gets two valid
/// tokens for one call id: the first stream is the call, the second is refused (during the
/// call and after it), so the two never merge into one record.
#[tokio::test]
async fn two_streams_for_one_call_id_do_not_merge() {
    let server = TestServer::start(ServerOpts::default()).await;
    let mut events = server.state.subscribe();
    let to = "+8613800000060";
    server
        .store
        .start_call(&NewCall {
            call_id: "c-placed".into(),
            transport: "twilio".into(),
            to_number: Some(to.into()),
            from_number: Some(FROM.into()),
            call_sid: Some("CA-placed".into()),
            stream_sid: None,
            started_at: time::OffsetDateTime::now_utc(),
        })
        .expect("placed call");
    let first = server.twiml("CA-placed", to).await.params;
    let second = server.twiml("CA-placed", to).await.params;
    assert_eq!(first["call_id"], "c-placed");
    assert_eq!(second["call_id"], "c-placed");

    let mut call = start_stream(&server, "MZfirst", "CA-placed", &first).await;
    let msg = tokio::time::timeout(Duration::from_secs(5), call.next())
        .await
        .expect("the first stream gets audio");
    assert!(matches!(msg, Some(Ok(Message::Text(_)))), "{msg:?}");
    let during = start_stream(&server, "MZsecond", "CA-placed", &second).await;
    if let Err(err) = refused(during).await {
        panic!("a second stream for a live call was accepted: {err}");
    }
    call.send(Message::text(stop_msg("MZfirst", 3, "CA-placed")))
        .await
        .unwrap();
    call.close(None).await.ok();
    TestServer::wait_ended(&mut events, "c-placed", Duration::from_secs(30)).await;
    let after_call = snapshot(&server.store);
    let after = start_stream(&server, "MZthird", "CA-placed", &second).await;
    if let Err(err) = refused(after).await {
        panic!("a second stream for a finished call was accepted: {err}");
    }
    assert_eq!(snapshot(&server.store), after_call);
    let row = server.store.get_call("c-placed").unwrap().expect("row");
    assert_eq!(row.stream_sid.as_deref(), Some("MZfirst"));
    assert_ne!(
        first.get("token"),
        second.get("token"),
        "each webhook gets its own token"
    );
}

/// A callee on the do-not-call list is hung up at the webhook and is never given a stream
/// token, in any spelling of the number, and so is a webhook with no valid `To`; one put on
/// the list after the webhook, before the stream started, is refused at `start` and hears
/// nothing.
#[tokio::test]
async fn a_listed_callee_never_gets_a_stream() {
    let server = TestServer::start(ServerOpts::default()).await;
    server
        .store
        .add_dnc("+8613800000070", "asked in an earlier call", None)
        .expect("add dnc");
    for spelling in ["+8613800000070", "008613800000070", "+86 138 0000 0070"] {
        let resp = server
            .post_signed(
                "/twiml",
                &[("CallSid", "CA-listed"), ("To", spelling), ("From", FROM)],
            )
            .await;
        assert_eq!(resp.status(), 200);
        let xml = resp.text().await.expect("body");
        assert!(
            xml.contains("<Hangup/>") && !xml.contains("<Stream") && !xml.contains("token"),
            "{spelling}: {xml}"
        );
    }
    // Without a callee number there is nobody to check against the list: no stream either.
    for to in ["", "not-a-number"] {
        let resp = server
            .post_signed(
                "/twiml",
                &[("CallSid", "CA-noto"), ("To", to), ("From", FROM)],
            )
            .await;
        let xml = resp.text().await.expect("body");
        assert!(
            xml.contains("<Hangup/>") && !xml.contains("<Stream"),
            "To {to:?}: {xml}"
        );
    }
    let to = "+8613800000071";
    let twiml = server.twiml("CA-late", to).await;
    server
        .store
        .add_dnc(to, "asked by text message", None)
        .expect("add dnc");
    let before = snapshot(&server.store);
    let ws = start_stream(&server, "MZlate", "CA-late", &twiml.params).await;
    if let Err(err) = refused(ws).await {
        panic!("a listed callee's stream was started: {err}");
    }
    assert_eq!(snapshot(&server.store), before);
}

/// A line that fails without Twilio's `stop` — a TCP reset, a connection that just ends, a
/// close frame with no `stop` before it, one frame over the size limit — is not the callee
/// hanging up: the call ends as `line_failed`, the record is complete, and the number is
/// not put on the do-not-call list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_lost_without_stop_is_line_failed_not_a_hang_up() {
    let server = TestServer::start(ServerOpts::default()).await;
    let modes = [
        LineFailure::Reset,
        LineFailure::Vanish,
        LineFailure::CloseWithoutStop,
        LineFailure::OversizedFrame,
    ];
    let calls = join_all(modes.iter().enumerate().map(|(i, &how)| {
        let server = &server;
        async move {
            let to = format!("+861380000008{i}");
            let call_sid = format!("CA-failed-{i}");
            let twiml = server.twiml(&call_sid, &to).await;
            let ws = server.connect_media(None).await.expect("open /media");
            let mut plan = CallPlan::new(vec![]);
            plan.line_failure = Some(FailAt {
                how,
                after_turns: 0,
                delay: Duration::from_millis(800),
            });
            plan.limit = Duration::from_secs(30);
            let log = fake_call(ws, &call_sid, &twiml.params, plan).await;
            (how, to, twiml.params["call_id"].clone(), log)
        }
    }))
    .await;
    for (how, to, call_id, log) in calls {
        assert!(
            log.line_failed,
            "{how:?}: the fake line never failed: {log:#?}"
        );
        let row = finished_record(&server, &call_id).await;
        assert_eq!(
            row.outcome.as_deref(),
            Some("line_failed"),
            "{how:?}: {row:?}"
        );
        assert!(!row.do_not_call, "{how:?}: {row:?}");
        assert!(!server.store.is_dnc(&to).unwrap(), "{how:?}: number listed");
        assert!(row.stream_sid.is_some(), "{how:?}: {row:?}");
        let events = server.store.call_events(&call_id).unwrap();
        assert!(
            events.iter().any(|e| e.kind == "line_failed"),
            "{how:?}: no line_failed event: {events:?}"
        );
        // A campaign may try the number again, like one that did not answer.
        let again = renewal_bot::campaign::may_call(&server.store, &to, 3);
        assert_eq!(again, Ok(()), "{how:?}");
    }
    assert!(server.store.list_dnc().unwrap().is_empty());
    let health = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Twilio never returns the bot's marks: each clip counts as played a bounded time after
/// its last frame, so the silence timer runs, the call reaches `no_response`, and the bot
/// plays its closing line and hangs up by itself.
#[tokio::test]
async fn marks_that_never_come_back_do_not_stall_the_call() {
    let server = TestServer::start(ServerOpts {
        session: SessionConfig {
            silence_timeout_ms: 2_000,
            ..SessionConfig::default()
        },
        ..ServerOpts::default()
    })
    .await;
    let mut events = server.state.subscribe();
    let to = "+8613800000089";
    let twiml = server.twiml("CA-nomarks", to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let mut plan = CallPlan::new(vec![]);
    plan.marks_never_return = true;
    plan.limit = Duration::from_secs(60);
    let log = fake_call(ws, "CA-nomarks", &twiml.params, plan).await;
    println!("{log:#?}");
    assert!(!log.timed_out, "the bot never hung up");
    assert!(log.closed_by_bot.is_some(), "the bot closed the stream");
    assert!(log.marks_returned.is_empty());
    assert!(log.marks_from_bot.len() >= 2, "opening and closing line");
    assert_eq!(
        log.unplayed_at_close,
        Duration::ZERO,
        "closing line cut off"
    );
    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(10))
        .await
        .expect("summary");
    assert_eq!(summary.outcome, Outcome::NoResponse);
    let row = server.store.get_call(&call_id).unwrap().expect("row");
    assert_eq!(row.outcome.as_deref(), Some("no_response"));
    assert!(!row.do_not_call);
    assert!(!server.store.is_dnc(to).unwrap());
}

/// No inbound audio at all (a one-way line), with marks returned and with marks lost too:
/// the silence timer still runs, and the call ends as `no_response` after the closing line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_inbound_media_still_ends_in_no_response() {
    let server = TestServer::start(ServerOpts {
        session: SessionConfig {
            silence_timeout_ms: 2_000,
            ..SessionConfig::default()
        },
        ..ServerOpts::default()
    })
    .await;
    let calls = join_all(
        [false, true]
            .into_iter()
            .enumerate()
            .map(|(i, marks_lost)| {
                let server = &server;
                async move {
                    let to = format!("+861380000009{}", i + 1);
                    let call_sid = format!("CA-nomedia-{i}");
                    let twiml = server.twiml(&call_sid, &to).await;
                    let ws = server.connect_media(None).await.expect("open /media");
                    let mut plan = CallPlan::new(vec![]);
                    plan.no_inbound_media = true;
                    plan.marks_never_return = marks_lost;
                    plan.limit = Duration::from_secs(60);
                    let log = fake_call(ws, &call_sid, &twiml.params, plan).await;
                    (marks_lost, to, twiml.params["call_id"].clone(), log)
                }
            }),
    )
    .await;
    for (marks_lost, to, call_id, log) in calls {
        assert!(
            !log.timed_out,
            "marks lost {marks_lost}: the bot never hung up"
        );
        assert!(log.closed_by_bot.is_some(), "marks lost {marks_lost}");
        let row = finished_record(&server, &call_id).await;
        assert_eq!(
            row.outcome.as_deref(),
            Some("no_response"),
            "marks lost {marks_lost}"
        );
        assert!(
            !server.store.is_dnc(&to).unwrap(),
            "marks lost {marks_lost}"
        );
    }
}
