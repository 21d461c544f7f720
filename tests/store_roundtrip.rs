//! The store on a real file: round trips, persistence across restarts, the do-not-call
//! list, concurrency, clear errors, and the `dnc` / `calls` commands.

use std::path::Path;
use std::sync::Barrier;
use std::thread;

use renewal_bot::labels::{Intent, Outcome};
use renewal_bot::records::{CallsCommand, DncCommand, default_db_path, run_calls, run_dnc};
use renewal_bot::session::TurnRecord;
use renewal_bot::store::{IfMissing, NewCall, OpenOptions, Store, StoreError};
use time::macros::datetime;

const ZHANG: &str = "+8613800000000";

fn new_call(call_id: &str, to: &str) -> NewCall {
    NewCall {
        call_id: call_id.to_string(),
        transport: "twilio".to_string(),
        to_number: Some(to.to_string()),
        from_number: Some("+1 (415) 555-0100".to_string()),
        call_sid: None,
        stream_sid: None,
        started_at: datetime!(2026-03-01 09:30:00 +08:00),
    }
}

fn turn(start: u64, end: u64, transcript: &str, intents: &[Intent], reply: &[&str]) -> TurnRecord {
    TurnRecord {
        speech_start: start,
        speech_end: end,
        transcript: transcript.to_string(),
        intents: intents.to_vec(),
        reply: reply.iter().map(|s| s.to_string()).collect(),
        confidence: None,
    }
}

/// Record one full call: identity confirmed, then a do-not-call request.
fn record_dnc_call(store: &Store, call_id: &str) {
    store
        .start_call(&new_call(call_id, "+86 138-0000-0000"))
        .unwrap();
    store.set_stream(call_id, "CA123", "MZ456").unwrap();
    store
        .record_event(call_id, "status", "in-progress")
        .unwrap();
    store
        .record_turn(
            call_id,
            &TurnRecord {
                confidence: Some(0.75),
                ..turn(
                    1_200,
                    2_400,
                    "对，我是张强",
                    &[Intent::ConfirmIdentity],
                    &["L02_purpose"],
                )
            },
            Some(640),
        )
        .unwrap();
    store
        .record_turn(
            call_id,
            &turn(
                9_000,
                11_500,
                "以后别再给我打电话了",
                &[Intent::DoNotCall, Intent::Decline],
                &["L09_dnc_ack", "L12_goodbye"],
            ),
            None,
        )
        .unwrap();
    let added = store
        .add_dnc("+86 138 0000 0000", "以后别再给我打电话了", Some(call_id))
        .unwrap();
    assert!(added);
    assert!(
        store
            .finish_call(call_id, Outcome::DoNotCall, true, 15_250)
            .unwrap()
    );
}

#[test]
fn a_call_round_trips_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/bot.sqlite");
    {
        let store = Store::open(&path).unwrap();
        record_dnc_call(&store, "call-1");
    }
    assert!(path.exists());

    // A new process: open the same file again.
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        renewal_bot::store::MIGRATIONS.len() as i64
    );
    let calls = store.recent_calls(10).unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.call_id, "call-1");
    assert_eq!(call.transport, "twilio");
    assert_eq!(call.to_number.as_deref(), Some(ZHANG));
    assert_eq!(call.from_number.as_deref(), Some("+14155550100"));
    assert_eq!(call.call_sid.as_deref(), Some("CA123"));
    assert_eq!(call.stream_sid.as_deref(), Some("MZ456"));
    assert_eq!(call.started_at, "2026-03-01T01:30:00.000Z");
    assert!(call.ended_at.is_some());
    assert_eq!(call.duration_ms, Some(15_250));
    assert_eq!(call.outcome.as_deref(), Some("do_not_call"));
    assert!(call.do_not_call);
    assert_eq!(
        call.outcome.as_deref().unwrap().parse::<Outcome>().unwrap(),
        Outcome::DoNotCall
    );

    let turns = store.call_turns("call-1").unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].seq, 1);
    assert_eq!(turns[0].speech_start_ms, 1_200);
    assert_eq!(turns[0].speech_end_ms, 2_400);
    assert_eq!(turns[0].transcript, "对，我是张强");
    assert_eq!(turns[0].intent.as_deref(), Some("confirm_identity"));
    assert_eq!(turns[0].latency_ms, Some(640));
    assert_eq!(turns[0].reply, vec!["L02_purpose"]);
    assert_eq!(turns[1].seq, 2);
    assert_eq!(turns[1].intent.as_deref(), Some("do_not_call"));
    assert_eq!(turns[1].intents, vec!["do_not_call", "decline"]);
    assert_eq!(turns[1].reply, vec!["L09_dnc_ack", "L12_goodbye"]);
    assert_eq!(turns[1].latency_ms, None);
    // The recognizer's confidence is kept with the turn (none for a turn not heard).
    assert_eq!(turns[0].confidence, Some(0.75));
    assert_eq!(turns[1].confidence, None);

    let events = store.call_events("call-1").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), events[0].detail.as_str()),
        ("status", "in-progress")
    );

    assert_eq!(
        store.find_call_by_sid("CA123").unwrap().as_deref(),
        Some("call-1")
    );
    assert_eq!(store.find_call_by_sid("CA-nope").unwrap(), None);

    // The do-not-call entry is permanent and keeps the callee's words.
    assert!(store.is_dnc(ZHANG).unwrap());
    assert!(store.is_dnc("0086 138 0000 0000").unwrap());
    let list = store.list_dnc().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].number, ZHANG);
    assert_eq!(list[0].reason, "以后别再给我打电话了");
    assert_eq!(list[0].source_call_id.as_deref(), Some("call-1"));
}

