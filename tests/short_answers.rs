//! Short replies whisper base garbles, through the real model: with the script's short
//! answers they are read right; without them the same audio is not understood, so this test
//! fails if the short-answer check stops working.

use std::path::PathBuf;
use std::sync::Arc;

use renewal_bot::asr::{AsrConfig, RecognizerPool};
use renewal_bot::audio::{ASR_RATE, wav};
use renewal_bot::dialog::Script;
use renewal_bot::labels::Intent;

/// Recorded fixture turns whose free transcripts come out wrong (你行吧, 对我谢, 终于),
/// with the label their words carry.
const GARBLED: &[(&str, Intent)] = &[
    (
        "tests/fixtures/wav/wo-noisy-busy-then-ok-3.wav",
        Intent::Acknowledge,
    ), // 嗯，行吧。
    (
        "tests/fixtures/wav/ca-close-then-ok-1.wav",
        Intent::ConfirmIdentity,
    ), // 对，我是。
    (
        "tests/fixtures/wav/ho-after-data-question-1.wav",
        Intent::ConfirmIdentity,
    ), // 对，我是。
    (
        "tests/fixtures/holdout/wav/h-dnc-after-howto-2.wav",
        Intent::Acknowledge,
    ), // 哦，好。
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the recognizer writes for one fixture WAV, and the label the rules read in it.
fn hear(pool: &RecognizerPool, script: &Script, path: &str) -> (String, Intent) {
    let audio = wav::read_mono(&root().join(path))
        .and_then(|a| a.to_rate(ASR_RATE))
        .expect("fixture WAV reads");
    let (transcript, _) = pool
        .recognize_blocking(audio.samples)
        .expect("recognition runs");
    let intent = script.rules.classify(&transcript.text).primary();
    (transcript.text, intent)
}

fn intents_heard(config: AsrConfig, script: &Script) -> Vec<(String, Intent)> {
    let pool = RecognizerPool::start(config).expect("model loads (run models/fetch)");
    GARBLED
        .iter()
        .map(|(path, _)| hear(&pool, script, path))
        .collect()
}

#[test]
fn garbled_short_replies_are_read_as_the_short_answer_they_fit() {
    let script = Arc::new(Script::load(&root().join("script")).expect("script loads"));
    let model = root().join(AsrConfig::default_model_path());

    let with = intents_heard(AsrConfig::for_script(model.clone(), &script), &script);
    for ((path, expected), (text, heard)) in GARBLED.iter().zip(&with) {
        assert_eq!(heard, expected, "{path}: heard {text:?}");
    }

    let mut bare = AsrConfig::for_script(model, &script);
    bare.short_answers.clear();
    let without = intents_heard(bare, &script);
    let lost = without
        .iter()
        .filter(|(_, heard)| *heard == Intent::Unknown)
        .count();
    assert!(
        lost >= GARBLED.len() / 2,
        "without short answers these should mostly be unknown: {without:?}"
    );
}

/// A lone 哦 that whisper, led by the domain prompt, writes as 不许 (read as 不续, decline):
/// a short reply decides the call only if a reading without the prompt decides too.
#[test]
fn a_garbled_backchannel_never_decides_the_call() {
    let script = Arc::new(Script::load(&root().join("script")).expect("script loads"));
    let model = root().join(AsrConfig::default_model_path());
    let pool = RecognizerPool::start(AsrConfig::for_script(model, &script)).expect("model loads");
    let (text, intent) = hear(
        &pool,
        &script,
        "tests/fixtures/blind/wav/bl-hangup-midway-2.wav",
    );
    assert!(!intent.is_decisive(), "哦 was heard as {text:?} ({intent})");
}
