//! Whole calls over the Twilio transport with the real whisper model: a fake Twilio posts
//! `/twiml`, opens `/media` with a valid signature and replays fixture calls
//! (`tests/fixtures/calls.toml`) in real time, each turn about 400 ms after the bot's line
//! has played (its mark returned). Checked: the outcome and do-not-call state in the store,
//! the hang-up only after the closing line's mark came back, `clear` after a barge-in.
//!
//! Needs `models/ggml-base-q8_0.bin` (run `models/fetch`); fails, never skips, without it.
//! The load tests (10 simultaneous calls; every fixture call with ten in flight, compared
//! with the same calls run one at a time) are `#[ignore]`d: run them with
//! `cargo test --release --test twilio_calls -- --ignored --nocapture --test-threads 1`.

mod support;

use futures_util::future::join_all;
use renewal_bot::transport::CallEvent;
use std::time::Duration;
use support::*;

/// The server with the real whisper pool, as `serve` runs it.
async fn whisper_server() -> TestServer {
    TestServer::start(ServerOpts {
        recognizer: Some(pool()),
        ..ServerOpts::default()
    })
    .await
}

struct CaseResult {
    name: String,
    expected_outcome: String,
    outcome: Option<String>,
    expected_dnc: bool,
    dnc: bool,
    log: CallLog,
}

impl CaseResult {
    fn ok(&self) -> bool {
        self.outcome.as_deref() == Some(self.expected_outcome.as_str())
            && self.dnc == self.expected_dnc
    }
}

async fn replay(
    server: &TestServer,
    dir: &std::path::Path,
    case: &Case,
    index: usize,
) -> CaseResult {
    let to = format!("+86139{:08}", index);
    let (call_id, log) = run_case(server, dir, case, &to).await;
    // The record is complete once the driver has flushed it.
    let mut outcome = None;
    for _ in 0..300 {
        outcome = server
            .store
            .get_call(&call_id)
            .ok()
            .flatten()
            .and_then(|c| c.outcome);
        if outcome.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dnc = server.store.is_dnc(&to).unwrap_or(false);
    CaseResult {
        name: case.name.clone(),
        expected_outcome: case.outcome.clone(),
        outcome,
        expected_dnc: case.expected_dnc(),
        dnc,
        log,
    }
}

/// Transport-level checks every finished call must pass.
fn check_transport(r: &CaseResult, hangs_up: bool, timing: bool) {
    let log = &r.log;
    assert!(!log.timed_out, "{}: the call never ended", r.name);
    let first = log.first_media.expect("the bot never spoke");
    assert!(
        !timing || first < Duration::from_millis(300),
        "{}: opening line started {first:?} after start",
        r.name
    );
    assert!(
        !timing || log.max_lead <= Duration::from_millis(200),
        "{}: bot audio ran {:?} ahead of real time",
        r.name,
        log.max_lead
    );
    if !hangs_up {
        let closed = log
            .closed_by_bot
            .unwrap_or_else(|| panic!("{}: the bot did not hang up", r.name));
        let (last_sent, _) = log.marks_from_bot.last().expect("marks from the bot");
        let (last_back, back_at) = log.marks_returned.last().expect("marks returned");
        assert_eq!(
            last_sent, last_back,
            "{}: the closing line's mark never came back",
            r.name
        );
        assert!(
            closed >= *back_at,
            "{}: hung up at {closed:?}, before the closing line's mark came back at {back_at:?}",
            r.name
        );
        assert_eq!(log.marks_pending_at_close, 0, "{}", r.name);
        assert_eq!(
            log.unplayed_at_close,
            Duration::ZERO,
            "{}: audio cut off",
            r.name
        );
    }
}

fn report(results: &[CaseResult]) {
    for r in results {
        println!(
            "{:<40} expected {:<16} got {:<16} dnc {}/{}  opening {:?}  turns {}  clears {}",
            r.name,
            r.expected_outcome,
            r.outcome.as_deref().unwrap_or("-"),
            r.dnc,
            r.expected_dnc,
            r.log.first_media.unwrap_or_default(),
            r.log.turn_started.len(),
            r.log.clears.len(),
        );
    }
}

const TRANSPORT_CASES: &[&str] = &[
    "ss-confirm-then-renew",
    "dec-busy-let-it-lapse",
    "dnc-told-you-before",
    "wo-sms-no-calls",
    "ca-close-then-ok",
    "ho-after-data-question",
    "hu-confirms-then-hangs-up",
    "nr-talking-to-colleague",
    "wp-wrong-number",
];

/// One case per outcome that fits in about a minute of call time, played at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_fixture_calls_reach_the_right_outcome() {
    let (manifest, dir) = fixtures();
    let server = whisper_server().await;
    // One case per outcome (plus callee hang-ups), clean recordings that the recognizer and
    // the rules get right in the simulator: this test is about the transport, the eval
    // measures recognition. Missing names fail the test (the fixtures changed).
    let mut picked: Vec<&Case> = TRANSPORT_CASES
        .iter()
        .map(|name| {
            manifest
                .cases
                .iter()
                .find(|c| c.name == *name)
                .unwrap_or_else(|| panic!("fixture case {name} is gone from calls.toml"))
        })
        .collect();
    // TWILIO_CASES=name,name runs just those (for debugging one case).
    if let Ok(names) = std::env::var("TWILIO_CASES") {
        let names: Vec<&str> = names.split(',').map(str::trim).collect();
        picked = manifest
            .cases
            .iter()
            .filter(|c| names.contains(&c.name.as_str()))
            .collect();
        assert!(!picked.is_empty(), "TWILIO_CASES matched no case");
    }
    // A few at a time: whisper on a small machine is the bottleneck, not the transport
    // (the load test below runs ten at once).
    let mut results = Vec::new();
    for (batch_no, batch) in picked.chunks(2).enumerate() {
        results.extend(
            join_all(
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, case)| replay(&server, &dir, case, batch_no * 2 + i)),
            )
            .await,
        );
    }
    report(&results);
    for (r, case) in results.iter().zip(&picked) {
        check_transport(r, case.hangs_up(), true);
    }
    let wrong: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        wrong.is_empty(),
        "wrong outcome or do-not-call state: {wrong:?}"
    );
}