#[test]
fn calls_cut_off_by_a_crash_are_closed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.sqlite");
    {
        // The process dies in the middle of an old call (after one turn), while another
        // call has just started and a third has finished.
        let store = Store::open(&path).unwrap();
        store.start_call(&new_call("cut-off", ZHANG)).unwrap();
        store
            .record_turn(
                "cut-off",
                &turn(
                    5_000,
                    6_000,
                    "是我",
                    &[Intent::ConfirmIdentity],
                    &["notice"],
                ),
                Some(900),
            )
            .unwrap();
        store
            .start_call(&new_call("finished", "+8613900000001"))
            .unwrap();
        store
            .finish_call("finished", Outcome::SelfService, false, 30_000)
            .unwrap();
        let mut live = new_call("live", "+8613900000002");
        live.started_at = time::OffsetDateTime::now_utc();
        store.start_call(&live).unwrap();
    }
    // These rows have no owner (as a renewal-bot before schema version 2 wrote them): only
    // those older than any call can last are closed. Calls with an owner are closed as soon
    // as the owner is dead, whatever their age: see tests/fault_crash.rs.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.close_interrupted_calls().unwrap(), ["cut-off"]);
    let cut_off = store.get_call("cut-off").unwrap().unwrap();
    assert!(cut_off.ended_at.is_some());
    assert_eq!(
        cut_off.outcome, None,
        "nobody knows how it would have ended"
    );
    assert_eq!(
        store.call_turns("cut-off").unwrap().len(),
        1,
        "turns are kept"
    );
    let events = store.call_events("cut-off").unwrap();
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("interrupted"));
    // A call younger than any call can last may still be running in another process.
    assert_eq!(store.get_call("live").unwrap().unwrap().ended_at, None);
    assert_eq!(
        store
            .get_call("finished")
            .unwrap()
            .unwrap()
            .outcome
            .as_deref(),
        Some("self_service")
    );
    assert!(
        store.close_interrupted_calls().unwrap().is_empty(),
        "a second start finds nothing to close"
    );
    let listing = run_calls_text(
        &store,
        CallsCommand::List {
            limit: 10,
            json: false,
        },
    );
    assert!(listing.contains("(interrupted)"), "{listing}");
    assert!(listing.contains("(in progress)"), "{listing}");
}

