//! Fault tests: the real binary killed with SIGKILL mid-call and mid-campaign, then
//! restarted on the same files. Afterwards the database passes `PRAGMA integrity_check`,
//! the do-not-call list is intact, the cut-off calls are closed at once (not ten minutes
//! later) with their do-not-call flag matching the list, and no number is dialled twice.

mod fault_support;
mod support;

use fault_support::*;
use std::time::Duration;
use support::{ACCOUNT, CallPlan, CreateMode, FakeRest, TOKEN};

const ZHANG: &str = "+8613800000001";
const LISTED_BEFORE: &str = "+8613800000099";

/// Defect 4: a call cut off by a crash used to stay "(in progress)" after a quick restart
/// (only calls older than ten minutes were closed), with `do_not_call` 0 though its
/// do-not-call entry existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_call_then_restart_closes_the_call_at_once_and_keeps_the_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let (ok, out) = run(
        &["dnc", "add", LISTED_BEFORE, "--reason", "早就说过"],
        &db,
        None,
    );
    assert!(ok, "{out}");

    let mut server = Server::start(&db, None);
    // 是我。 / 跟你们说过多少遍了，别再打我电话！
    let mut plan = CallPlan::new(case_turns("dnc-told-you-before"));
    plan.limit = Duration::from_secs(120);
    let (call_id, callee) = server
        .call("CAfault00000000000000000000000001", ZHANG, plan)
        .await;
    eventually(
        "the callee's do-not-call request is stored",
        Duration::from_secs(90),
        || dnc_numbers(&db).contains(&ZHANG.to_string()),
    )
    .await;
    // Mid-call: the bot is still saying goodbye.
    server.proc.kill9();
    let _ = callee.await;
    let (ended, outcome, _) = call_row(&db, &call_id);
    assert_eq!(
        (ended.as_deref(), outcome.as_deref()),
        (None, None),
        "the call was cut off"
    );
    assert_eq!(integrity_check(&db), "ok");
    assert_eq!(dnc_numbers(&db), [ZHANG, LISTED_BEFORE]);

    let restarted = Server::start(&db, None);
    eventually(
        "the restarted server closes the cut-off call",
        Duration::from_secs(20),
        || call_row(&db, &call_id).0.is_some(),
    )
    .await;
    let (_, outcome, do_not_call) = call_row(&db, &call_id);
    assert_eq!(outcome, None, "nobody knows how it would have ended");
    assert!(do_not_call, "the call's flag matches the do-not-call list");
    assert!(
        event_kinds(&db, &call_id).contains(&"interrupted".to_string()),
        "{:?}",
        event_kinds(&db, &call_id)
    );
    assert_eq!(dnc_numbers(&db), [ZHANG, LISTED_BEFORE]);
    assert_eq!(integrity_check(&db), "ok");
    let (status, body) = restarted.healthz().await;
    assert_eq!(status, 200, "{body}");
}

/// The campaign's command line against the fake Calls API.
fn campaign(numbers: &std::path::Path, db: &std::path::Path, api: &str) -> std::process::Command {
    let mut command = bot_command(
        &[
            "campaign",
            numbers.to_str().expect("utf-8"),
            "--concurrent",
            "2",
            "--from",
            support::FROM,
            "--public-url",
            "https://bot.example.com",
            "--twilio-api-base",
            api,
            "--log",
            "renewal_bot=info",
        ],
        db,
        None,
    );
    command
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN);
    command
}

