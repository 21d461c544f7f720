//! The command line as people and scripts use it: help, clear errors on bad input, the
//! do-not-call list and call records across runs.

mod fault_support;
mod support;

use std::path::Path;
use std::process::{Command, Output};

fn bot(args: &[&str], db: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
        .args(args)
        .arg("--db")
        .arg(db)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bot(&["--help"], &dir.path().join("db.sqlite"));
    assert!(out.status.success());
    let help = text(&out);
    for command in [
        "eval",
        "serve",
        "call",
        "campaign",
        "dnc",
        "calls",
        "transcribe",
        "check",
    ] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
}

#[test]
fn do_not_call_list_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/bot.sqlite");
    let out = bot(
        &["dnc", "add", "+86 138-0000-0000", "--reason", "以后别打了"],
        &db,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = bot(&["dnc", "list", "--json"], &db);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("dnc list --json is JSON");
    let listed = list.to_string();
    assert!(
        listed.contains("+8613800000000") && listed.contains("以后别打了"),
        "{listed}"
    );
    let out = bot(&["calls", "list", "--json"], &db);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("calls list --json is JSON");
}

#[test]
fn eval_rejects_a_manifest_with_a_missing_file_or_unknown_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("m.toml");
    std::fs::write(&manifest, "[[case]]\nname = \"a\"\noutcome = \"self_service\"\n[[case.turn]]\naudio = \"gone.wav\"\nintent = \"acknowledge\"\n")
        .expect("write");
    let out = bot(
        &["eval", manifest.to_str().expect("utf-8 path")],
        &dir.path().join("db"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("gone.wav") && text(&out).contains("does not exist"),
        "{}",
        text(&out)
    );

    std::fs::write(&manifest, "[[case]]\nname = \"a\"\noutcome = \"renewed\"\n").expect("write");
    let out = bot(
        &["eval", manifest.to_str().expect("utf-8 path")],
        &dir.path().join("db"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("renewed") && text(&out).contains("m.toml:3"),
        "{}",
        text(&out)
    );
}

/// A 16-bit mono WAV of `seconds` of digital silence at `rate`.
fn silent_wav(path: &Path, rate: u32, seconds: u32) {
    let mut writer = hound::WavWriter::create(
        path,
        hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .expect("create wav");
    for _ in 0..rate * seconds {
        writer.write_sample(0i16).expect("write sample");
    }
    writer.finalize().expect("finish wav");
}

/// `transcribe` gates silence as calls do (whisper reads it as 对), refuses a file far
/// longer than an utterance before decoding it, and goes on with the other files.
#[test]
fn transcribe_hears_no_speech_in_silence_and_refuses_a_recording_too_long() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quiet = dir.path().join("quiet.wav");
    let long = dir.path().join("long.wav");
    silent_wav(&quiet, 8_000, 2);
    silent_wav(&long, 8_000, 90);
    let out = bot(
        &[
            "transcribe",
            quiet.to_str().expect("utf-8 path"),
            long.to_str().expect("utf-8 path"),
        ],
        &dir.path().join("db"),
    );
    let message = text(&out);
    assert!(!out.status.success(), "a 90 s file accepted: {message}");
    assert!(message.contains("quiet.wav\t(no speech)"), "{message}");
    assert!(
        message.contains("long.wav") && message.contains("longer than one utterance"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn eval_names_a_truncated_or_empty_wav() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty.wav"), b"").expect("write");
    std::fs::write(dir.path().join("cut.wav"), b"RIFF\x24\x00\x00\x00WAVEfmt ").expect("write");
    for wav in ["empty.wav", "cut.wav"] {
        let manifest = dir.path().join("m.toml");
        std::fs::write(
            &manifest,
            format!("[[case]]\nname = \"a\"\noutcome = \"self_service\"\n[[case.turn]]\naudio = \"{wav}\"\ntext = \"好\"\nintent = \"acknowledge\"\n"),
        )
        .expect("write");
        let out = bot(
            &["eval", manifest.to_str().expect("utf-8 path")],
            &dir.path().join("db"),
        );
        assert!(!out.status.success(), "{wav} accepted");
        let message = text(&out);
        assert!(
            message.contains(wav) && message.contains("turn 1"),
            "{message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[test]
fn eval_from_text_writes_the_contract_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("m.toml");
    std::fs::write(
        &manifest,
        "[[case]]\nname = \"refuses\"\noutcome = \"declined\"\ndnc = true\n\
         [[case.turn]]\ntext = \"嗯，是我\"\nintent = \"confirm_identity\"\n\
         [[case.turn]]\ntext = \"这个不续了\"\nintent = \"decline\"\n",
    )
    .expect("write");
    let report = dir.path().join("r.json");
    let out = bot(
        &[
            "eval",
            manifest.to_str().expect("utf-8"),
            "--json",
            report.to_str().expect("utf-8"),
        ],
        &dir.path().join("db"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("JSON");
    assert_eq!(json["summary"]["outcome_correct"], 1);
    assert_eq!(json["summary"]["intent_correct"], 2);
    assert_eq!(json["cases"][0]["outcome"], "declined");
    assert_eq!(json["cases"][0]["dnc"], true);
}

/// A call left open by a run that died mid-call is closed when `serve` starts again, and
/// `calls list` then tells it from a live one.
#[test]
fn serve_closes_the_calls_a_dead_run_left_open() {
    use renewal_bot::store::{NewCall, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    {
        let store = Store::open(&db).expect("open the store");
        store
            .start_call(&NewCall {
                call_id: "cut-off".into(),
                transport: "twilio".into(),
                to_number: Some("+8613800000000".into()),
                from_number: None,
                call_sid: Some("CA-cut-off".into()),
                stream_sid: None,
                started_at: time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(3600),
            })
            .expect("record the call");
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-skip-signature",
            "--db",
        ])
        .arg(&db)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("TWILIO_AUTH_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let store = Store::open(&db).expect("open the store");
    let closed = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        store
            .get_call("cut-off")
            .ok()
            .flatten()
            .is_some_and(|c| c.ended_at.is_some())
    });
    let _ = server.kill();
    let output = server.wait_with_output().expect("serve output");
    assert!(
        closed,
        "serve did not close the cut-off call; its stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = bot(&["calls", "list"], &db);
    assert!(text(&out).contains("(interrupted)"), "{}", text(&out));
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Defect 9: a mistyped `--db` used to create a new, empty database silently, and `call`
/// then dialled a number that is on the real list. Only `serve`, `sip`, `eval` and
/// `dnc add` create a database (and say so); the others refuse and say how to create one.
#[test]
fn only_serve_sip_and_dnc_add_create_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("data/renewal-bto.sqlite");
    let numbers = dir.path().join("numbers.txt");
    std::fs::write(&numbers, "+8613800000001\n").expect("write");
    let dial = [
        "--from",
        "+14155550100",
        "--public-url",
        "https://bot.example.com",
        "--twilio-api-base",
        "http://127.0.0.1:9",
    ];
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["dnc", "list"],
        vec!["dnc", "remove", "+8613800000001"],
        vec!["calls", "list"],
        vec!["calls", "show", "some-call"],
    ];
    let mut call = vec!["call", "+8613800000001"];
    call.extend(dial);
    commands.push(call);
    let numbers_arg = numbers.to_str().expect("utf-8");
    let mut campaign = vec!["campaign", numbers_arg];
    campaign.extend(dial);
    commands.push(campaign);
    for args in &commands {
        let out = Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
            .args(args)
            .arg("--db")
            .arg(&typo)
            .env("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000")
            .env("TWILIO_AUTH_TOKEN", "token")
            .env_remove("RUST_LOG")
            .output()
            .expect("runs");
        let message = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        assert!(
            message.contains(&format!("there is no database at {}", typo.display()))
                && message.contains("renewal-bot serve"),
            "{args:?}: {message}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    let out = bot(&["dnc", "add", "+8613800000001"], &typo);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("created new database at {}", typo.display())),
        "{}",
        text(&out)
    );
    let out = bot(&["dnc", "list"], &typo);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stderr(&out).contains("created"), "{}", text(&out));
}

/// Runs `serve` on `db` until it exits or `limit` passes (then it is killed); its exit
/// status (`None`: it kept running) and stderr.
fn serve_briefly(
    db: &Path,
    limit: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-skip-signature",
            "--db",
        ])
        .arg(db)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("TWILIO_AUTH_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = server.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let output = server.wait_with_output().expect("serve output");
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Defect 10: `serve` used to start on a database that fails SQLite's quick_check.
#[test]
fn serve_refuses_a_database_that_fails_quick_check() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let out = bot(&["dnc", "add", "+8613800000001"], &db);
    assert!(out.status.success(), "{}", text(&out));
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let tx = conn.unchecked_transaction().expect("tx");
        for i in 0..2_000 {
            tx.execute(
                "INSERT INTO do_not_call (number, reason, added_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    format!("+86139{i:08}"),
                    "r".repeat(50),
                    "2026-01-01T00:00:00.000Z"
                ],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
    // A torn page in the middle of the file: the cell pointers of a b-tree page.
    let pages = std::fs::metadata(&db).expect("size").len() / 4096;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open the file");
    file.seek(SeekFrom::Start((pages / 2) * 4096 + 8))
        .expect("seek");
    file.write_all(&[0xFF; 64]).expect("write");
    drop(file);

    let (status, message) = serve_briefly(&db, std::time::Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "serve started on a damaged database:\n{message}"
    );
    assert!(
        message.contains("fails SQLite's quick_check")
            && message.contains(&db.display().to_string()),
        "{message}"
    );
}

/// `serve` creates a database that does not exist, and says so.
#[test]
fn serve_says_when_it_creates_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("new/bot.sqlite");
    let mut server = Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-skip-signature",
            "--db",
        ])
        .arg(&db)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("TWILIO_AUTH_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let appeared = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        db.exists()
    });
    let _ = server.kill();
    let output = server.wait_with_output().expect("serve output");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(appeared, "{message}");
    assert!(
        message.contains(&format!("created new database at {}", db.display())),
        "{message}"
    );
}

/// Defect 10: messages used to repeat their cause ("X: X") and dump the migration SQL.
#[test]
fn errors_say_each_thing_once_and_never_dump_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let out = bot(&["dnc", "add", "+8613800000009"], &db);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_renewal-bot"))
        .args([
            "call",
            "+8613800000001",
            "--from",
            "+14155550100",
            "--public-url",
            "https://bot.example.com",
            "--twilio-api-base",
            "http://127.0.0.1:9",
            "--db",
        ])
        .arg(&db)
        .env("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000")
        .env("TWILIO_AUTH_TOKEN", "token")
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let message = stderr(&out);
    assert!(!out.status.success());
    assert!(message.contains("cannot reach the Twilio API"), "{message}");
    let parts: Vec<&str> = message.trim().split(": ").collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "said twice: {message}");
    }

    let foreign = dir.path().join("crm.sqlite");
    {
        let conn = rusqlite::Connection::open(&foreign).expect("open");
        conn.execute_batch(
            "CREATE TABLE calls (id INTEGER PRIMARY KEY); CREATE TABLE notes (t TEXT);",
        )
        .expect("create");
    }
    let out = bot(&["dnc", "list"], &foreign);
    let message = stderr(&out);
    assert!(!out.status.success());
    assert!(message.contains("another program"), "{message}");
    assert!(
        !message.contains("CREATE TABLE") && !message.contains("-- renewal-bot schema"),
        "{message}"
    );
}

/// Defect 10: an invalid `To` at `/twiml` used to be logged as "on the do-not-call list".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_an_invalid_to_as_invalid_not_as_do_not_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let server = fault_support::Server::start(&db, None);
    let xml = server
        .twiml_xml("CAcli0000000000000000000000000001", "client:alice")
        .await;
    assert!(xml.contains("<Hangup"), "{xml}");
    // The server's stderr reaches the test through a pipe: wait for the line, not longer.
    let mut log = server.proc.log();
    for _ in 0..50 {
        if log.contains("client:alice") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        log = server.proc.log();
    }
    let line = log
        .lines()
        .find(|l| l.contains("client:alice"))
        .unwrap_or_else(|| panic!("nothing logged about the To:\n{log}"));
    assert!(line.contains("not a valid phone number"), "{line}");
    assert!(!log.contains("on the do-not-call list"), "{log}");
}