#[test]
fn dnc_numbers_are_normalized_and_first_entry_wins() {
    let store = Store::open_in_memory().unwrap();
    assert!(!store.is_dnc("+86 138-0000-0000").unwrap());
    assert!(store.add_dnc("+86 138-0000-0000", "别打了", None).unwrap());
    assert!(store.is_dnc(ZHANG).unwrap());
    assert!(store.is_dnc("+86 (138) 0000.0000").unwrap());
    assert!(!store.is_dnc("+8613900000000").unwrap());

    // A second add does not overwrite the first reason or time.
    let first = store.get_dnc(ZHANG).unwrap().unwrap();
    assert!(
        !store
            .add_dnc(ZHANG, "another reason", Some("call-9"))
            .unwrap()
    );
    let after = store.get_dnc(ZHANG).unwrap().unwrap();
    assert_eq!(first, after);
    assert_eq!(after.reason, "别打了");

    let err = store.add_dnc("abc", "x", None).unwrap_err();
    assert!(matches!(err, StoreError::BadNumber { .. }));
    assert!(
        err.to_string().contains("'abc' is not a phone number"),
        "{err}"
    );
    assert!(store.is_dnc("").is_err());

    assert!(store.remove_dnc("+86 138 0000 0000").unwrap());
    assert!(!store.remove_dnc(ZHANG).unwrap());
    assert!(!store.is_dnc(ZHANG).unwrap());

    // An operator may type the national spelling; the dialer checks the E.164 one.
    assert!(store.add_dnc("138 0000 0000", "客户投诉", None).unwrap());
    assert!(store.is_dnc("+86 138-0000-0000").unwrap());
    assert!(!store.add_dnc(ZHANG, "again", None).unwrap());
    assert_eq!(store.list_dnc().unwrap().len(), 1);
}

#[test]
fn finishing_twice_keeps_the_first_outcome() {
    let store = Store::open_in_memory().unwrap();
    store.start_call(&new_call("c", ZHANG)).unwrap();
    assert_eq!(store.recent_calls(5).unwrap()[0].outcome, None);
    assert!(
        store
            .finish_call("c", Outcome::SelfService, false, 30_000)
            .unwrap()
    );
    assert!(
        !store
            .finish_call("c", Outcome::CalleeHangup, true, 99_000)
            .unwrap()
    );
    let call = store.get_call("c").unwrap().unwrap();
    assert_eq!(call.outcome.as_deref(), Some("self_service"));
    assert_eq!(call.duration_ms, Some(30_000));
    assert!(!call.do_not_call);
    assert!(!store.is_dnc(ZHANG).unwrap());
}

#[test]
fn a_do_not_call_outcome_lists_the_number_even_without_add_dnc() {
    let store = Store::open_in_memory().unwrap();
    store
        .start_call(&new_call("c", "+86 139 0000 0000"))
        .unwrap();
    store
        .finish_call("c", Outcome::Hostile, true, 5_000)
        .unwrap();
    let entry = store.get_dnc("+8613900000000").unwrap().unwrap();
    assert_eq!(entry.source_call_id.as_deref(), Some("c"));
    assert!(entry.reason.contains("hostile"), "{}", entry.reason);
}

#[test]
fn unknown_and_duplicate_call_ids_are_clear_errors() {
    let store = Store::open_in_memory().unwrap();
    let t = turn(0, 1, "喂", &[Intent::Acknowledge], &[]);
    for err in [
        store.record_turn("nope", &t, None).unwrap_err(),
        store
            .record_event("nope", "status", "completed")
            .unwrap_err(),
        store.set_stream("nope", "CA", "MZ").unwrap_err(),
        store
            .finish_call("nope", Outcome::NoResponse, false, 0)
            .unwrap_err(),
        store.call_turns("nope").unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::UnknownCall { .. }), "{err}");
        assert!(err.to_string().contains("unknown call id `nope`"), "{err}");
    }
    store.start_call(&new_call("c", ZHANG)).unwrap();
    let err = store.start_call(&new_call("c", ZHANG)).unwrap_err();
    assert!(matches!(err, StoreError::DuplicateCall { .. }), "{err}");
    let mut bad = new_call("d", ZHANG);
    bad.to_number = Some("zhang qiang".into());
    assert!(matches!(
        store.start_call(&bad).unwrap_err(),
        StoreError::BadNumber { .. }
    ));
}