/// The callee talks over the opening: the bot sends `clear` at once and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_over_the_opening_sends_clear() {
    let (manifest, dir) = fixtures();
    let case = manifest
        .cases
        .iter()
        .find(|c| c.outcome == "self_service" && c.turns.len() == 2 && !c.hangs_up())
        .expect("a two-turn self_service case");
    let server = whisper_server().await;
    let mut events = server.state.subscribe();
    let to = "+8613700000001";
    let call_sid = "CA-barge-in";
    let twiml = server.twiml(call_sid, to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let mut plan = CallPlan::new(case.turns.iter().map(|t| turn_mulaw(&dir, t)).collect());
    // Two seconds into the opening line, the callee starts talking.
    plan.barge_in_after = Some(Duration::from_secs(2));
    let log = fake_call(ws, call_sid, &twiml.params, plan).await;
    println!("{log:#?}");
    let spoke = log.turn_started[0];
    let clear = *log.clears.first().expect("no clear after the barge-in");
    assert!(
        clear > spoke,
        "clear at {clear:?} before the callee spoke at {spoke:?}"
    );
    assert!(
        clear - spoke < Duration::from_millis(1_500),
        "clear came {:?} after the callee started talking",
        clear - spoke
    );
    // The opening's mark came back at the clear (Twilio returns pending marks), and the
    // call went on to its end.
    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(60))
        .await
        .expect("summary");
    println!("outcome {}", summary.outcome);
    assert_eq!(summary.outcome.as_str(), case.outcome, "{}", case.name);
    assert!(log.closed_by_bot.is_some());
}

