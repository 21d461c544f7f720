//! `renewal-bot campaign` against a fake Calls API: which numbers of a list are dialled,
//! which are skipped and why (do-not-call, already reached, unanswered too often, listed
//! twice, not a number), at most `--concurrent` calls at once, and the outcomes reported
//! once `serve` (played here by a task that writes to the store as the server does) has
//! finished each call.

mod support;

use renewal_bot::campaign::{CampaignFlags, Disposition, run_campaign};
use renewal_bot::dialer::DialSettings;
use renewal_bot::labels::Outcome;
use renewal_bot::store::{NewCall, Store};
use renewal_bot::transport::twilio::config::TwilioCredentials;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

const CREATED: &str = r#"{"sid": "CA{n}", "status": "queued"}"#;

fn flags(numbers: &std::path::Path, api_base: &str, dry_run: bool) -> CampaignFlags {
    CampaignFlags {
        numbers: numbers.to_path_buf(),
        concurrent: 2,
        max_attempts: 3,
        dry_run,
        call: DialSettings {
            from: Some(FROM.into()),
            public_url: Some("https://bot.example.com".into()),
            timeout: 20,
            twilio: TwilioCredentials {
                auth_token: Some(TOKEN.into()),
                account_sid: Some(ACCOUNT.into()),
                twilio_api_base: Some(api_base.into()),
            },
        },
    }
}

fn earlier_call(store: &Store, id: &str, to: &str, answered: bool, outcome: Outcome) {
    store
        .start_call(&NewCall {
            call_id: id.into(),
            transport: "twilio".into(),
            to_number: Some(to.into()),
            from_number: Some(FROM.into()),
            call_sid: Some(format!("CA-{id}")),
            stream_sid: None,
            started_at: time::OffsetDateTime::now_utc() - Duration::from_secs(86_400),
        })
        .unwrap();
    if answered {
        store
            .set_stream(id, &format!("CA-{id}"), &format!("MZ-{id}"))
            .unwrap();
    }
    store.finish_call(id, outcome, false, 20_000).unwrap();
}