#[test]
fn several_threads_and_connections_share_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.sqlite");
    let shared = Store::open(&path).unwrap();
    let second = Store::open(&path).unwrap(); // a second connection, as another process would
    const THREADS: usize = 8;
    const TURNS: u64 = 25;
    let barrier = Barrier::new(THREADS);
    let newly_added: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let store = if i % 2 == 0 {
                    shared.clone()
                } else {
                    second.clone()
                };
                let barrier = &barrier;
                s.spawn(move || {
                    let id = format!("call-{i}");
                    store
                        .start_call(&new_call(&id, &format!("+86138000000{i:02}")))
                        .unwrap();
                    barrier.wait();
                    for k in 0..TURNS {
                        let t = turn(
                            k * 1000,
                            k * 1000 + 500,
                            "好的",
                            &[Intent::Acknowledge],
                            &["L03"],
                        );
                        store.record_turn(&id, &t, Some(k)).unwrap();
                    }
                    let added = store
                        .add_dnc("+86 138 0000 0000", &format!("from {id}"), Some(&id))
                        .unwrap();
                    store
                        .finish_call(&id, Outcome::SelfService, false, 60_000)
                        .unwrap();
                    usize::from(added)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(newly_added, 1, "exactly one thread adds the shared number");
    let calls = shared.recent_calls(100).unwrap();
    assert_eq!(calls.len(), THREADS);
    for call in &calls {
        let turns = shared.call_turns(&call.call_id).unwrap();
        let seqs: Vec<u32> = turns.iter().map(|t| t.seq).collect();
        assert_eq!(seqs, (1..=TURNS as u32).collect::<Vec<_>>());
        assert_eq!(call.outcome.as_deref(), Some("self_service"));
    }
    assert_eq!(second.list_dnc().unwrap().len(), 1);
}

#[test]
fn an_unusable_location_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: cannot be created, even by root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("sub/bot.sqlite");
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("cannot open the database at {}", path.display())),
        "{message}"
    );
    assert!(message.contains("pass --db PATH"), "{message}");

    // A directory where the file should be.
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

#[test]
fn a_file_that_is_not_sqlite_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.sqlite");
    std::fs::write(&path, "this is a text file, not a database\n".repeat(100)).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a renewal-bot database"), "{message}");
    // The file is left alone.
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("this is a text file")
    );
}