/// The callee answers the opening (是我), the bot starts the notice, and the line resets
/// under it without Twilio's `stop`: the call ends as `line_failed` with the callee's turn
/// in its record, and the number stays off the do-not-call list (a hang-up at that point
/// would have put it there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_reset_after_a_turn_keeps_the_turn_and_adds_no_do_not_call() {
    let (manifest, dir) = fixtures();
    let case = manifest
        .cases
        .iter()
        .find(|c| c.name == "ss-confirm-then-renew")
        .expect("fixture case ss-confirm-then-renew");
    let server = whisper_server().await;
    let mut events = server.state.subscribe();
    let to = "+8613700000002";
    let call_sid = "CA-reset-after-turn";
    let twiml = server.twiml(call_sid, to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let mut plan = CallPlan::new(vec![turn_mulaw(&dir, &case.turns[0])]);
    plan.line_failure = Some(FailAt {
        how: LineFailure::Reset,
        after_turns: 1,
        delay: Duration::from_secs(3),
    });
    plan.limit = Duration::from_secs(60);
    let log = fake_call(ws, call_sid, &twiml.params, plan).await;
    assert!(log.line_failed, "{log:#?}");
    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(40))
        .await
        .expect("summary");
    assert_eq!(summary.outcome.as_str(), "line_failed");
    assert!(!summary.do_not_call);
    let row = server.store.get_call(&call_id).unwrap().expect("row");
    assert_eq!(row.outcome.as_deref(), Some("line_failed"));
    assert!(!row.do_not_call);
    assert!(!server.store.is_dnc(to).unwrap());
    let turns = server.store.call_turns(&call_id).unwrap();
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(
        turns[0].intent.as_deref(),
        Some("confirm_identity"),
        "{turns:?}"
    );
}

/// The callee says 别再打我电话 and the line resets 300 ms after the words end (time for the
/// server to read the last frames: a reset drops unread data), before they are recognized:
/// the words still count. The call ends as `line_failed` (the line ended
/// it), but the number is on the list and the record says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_said_before_the_line_failed_still_decide() {
    let (manifest, dir) = fixtures();
    let case = manifest
        .cases
        .iter()
        .find(|c| c.name == "dnc-told-you-before")
        .expect("fixture case dnc-told-you-before");
    let server = whisper_server().await;
    let mut events = server.state.subscribe();
    let to = "+8613700000003";
    let call_sid = "CA-reset-after-refusal";
    let twiml = server.twiml(call_sid, to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let mut plan = CallPlan::new(case.turns.iter().map(|t| turn_mulaw(&dir, t)).collect());
    plan.line_failure = Some(FailAt {
        how: LineFailure::Reset,
        after_turns: 2,
        delay: Duration::from_millis(300),
    });
    plan.limit = Duration::from_secs(60);
    let log = fake_call(ws, call_sid, &twiml.params, plan).await;
    assert!(log.line_failed, "{log:#?}");
    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(40))
        .await
        .expect("summary");
    assert_eq!(summary.outcome.as_str(), "line_failed");
    assert!(summary.do_not_call);
    assert!(server.store.is_dnc(to).unwrap(), "the refusal was lost");
    let row = server.store.get_call(&call_id).unwrap().expect("row");
    assert!(row.do_not_call, "{row:?}");
    let kinds: Vec<String> = server
        .store
        .call_events(&call_id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "line_failed"), "{kinds:?}");
}