/// Defect 3: a campaign killed while a Calls API request was in flight used to dial the
/// number again on the next run (the call row was written only after Twilio answered).
/// Here `campaign` and `serve` are both killed with SIGKILL: one call answered and live,
/// one dial waiting for Twilio's answer. After the restart the live call is closed, the
/// dial in flight is found in Twilio's call list, and nobody is dialled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_campaign_dials_no_one_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let answered = "+8613800000011";
    let in_flight = "+8613800000012";
    let listed = "+8613800000013";
    let (ok, out) = run(&["dnc", "add", listed], &db, None);
    assert!(ok, "{out}");
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, format!("{answered}\n{in_flight}\n{listed}\n")).expect("write");
    let rest = FakeRest::start(
        (201, r#"{"sid": "CA{n}", "status": "queued"}"#),
        (200, "{}"),
    )
    .await;
    rest.set_create_mode(CreateMode::CreateThenHangFor(in_flight.into()));

    let mut server = Server::start(&db, None);
    let mut dialer = Proc::spawn(campaign(&numbers, &db, &rest.base));
    eventually("both numbers are dialled", Duration::from_secs(30), || {
        rest.creates_to(answered) == 1 && rest.creates_to(in_flight) == 1
    })
    .await;
    // Twilio rings the first number; it answers and the call runs in `serve`.
    let sid = rest
        .calls()
        .iter()
        .find(|c| c.to == answered)
        .map(|c| c.sid.clone())
        .expect("the answered call");
    rest.set_status(&sid, "in-progress");
    let mut plan = CallPlan::new(Vec::new());
    plan.limit = Duration::from_secs(60);
    let (call_id, callee) = server.call(&sid, answered, plan).await;
    eventually(
        "the call's media runs in serve",
        Duration::from_secs(20),
        || event_kinds(&db, &call_id).contains(&"opening_delay_ms".to_string()),
    )
    .await;
    dialer.kill9();
    server.proc.kill9();
    let _ = callee.await;
    assert_eq!(integrity_check(&db), "ok");
    assert_eq!(
        call_row(&db, &call_id).0,
        None,
        "the answered call was cut off"
    );

    // Both come back; Twilio has rung the second number meanwhile.
    let in_flight_sid = rest
        .calls()
        .iter()
        .find(|c| c.to == in_flight)
        .map(|c| c.sid.clone())
        .expect("Twilio made the call in flight");
    rest.set_status(&in_flight_sid, "ringing");
    rest.set_create_mode(CreateMode::Answer);
    let _server = Server::start(&db, None);
    eventually(
        "the restarted server closes the cut-off call",
        Duration::from_secs(20),
        || call_row(&db, &call_id).0.is_some(),
    )
    .await;
    let mut rerun = Proc::spawn(campaign(&numbers, &db, &rest.base));
    let status = rerun.wait(Duration::from_secs(60));
    let log = rerun.log();
    assert!(status.is_some(), "the second run did not finish:\n{log}");
    assert_eq!(rest.creates_to(answered), 1, "dialled twice:\n{log}");
    assert_eq!(rest.creates_to(in_flight), 1, "dialled twice:\n{log}");
    assert_eq!(
        rest.creates_to(listed),
        0,
        "dialled a listed number:\n{log}"
    );
    let conn = sqlite(&db);
    let (sid_recorded, dial_status): (Option<String>, Option<String>) = conn
        .query_row(
            "SELECT call_sid, dial_status FROM calls WHERE to_number = ?1",
            [in_flight],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("the dial in flight was recorded before the request");
    assert_eq!(
        sid_recorded.as_deref(),
        Some(in_flight_sid.as_str()),
        "{log}"
    );
    assert_eq!(dial_status.as_deref(), Some("placed"));
    assert_eq!(dnc_numbers(&db), [listed]);
    assert_eq!(integrity_check(&db), "ok");
}

/// Two servers on one database: the second one's start leaves the first one's live call
/// alone; once the first is killed, the second closes that call by itself within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_servers_calls_are_left_alone_and_closed_once_it_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let mut first = Server::start(&db, None);
    let mut plan = CallPlan::new(Vec::new());
    plan.limit = Duration::from_secs(90);
    let (call_id, callee) = first
        .call("CAfault00000000000000000000000003", "+8613800000003", plan)
        .await;
    eventually("the call's media runs", Duration::from_secs(20), || {
        event_kinds(&db, &call_id).contains(&"opening_delay_ms".to_string())
    })
    .await;
    let second = Server::start(&db, None);
    // The second server's start-up (and a sweep or two after it) must not touch it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        call_row(&db, &call_id).0,
        None,
        "the live server's call was closed; second server's log:\n{}",
        second.proc.log()
    );
    first.proc.kill9();
    let _ = callee.await;
    eventually(
        "the second server closes the dead one's call",
        Duration::from_secs(20),
        || call_row(&db, &call_id).0.is_some(),
    )
    .await;
    assert!(event_kinds(&db, &call_id).contains(&"interrupted".to_string()));
    assert_eq!(integrity_check(&db), "ok");
}