/// Plays `serve`: each call Twilio was asked to place gets a media stream and, a moment
/// later, an outcome. Counts the most calls it saw in progress at once.
fn answer_every_call(store: Store, most_live: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let calls = store.recent_calls(100).unwrap();
            let live: Vec<_> = calls
                .iter()
                .filter(|c| c.outcome.is_none() && c.call_sid.is_some())
                .collect();
            most_live.fetch_max(live.len(), Ordering::SeqCst);
            for call in live {
                let sid = call.call_sid.clone().unwrap();
                if call.stream_sid.is_none() {
                    store.set_stream(&call.call_id, &sid, "MZ-live").unwrap();
                } else {
                    store
                        .finish_call(&call.call_id, Outcome::SelfService, false, 30_000)
                        .unwrap();
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_dials_only_those_it_may_and_reports_each_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bot.sqlite")).unwrap();
    store.add_dnc("+8613800000002", "以后别打了", None).unwrap();
    earlier_call(&store, "told", "+8613800000003", true, Outcome::Declined);
    for n in 0..3 {
        earlier_call(
            &store,
            &format!("rang-{n}"),
            "+8613800000004",
            false,
            Outcome::NoResponse,
        );
    }
    earlier_call(
        &store,
        "rang-once",
        "+8613800000005",
        false,
        Outcome::NoResponse,
    );
    let numbers = dir.path().join("numbers.csv");
    std::fs::write(
        &numbers,
        "name,number\n\
         张强,+86 138-0000-0001\n\
         # a comment line\n\
         李四,call me\n\
         王五,0086 13800000001\n\
         赵六,+8613800000002\n\
         孙七,+8613800000003\n\
         周八,+8613800000004\n\
         吴九,+8613800000005\n\
         郑十,+8613800000006\n",
    )
    .unwrap();
    let rest = FakeRest::start((201, CREATED), (200, "{}")).await;

    // A dry run calls no one and says what it would do.
    let mut out = Vec::new();
    let dry = run_campaign(&flags(&numbers, &rest.base, true), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(rest.requests().is_empty(), "a dry run placed calls");
    let would: Vec<&str> = dry
        .iter()
        .filter(|(_, d)| *d == Disposition::WouldCall)
        .map(|(n, _)| n.raw.as_str())
        .collect();
    assert_eq!(
        would,
        ["+86 138-0000-0001", "+8613800000005", "+8613800000006"],
        "{printed}"
    );
    for reason in [
        "line 4\tcall me\tskipped\t\"call me\" is not a phone number",
        "listed twice",
        "do-not-call list",
        "already reached",
        "3 earlier calls went unanswered",
    ] {
        assert!(printed.contains(reason), "no {reason:?} in:\n{printed}");
    }

    // The real run: the three are dialled, two at a time, and their outcomes reported.
    let most_live = Arc::new(AtomicUsize::new(0));
    let server = answer_every_call(store.clone(), Arc::clone(&most_live));
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    server.abort();
    assert_eq!(
        most_live.load(Ordering::SeqCst),
        2,
        "--concurrent 2: two calls at a time"
    );
    let dialled: Vec<String> = rest
        .requests()
        .iter()
        .flat_map(|r| {
            r.form
                .iter()
                .filter(|(k, _)| k == "To")
                .map(|(_, v)| v.clone())
        })
        .collect();
    let mut sorted = dialled.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["+8613800000001", "+8613800000005", "+8613800000006"],
        "{printed}"
    );
    let outcomes: Vec<Option<String>> = done
        .iter()
        .filter_map(|(_, d)| match d {
            Disposition::Called { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|o| o.as_deref() == Some("self_service")),
        "{printed}"
    );
    assert!(
        printed.contains("campaign: 8 numbers: 3 called, 5 skipped; outcomes: self_service 3"),
        "{printed}"
    );

    // Run again: everyone reached has been told; no one is called twice.
    let mut out = Vec::new();
    run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    assert_eq!(
        rest.requests().len(),
        3,
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn twilio_errors_are_reported_per_number_and_an_empty_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bot.sqlite")).unwrap();
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, "+8613800000001\n").unwrap();
    let rest = FakeRest::start(
        (
            400,
            r#"{"code": 21211, "message": "The 'To' number +8613800000001 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        ),
        (200, "{}"),
    )
    .await;
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(
        matches!(&done[0].1, Disposition::Failed(why) if why.contains("21211")),
        "{printed}"
    );
    assert!(printed.contains("1 failed"), "{printed}");

    std::fs::write(&numbers, "# nobody yet\n\n").unwrap();
    let err = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lists no numbers"), "{err}");
}

/// Twilio's answer when it failed after all (the call may or may not exist).
const LOST: &str = r#"{"code": 20500, "message": "An internal server error has occurred", "more_info": "https://www.twilio.com/docs/errors/20500", "status": 503}"#;

fn only(done: &[(renewal_bot::campaign::ListedNumber, Disposition)]) -> &Disposition {
    assert_eq!(done.len(), 1, "{done:?}");
    &done[0].1
}

/// Defect 3: the call row used to be written only after the Calls API answered, so a dial
/// whose answer was lost was made again on the next run. Now the attempt is recorded
/// first and reconciled with Twilio's call list: the callee is called once.
#[tokio::test]
async fn a_dial_whose_answer_was_lost_is_reconciled_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bot.sqlite")).unwrap();
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, "+8613800000007\n").unwrap();
    let rest = FakeRest::start((201, CREATED), (200, "{}")).await;
    rest.set_create_mode(CreateMode::CreateThenAnswer(503, LOST.into()));
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(
        matches!(only(&done), Disposition::Failed(why) if why.contains("may have been placed")),
        "{printed}"
    );
    assert_eq!(rest.creates_to("+8613800000007"), 1);
    let made = rest.calls();
    assert_eq!(made.len(), 1, "Twilio made the call");
    rest.set_status(&made[0].sid, "ringing");

    rest.set_create_mode(CreateMode::Answer);
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert_eq!(
        rest.creates_to("+8613800000007"),
        1,
        "dialled twice:\n{printed}"
    );
    assert!(
        matches!(only(&done), Disposition::Skipped(why) if why.contains("in progress")),
        "{printed}"
    );
    assert!(
        rest.list_requests()
            .iter()
            .any(|q| q.contains("To=%2B8613800000007") && q.contains("StartTime%3E=")),
        "no call-list request: {:?}",
        rest.list_requests()
    );
    let calls = store.calls_to("+8613800000007").unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].call_sid.as_deref(), Some(made[0].sid.as_str()));
    assert_eq!(calls[0].dial_status.as_deref(), Some("placed"));
    let events = store.call_events(&calls[0].call_id).unwrap();
    assert!(events.iter().any(|e| e.kind == "reconciled"), "{events:?}");
}