/// 是我, then 我在开会，长话短说 (busy: 李明 offers text messages instead, an outcome left
/// pending), then the line resets: the offer was never answered and the line, not the
/// callee, ended the call, so it is `line_failed` with no do-not-call — not the
/// `written_only` a silence would give, nor the `callee_hangup` a hang-up would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_failure_after_an_offer_is_line_failed() {
    let (manifest, dir) = fixtures();
    let turn = |case: &str| {
        let case = manifest
            .cases
            .iter()
            .find(|c| c.name == case)
            .unwrap_or_else(|| panic!("fixture case {case}"));
        turn_mulaw(&dir, &case.turns[0])
    };
    let turns = vec![turn("dnc-told-you-before"), turn("ss-busy-then-handles-it")];
    let server = whisper_server().await;
    let mut events = server.state.subscribe();
    let to = "+8613700000004";
    let call_sid = "CA-reset-after-offer";
    let twiml = server.twiml(call_sid, to).await;
    let call_id = twiml.params["call_id"].clone();
    let ws = server.connect_media(None).await.expect("open /media");
    let mut plan = CallPlan::new(turns);
    plan.line_failure = Some(FailAt {
        how: LineFailure::Reset,
        after_turns: 2,
        delay: Duration::from_secs(3),
    });
    plan.limit = Duration::from_secs(90);
    let log = fake_call(ws, call_sid, &twiml.params, plan).await;
    assert!(log.line_failed, "{log:#?}");
    let summary = TestServer::wait_ended(&mut events, &call_id, Duration::from_secs(40))
        .await
        .expect("summary");
    let turns = server.store.call_turns(&call_id).unwrap();
    let intents: Vec<_> = turns.iter().map(|t| t.intent.clone()).collect();
    assert_eq!(
        intents,
        [
            Some("confirm_identity".to_string()),
            Some("busy".to_string())
        ],
        "{turns:?}"
    );
    assert_eq!(summary.outcome.as_str(), "line_failed");
    assert!(!server.store.is_dnc(to).unwrap());
}

/// Every fixture call that fits in about a minute of call time (all but `max_duration`).
fn playable(manifest: &Manifest) -> Vec<&Case> {
    manifest
        .cases
        .iter()
        .filter(|c| c.outcome != "max_duration" && c.turns.iter().all(|t| t.audio.is_some()))
        .collect()
}

/// Opening delays and reply latencies the server reports while calls run.
fn collect_figures(
    mut events: tokio::sync::broadcast::Receiver<CallEvent>,
) -> tokio::task::JoinHandle<(Vec<u64>, Vec<u64>)> {
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut openings = Vec::new();
        loop {
            match events.recv().await {
                Ok(CallEvent::Turn {
                    latency_ms: Some(ms),
                    ..
                }) => latencies.push(ms),
                Ok(CallEvent::OpeningSent { delay_ms, .. }) => openings.push(delay_ms),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        (latencies, openings)
    })
}

/// Prints the load figures; the server must be dropped first so the collector ends.
async fn print_load_figures(
    title: &str,
    results: &[CaseResult],
    wall: Duration,
    collector: tokio::task::JoinHandle<(Vec<u64>, Vec<u64>)>,
) {
    let (latencies, openings) = tokio::time::timeout(Duration::from_secs(5), collector)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let client_openings: Vec<u64> = results
        .iter()
        .filter_map(|r| r.log.first_media.map(|d| d.as_millis() as u64))
        .collect();
    let correct = results.iter().filter(|r| r.ok()).count();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("--- load: {title} on {cores} cores, {wall:?} wall");
    println!("outcome + dnc correct: {correct}/{}", results.len());
    println!(
        "opening delay (start -> first media frame, client side) ms: p50 {:?} p95 {:?} max {:?}",
        percentile(&client_openings, 50.0),
        percentile(&client_openings, 95.0),
        client_openings.iter().max()
    );
    println!(
        "opening delay (server side) ms: p50 {:?} p95 {:?}",
        percentile(&openings, 50.0),
        percentile(&openings, 95.0)
    );
    println!(
        "reply latency (end of speech -> first reply frame) ms over {} turns: p50 {:?} p95 {:?} max {:?}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        latencies.iter().max()
    );
    let max_lead = results
        .iter()
        .map(|r| r.log.max_lead)
        .max()
        .unwrap_or_default();
    println!("largest audio lead seen by a client: {max_lead:?}");
}

