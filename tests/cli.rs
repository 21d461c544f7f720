//! The command line as people and scripts use it: help, clear errors on bad input, the
//! do-not-call list and call records across runs.

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
