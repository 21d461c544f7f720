//! Hand-written callee phrasings that appear in no recorded fixture (`label|utterance` per
//! line in tests/fixtures/phrasings.txt): the rules must give each its label, so a rule
//! change that breaks a meaning elsewhere shows up here.

use std::path::PathBuf;

use renewal_bot::intent::IntentRules;
use renewal_bot::labels::Intent;

#[test]
fn every_phrasing_gets_its_label() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = IntentRules::load(&root.join("script/intents.toml")).expect("rules load");
    let text =
        std::fs::read_to_string(root.join("tests/fixtures/phrasings.txt")).expect("phrasings file");
    let mut wrong = Vec::new();
    let mut total = 0;
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (label, utterance) = line
            .split_once('|')
            .unwrap_or_else(|| panic!("line {}: want label|utterance", number + 1));
        let expected: Intent = label
            .parse()
            .unwrap_or_else(|e| panic!("line {}: {e}", number + 1));
        let got = rules.classify(utterance);
        total += 1;
        if got.primary() != expected {
            wrong.push(format!(
                "{utterance}: want {expected}, got {:?}",
                got.intents
            ));
        }
    }
    assert!(total >= 90, "only {total} phrasings");
    assert!(
        wrong.is_empty(),
        "{} of {total} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Recognition may read a garbled short reply as one of the script's short answers; an
/// answer that decides the call (不续了, 别打了) must beat the free transcript outright.
#[test]
fn decisive_short_answers_are_never_a_guess() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = std::sync::Arc::new(
        renewal_bot::dialog::Script::load(&root.join("script")).expect("script loads"),
    );
    let config = renewal_bot::asr::AsrConfig::for_script(root.join("models/none.bin"), &script);
    assert!(config.short_answers.len() >= 40, "too few short answers");
    for answer in &config.short_answers {
        let intent = script.rules.classify(&answer.text).primary();
        assert_ne!(intent, Intent::Unknown, "{}", answer.text);
        if intent.is_decisive() {
            assert_eq!(
                answer.margin, 0.0,
                "{} ({intent}) may be guessed",
                answer.text
            );
        } else {
            assert!(answer.margin > 0.0, "{}", answer.text);
        }
    }
}