fn run_dnc_text(store: &Store, cmd: DncCommand) -> String {
    let mut out = Vec::new();
    run_dnc(store, cmd, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn run_calls_text(store: &Store, cmd: CallsCommand) -> String {
    let mut out = Vec::new();
    run_calls(store, cmd, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn dnc_command_output() {
    let store = Store::open_in_memory().unwrap();
    let text = run_dnc_text(&store, DncCommand::List { json: false });
    assert!(text.contains("empty"), "{text}");

    let text = run_dnc_text(
        &store,
        DncCommand::Add {
            number: "+86 138-0000-0000".into(),
            reason: "客户要求".into(),
        },
    );
    assert!(text.contains("Added +8613800000000"), "{text}");
    let text = run_dnc_text(
        &store,
        DncCommand::Add {
            number: ZHANG.into(),
            reason: "again".into(),
        },
    );
    assert!(text.contains("already on the do-not-call list"), "{text}");
    assert!(text.contains("客户要求"), "{text}");

    let table = run_dnc_text(&store, DncCommand::List { json: false });
    assert!(
        table.contains(ZHANG) && table.contains("客户要求"),
        "{table}"
    );

    let json = run_dnc_text(&store, DncCommand::List { json: true });
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let entries = value.as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["number"], ZHANG);
    assert_eq!(entries[0]["reason"], "客户要求");
    assert!(entries[0]["source_call_id"].is_null());
    assert!(entries[0]["added_at"].as_str().unwrap().ends_with('Z'));

    let mut out = Vec::new();
    let err = run_dnc(
        &store,
        DncCommand::Add {
            number: "abc".into(),
            reason: "x".into(),
        },
        &mut out,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("'abc' is not a phone number"),
        "{err}"
    );

    let text = run_dnc_text(
        &store,
        DncCommand::Remove {
            number: "0086 13800000000".into(),
        },
    );
    assert!(text.contains("Removed +8613800000000"), "{text}");
    let text = run_dnc_text(
        &store,
        DncCommand::Remove {
            number: ZHANG.into(),
        },
    );
    assert!(text.contains("was not on the do-not-call list"), "{text}");
}

#[test]
fn calls_command_output() {
    let store = Store::open_in_memory().unwrap();
    let text = run_calls_text(
        &store,
        CallsCommand::List {
            limit: 20,
            json: false,
        },
    );
    assert!(text.contains("No calls"), "{text}");

    record_dnc_call(&store, "call-1");
    let mut live = new_call("call-2", "+8613900000000");
    live.transport = "eval".into();
    live.started_at = datetime!(2026-03-01 10:00:00 UTC);
    store.start_call(&live).unwrap();

    let table = run_calls_text(
        &store,
        CallsCommand::List {
            limit: 20,
            json: false,
        },
    );
    for needle in [
        "call-1",
        "call-2",
        "twilio",
        "eval",
        ZHANG,
        "do_not_call",
        "(in progress)",
        "0:15",
        "yes",
    ] {
        assert!(table.contains(needle), "missing {needle}:\n{table}");
    }
    // Newest first.
    assert!(
        table.find("call-2").unwrap() < table.find("call-1").unwrap(),
        "{table}"
    );

    let json = run_calls_text(
        &store,
        CallsCommand::List {
            limit: 20,
            json: true,
        },
    );
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let calls = value.as_array().unwrap();
    assert_eq!(calls.len(), 2);
    let c1 = &calls[1];
    assert_eq!(c1["call_id"], "call-1");
    assert_eq!(c1["transport"], "twilio");
    assert_eq!(c1["to_number"], ZHANG);
    assert_eq!(c1["started_at"], "2026-03-01T01:30:00.000Z");
    assert_eq!(c1["duration_ms"], 15_250);
    assert_eq!(c1["outcome"], "do_not_call");
    assert_eq!(c1["do_not_call"], true);
    assert!(calls[0]["outcome"].is_null());
    assert!(calls[0]["duration_ms"].is_null());

    let limited = run_calls_text(
        &store,
        CallsCommand::List {
            limit: 1,
            json: true,
        },
    );
    let value: serde_json::Value = serde_json::from_str(&limited).unwrap();
    assert_eq!(value.as_array().unwrap().len(), 1);

    let show = run_calls_text(
        &store,
        CallsCommand::Show {
            call_id: "call-1".into(),
        },
    );
    for needle in [
        "call-1",
        "CA123",
        "do_not_call",
        "对，我是张强",
        "以后别再给我打电话了",
        "confirm_identity",
        "(also decline)",
        "640 ms",
        "L09_dnc_ack, L12_goodbye",
        "0:01.2-0:02.4",
        "in-progress",
    ] {
        assert!(show.contains(needle), "missing {needle}:\n{show}");
    }

    let mut out = Vec::new();
    let err = run_calls(
        &store,
        CallsCommand::Show {
            call_id: "nope".into(),
        },
        &mut out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown call id `nope`"), "{err}");
}

#[test]
fn the_default_path_is_under_data() {
    assert_eq!(default_db_path(), Path::new("data/renewal-bot.sqlite"));
}

/// Holds the database's write lock from another connection (as another process would)
/// until dropped: writes through the store then fail after the busy timeout.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(db: &Path) -> WriteLock {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("COMMIT");
    }
}

/// Defect 1: a do-not-call request the database cannot take used to be logged and lost.
/// Now it waits in memory and in the journal, counts as on the list for every process,
/// makes the store unhealthy, and lands when the database takes writes again.
#[test]
fn a_do_not_call_the_database_cannot_take_waits_in_the_journal_and_lands_later() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bot.sqlite");
    let store = Store::open(&db).unwrap();
    store.start_call(&new_call("c1", ZHANG)).unwrap();
    assert!(store.health().is_ok());
    let lock = WriteLock::take(&db);
    let err = store
        .add_dnc("+86 138 0000 0000", "以后别再给我打电话了", Some("c1"))
        .unwrap_err();
    assert!(matches!(err, StoreError::DncPending { .. }), "{err:?}");
    let journal = dir.path().join("bot.sqlite.dnc-journal");
    assert!(
        err.to_string().contains(&journal.display().to_string()),
        "{err}"
    );
    assert!(std::fs::read_to_string(&journal).unwrap().contains(ZHANG));
    assert!(store.is_dnc(ZHANG).unwrap(), "a waiting entry counts");
    let health = store.health();
    assert_eq!(health.pending_do_not_call, 1);
    assert!(
        health
            .problem
            .as_deref()
            .unwrap_or_default()
            .contains("do-not-call"),
        "{health:?}"
    );

    // Another process opening the same files meanwhile sees the number as listed.
    let other = Store::open(&db).unwrap();
    assert!(other.is_dnc("13800000000").unwrap());
    assert!(!other.health().is_ok());
    assert_eq!(other.list_dnc().unwrap().len(), 1);
    let refused = other.remove_dnc(ZHANG).unwrap_err();
    assert!(
        matches!(refused, StoreError::DncRemovePending { .. }),
        "{refused}"
    );

    drop(lock);
    assert_eq!(store.retry_pending(), 0);
    let entry = other.get_dnc(ZHANG).unwrap().unwrap();
    assert_eq!(entry.source_call_id.as_deref(), Some("c1"));
    assert!(store.health().is_ok() && other.health().is_ok());
    assert_eq!(std::fs::read(&journal).unwrap().len(), 0, "journal emptied");
    assert!(
        store.get_call("c1").unwrap().unwrap().do_not_call,
        "the call's flag matches the list"
    );
}

/// When neither the database nor the journal can take a do-not-call entry, the process
/// holds it, says so, and reports itself unhealthy (the servers then take no call).
#[test]
fn an_entry_neither_the_database_nor_the_journal_can_take_is_held_and_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bot.sqlite");
    // A regular file where the journal's directory should be: unwritable even for root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let store = Store::open_with(
        &db,
        &OpenOptions {
            if_missing: IfMissing::Create,
            dnc_journal: Some(blocker.join("dnc.journal")),
        },
    )
    .unwrap();
    let lock = WriteLock::take(&db);
    let err = store.add_dnc(ZHANG, "别打了", None).unwrap_err();
    assert!(matches!(err, StoreError::DncNotDurable { .. }), "{err:?}");
    assert!(err.to_string().contains("no new call is taken"), "{err}");
    assert!(store.is_dnc(ZHANG).unwrap());
    let problem = store.health().problem.unwrap_or_default();
    assert!(
        problem.contains("the journal cannot be written either"),
        "{problem}"
    );
    drop(lock);
    assert_eq!(store.retry_pending(), 0);
    assert!(store.health().is_ok());
    assert!(Store::open(&db).unwrap().is_dnc(ZHANG).unwrap());
}