/// A dial whose request never reached Twilio (its list has no such call) is settled as
/// such, and the number is dialled once.
#[tokio::test]
async fn a_dial_that_never_reached_twilio_is_made_once_after_reconciling() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bot.sqlite")).unwrap();
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, "+8613800000008\n").unwrap();
    let rest = FakeRest::start((503, LOST), (200, "{}")).await;
    run_campaign(&flags(&numbers, &rest.base, false), &store, &mut Vec::new())
        .await
        .unwrap();
    assert!(rest.calls().is_empty(), "Twilio made no call");
    let first = store.calls_to("+8613800000008").unwrap();
    assert_eq!(
        first[0].dial_status.as_deref(),
        Some("dialing"),
        "{first:?}"
    );

    let rest2 = FakeRest::start((201, CREATED), (200, "{}")).await;
    let server = answer_every_call(store.clone(), Arc::new(AtomicUsize::new(0)));
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest2.base, false), &store, &mut out)
        .await
        .unwrap();
    server.abort();
    let printed = String::from_utf8(out).unwrap();
    assert!(
        matches!(only(&done), Disposition::Called { .. }),
        "{printed}"
    );
    assert_eq!(rest2.creates_to("+8613800000008"), 1);
    let settled = store.get_call(&first[0].call_id).unwrap().unwrap();
    assert_eq!(settled.dial_status.as_deref(), Some("not_placed"));
    assert!(settled.ended_at.is_some());
}

/// When Twilio cannot say whether an earlier dial made a call, the number is left alone
/// and the reason reported: never a blind redial.
#[tokio::test]
async fn a_number_whose_earlier_dial_twilio_cannot_tell_about_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bot.sqlite")).unwrap();
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, "+8613800000009\n").unwrap();
    let rest = FakeRest::start((201, CREATED), (200, "{}")).await;
    rest.set_create_mode(CreateMode::CreateThenAnswer(503, LOST.into()));
    run_campaign(&flags(&numbers, &rest.base, false), &store, &mut Vec::new())
        .await
        .unwrap();
    rest.set_create_mode(CreateMode::Answer);
    rest.fail_lists(Some((500, LOST)));
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert_eq!(
        rest.creates_to("+8613800000009"),
        1,
        "dialled again:\n{printed}"
    );
    assert!(
        matches!(only(&done), Disposition::Skipped(why)
            if why.contains("unknown result") && why.contains("call list cannot be read")),
        "{printed}"
    );
    let calls = store.calls_to("+8613800000009").unwrap();
    assert_eq!(calls[0].dial_status.as_deref(), Some("dialing"));
}

/// Defect 1: while a do-not-call request waits for the database (here: another process
/// holds the write lock longer than the busy timeout), no one is dialled, and the waiting
/// number counts as on the list once the rest may be dialled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dial_while_a_do_not_call_request_waits_for_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bot.sqlite");
    let store = Store::open(&db).unwrap();
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, "+8613800000010\n+8613800000011\n").unwrap();
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.add_dnc("+8613800000011", "别再打了", None))
            .await
            .unwrap()
            .unwrap_err()
    };
    assert!(err.to_string().contains("journal"), "{err}");

    let rest = FakeRest::start((201, CREATED), (200, "{}")).await;
    let mut out = Vec::new();
    let done = run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(rest.requests().is_empty(), "dialled:\n{printed}");
    assert!(
        done.iter().all(
            |(_, d)| matches!(d, Disposition::Skipped(why) if why.contains("do-not-call request"))
        ),
        "{printed}"
    );

    blocker.execute_batch("COMMIT").unwrap();
    assert_eq!(store.retry_pending(), 0);
    let server = answer_every_call(store.clone(), Arc::new(AtomicUsize::new(0)));
    let mut out = Vec::new();
    run_campaign(&flags(&numbers, &rest.base, false), &store, &mut out)
        .await
        .unwrap();
    server.abort();
    let printed = String::from_utf8(out).unwrap();
    assert_eq!(rest.creates_to("+8613800000010"), 1, "{printed}");
    assert_eq!(rest.creates_to("+8613800000011"), 0, "{printed}");
}