/// Replays `cases` against one server with the real recognizer, ten calls in flight at a
/// time (the next starts as one ends); prints the figures and checks every call's
/// transport structure (hang-up after the last mark, no cut audio; timings are reported,
/// not asserted).
async fn run_load(title: &str, dir: &std::path::Path, cases: &[&Case]) -> Vec<CaseResult> {
    use futures_util::stream::{self, StreamExt};
    let server = whisper_server().await;
    let collector = collect_figures(server.state.subscribe());
    let started = std::time::Instant::now();
    let results: Vec<CaseResult> = stream::iter(cases.iter().enumerate())
        .map(|(i, case)| replay(&server, dir, case, 100 + i))
        .buffered(10)
        .collect()
        .await;
    let wall = started.elapsed();
    report(&results);
    drop(server);
    print_load_figures(title, &results, wall, collector).await;
    for (r, case) in results.iter().zip(cases) {
        check_transport(r, case.hangs_up(), false);
    }
    results
}

/// 10 simultaneous replayed calls; prints opening delay and reply latency figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: about a minute of real time, prints figures"]
async fn load_ten_simultaneous_calls() {
    let (manifest, dir) = fixtures();
    // Every outcome that fits in about a minute, then more calls in manifest order: ten
    // calls that disagree, not ten renewals.
    let playable = playable(&manifest);
    let mut cases: Vec<&Case> = Vec::new();
    for case in &playable {
        if !cases.iter().any(|c| c.outcome == case.outcome) {
            cases.push(case);
        }
    }
    for case in &playable {
        if cases.len() >= 10 {
            break;
        }
        if !cases.iter().any(|c| c.name == case.name) {
            cases.push(case);
        }
    }
    cases.truncate(10);
    let title = format!("{} simultaneous calls", cases.len());
    run_load(&title, &dir, &cases).await;
}

/// Every playable fixture call with ten always in flight (the next starts as one ends),
/// then the same calls one at a time through `eval`: a call whose outcome differs between
/// the two was changed by the load or the transport, not by recognition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: several minutes of real time, prints figures"]
async fn load_every_fixture_call_ten_in_flight() {
    let recognizer = pool();
    let (manifest, dir) = fixtures();
    let cases = playable(&manifest);
    let title = format!("{} calls, ten in flight", cases.len());
    let results = run_load(&title, &dir, &cases).await;

    let single = tokio::task::spawn_blocking(move || {
        use renewal_bot::eval::{self, EvalOptions, manifest::Manifest, simulate::Transcribe};
        let path = repo_path("tests/fixtures/calls.toml");
        let manifest = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let options = EvalOptions {
            text_only: false,
            session: renewal_bot::session::SessionConfig::default(),
            clock: Default::default(),
            on_case_done: &|_| {},
        };
        eval::run(
            &manifest,
            &script(),
            &clips(),
            Some(&recognizer as &dyn Transcribe),
            &options,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .expect("the single-call eval panicked");
    let mut single_right = 0;
    let mut differ = Vec::new();
    for r in &results {
        let alone = single
            .cases
            .iter()
            .find(|c| c.name == r.name)
            .unwrap_or_else(|| panic!("{} missing from the eval report", r.name));
        let alone_right = alone.outcome_correct() && alone.dnc_correct() != Some(false);
        single_right += usize::from(alone_right);
        if alone.outcome != r.outcome || alone.dnc != r.dnc {
            differ.push(format!(
                "{}: alone {:?} dnc {}, under load {:?} dnc {}",
                r.name, alone.outcome, alone.dnc, r.outcome, r.dnc
            ));
        }
    }
    println!(
        "same calls one at a time (eval): {single_right}/{} right",
        results.len()
    );
    println!(
        "calls whose outcome or do-not-call state differs under load: {} {differ:#?}",
        differ.len()
    );
}