/// Defect 9: a mistyped `--db` used to create a new, empty database in its place.
#[test]
fn a_path_without_a_database_is_refused_unless_creating_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let refuse = OpenOptions {
        if_missing: IfMissing::Refuse,
        dnc_journal: None,
    };
    let typo = dir.path().join("data/renewal-bto.sqlite");
    let err = Store::open_with(&typo, &refuse).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&typo.display().to_string()), "{message}");
    assert!(message.contains("renewal-bot serve"), "{message}");
    assert!(!typo.exists() && !dir.path().join("data").exists());
    // An empty file is no database either (sqlite3 would take it for one).
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Store::open_with(&empty, &refuse),
        Err(StoreError::Missing { .. })
    ));

    let created = Store::open(&typo).unwrap();
    assert!(created.created());
    drop(created);
    let reopened = Store::open_with(&typo, &refuse).unwrap();
    assert!(!reopened.created());
}

/// Another program's SQLite file is left alone, and the error does not dump our
/// migration SQL.
#[test]
fn another_programs_sqlite_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE calls (id INTEGER PRIMARY KEY, note TEXT);
             CREATE TABLE customers (name TEXT);
             INSERT INTO calls (note) VALUES ('keep me');",
        )
        .unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("another program"), "{message}");
    assert!(message.contains("calls, customers"), "{message}");
    assert!(!message.contains("CREATE"), "{message}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 2, "nothing was added to it");
}

/// Defect 10: a call with no number cannot be on the list; `calls list` used to say "yes".
#[test]
fn a_call_without_a_number_shows_no_do_not_call_answer() {
    let store = Store::open_in_memory().unwrap();
    let mut call = new_call("anonymous", ZHANG);
    call.to_number = None;
    store.start_call(&call).unwrap();
    store
        .finish_call("anonymous", Outcome::DoNotCall, true, 9_000)
        .unwrap();
    let table = run_calls_text(
        &store,
        CallsCommand::List {
            limit: 5,
            json: false,
        },
    );
    let row = table
        .lines()
        .find(|l| l.contains("anonymous"))
        .unwrap_or_default();
    assert!(!row.contains("yes"), "{table}");
    assert!(
        row.trim_end()
            .trim_end_matches('│')
            .trim_end()
            .ends_with('-'),
        "{table}"
    );
    let show = run_calls_text(
        &store,
        CallsCommand::Show {
            call_id: "anonymous".into(),
        },
    );
    assert!(show.contains("do-not-call -"), "{show}");
}
