//! The eval report: the JSON of the `scenario.md` contract and a table for people.

use std::collections::BTreeMap;

use comfy_table::{Cell, Color, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::text;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cases: usize,
    pub outcome_correct: usize,
    pub turns: usize,
    pub intent_correct: usize,
    pub dnc_total: usize,
    pub dnc_correct: usize,
    /// Character error rate over turns fed as audio (0 when none were).
    pub cer: f64,
    pub reply_latency_ms: Latency,
    /// Measured wall time of each whisper decoding (the call clock uses a modeled time).
    pub recognition_ms: Latency,
    /// Mean recognizer confidence over turns fed as audio.
    pub mean_confidence: Option<f32>,
    /// Per intent label: how often it was given rightly, and how often it was found.
    pub intents: BTreeMap<String, IntentScore>,
    /// Expected label → label given → turns. A turn with several acceptable labels counts
    /// under the one given when that was acceptable, else under its first. Turns the call
    /// never reached count as `not_reached`.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Precision and recall of one intent label over a report's turns.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct IntentScore {
    /// Turns whose expected label is this one.
    pub support: usize,
    /// Turns given this label.
    pub given: usize,
    /// Turns given this label where it was acceptable.
    pub correct_given: usize,
    /// Turns expected to be this label that got it.
    pub found: usize,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// What a turn reports when the call never got to it.
pub const NOT_REACHED: &str = "not_reached";

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50: u64,
    pub p95: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub expected_outcome: String,
    pub outcome: Option<String>,
    pub expected_dnc: Option<bool>,
    pub dnc: bool,
    pub turns: Vec<TurnReport>,
    #[serde(skip)]
    pub bot_lines: Vec<String>,
    /// Wall time of each decoding in the call (ms).
    #[serde(skip)]
    pub recognition_ms: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TurnReport {
    pub audio: Option<String>,
    pub text: Option<String>,
    pub transcript: Option<String>,
    pub expected_intent: Vec<String>,
    pub intent: Option<String>,
    pub reached: bool,
    pub reply_latency_ms: Option<u64>,
    /// The recognizer's confidence (0–1) in the transcript the turn was decided on.
    pub confidence: Option<f32>,
    #[serde(skip)]
    pub audio_fed: bool,
}

impl Summary {
    /// The summary as one line, for `eval --quiet` and logs.
    pub fn one_line(&self) -> String {
        format!(
            "outcomes {}/{}, intents {}/{}, dnc {}/{}, cer {:.3}, latency p50 {} ms p95 {} ms",
            self.outcome_correct,
            self.cases,
            self.intent_correct,
            self.turns,
            self.dnc_correct,
            self.dnc_total,
            self.cer,
            self.reply_latency_ms.p50,
            self.reply_latency_ms.p95
        )
    }
}

impl TurnReport {
    /// The label given, or `not_reached`.
    pub fn given_label(&self) -> &str {
        match (&self.intent, self.reached) {
            (Some(intent), true) => intent,
            (None, true) => "unknown",
            (_, false) => NOT_REACHED,
        }
    }

    /// The expected label this turn counts under (see `Summary::confusion`).
    pub fn expected_label(&self) -> &str {
        let given = self.given_label();
        self.expected_intent
            .iter()
            .find(|e| e.as_str() == given)
            .or(self.expected_intent.first())
            .map_or("unknown", String::as_str)
    }

    pub fn intent_correct(&self) -> bool {
        self.reached
            && self
                .intent
                .as_ref()
                .is_some_and(|i| self.expected_intent.contains(i))
    }
}

impl CaseReport {
    pub fn outcome_correct(&self) -> bool {
        self.outcome.as_deref() == Some(self.expected_outcome.as_str())
    }

    pub fn dnc_correct(&self) -> Option<bool> {
        self.expected_dnc.map(|expected| expected == self.dnc)
    }
}

/// A column title short enough for the confusion matrix (ask_close_account → ask_clo_acc).
fn abbreviate(label: &str) -> String {
    label
        .split('_')
        .map(|part| part.chars().take(3).collect::<String>())
        .collect::<Vec<_>>()
        .join("_")
}

type Confusion = BTreeMap<String, BTreeMap<String, usize>>;

/// Per-label scores and the confusion matrix of `turns`.
fn intent_scores(turns: &[&TurnReport]) -> (BTreeMap<String, IntentScore>, Confusion) {
    let mut scores: BTreeMap<String, IntentScore> = BTreeMap::new();
    let mut confusion: Confusion = BTreeMap::new();
    for turn in turns {
        let expected = turn.expected_label().to_string();
        let given = turn.given_label().to_string();
        let correct = turn.intent_correct();
        *confusion
            .entry(expected.clone())
            .or_default()
            .entry(given.clone())
            .or_default() += 1;
        let row = scores.entry(expected).or_default();
        row.support += 1;
        if correct {
            row.found += 1;
        }
        if given != NOT_REACHED {
            let column = scores.entry(given).or_default();
            column.given += 1;
            if correct {
                column.correct_given += 1;
            }
        }
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    for score in scores.values_mut() {
        score.precision = ratio(score.correct_given, score.given);
        score.recall = ratio(score.found, score.support);
    }
    (scores, confusion)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    pub fn from_cases(cases: Vec<CaseReport>) -> Report {
        let turns: Vec<&TurnReport> = cases.iter().flat_map(|c| &c.turns).collect();
        let (errors, reference) = turns
            .iter()
            .filter(|t| t.audio_fed && t.reached)
            .filter_map(|t| {
                Some(text::char_errors(
                    t.text.as_deref()?,
                    t.transcript.as_deref().unwrap_or(""),
                ))
            })
            .fold((0usize, 0usize), |(e, r), (te, tr)| (e + te, r + tr));
        let mut latencies: Vec<u64> = turns.iter().filter_map(|t| t.reply_latency_ms).collect();
        latencies.sort_unstable();
        let mut decodings: Vec<u64> = cases
            .iter()
            .flat_map(|c| c.recognition_ms.iter().copied())
            .collect();
        decodings.sort_unstable();
        let confidences: Vec<f32> = turns
            .iter()
            .filter(|t| t.audio_fed)
            .filter_map(|t| t.confidence)
            .collect();
        let (intents, confusion) = intent_scores(&turns);
        let summary = Summary {
            cases: cases.len(),
            outcome_correct: cases.iter().filter(|c| c.outcome_correct()).count(),
            turns: turns.len(),
            intent_correct: turns.iter().filter(|t| t.intent_correct()).count(),
            dnc_total: cases.iter().filter(|c| c.expected_dnc.is_some()).count(),
            dnc_correct: cases
                .iter()
                .filter(|c| c.dnc_correct() == Some(true))
                .count(),
            cer: if reference == 0 {
                0.0
            } else {
                (errors as f64 / reference as f64 * 10_000.0).round() / 10_000.0
            },
            reply_latency_ms: Latency {
                p50: percentile(&latencies, 50.0),
                p95: percentile(&latencies, 95.0),
            },
            recognition_ms: Latency {
                p50: percentile(&decodings, 50.0),
                p95: percentile(&decodings, 95.0),
            },
            mean_confidence: (!confidences.is_empty())
                .then(|| confidences.iter().sum::<f32>() / confidences.len() as f32),
            intents,
            confusion,
        };
        Report { summary, cases }
    }

    /// The reports of several manifests as one (their cases in order).
    pub fn merge(reports: Vec<Report>) -> Report {
        Report::from_cases(reports.into_iter().flat_map(|r| r.cases).collect())
    }

    /// Per-intent precision and recall, then the confusion matrix (rows: expected).
    pub fn render_intent_scores(&self) -> String {
        let s = &self.summary;
        let mut scores = Table::new();
        scores.load_preset(UTF8_FULL_CONDENSED);
        scores.set_header(["intent", "expected", "given", "precision", "recall"]);
        let shown = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        for (label, score) in &s.intents {
            scores.add_row(vec![
                label.clone(),
                score.support.to_string(),
                score.given.to_string(),
                shown(score.precision),
                shown(score.recall),
            ]);
        }
        let mut given: Vec<&String> = s.confusion.values().flat_map(|row| row.keys()).collect();
        given.sort_unstable();
        given.dedup();
        let mut matrix = Table::new();
        matrix.load_preset(UTF8_FULL_CONDENSED);
        let mut header = vec!["expected \\ given".to_string()];
        header.extend(given.iter().map(|g| abbreviate(g)));
        matrix.set_header(header);
        for (expected, row) in &s.confusion {
            let mut cells = vec![expected.clone()];
            cells.extend(given.iter().map(|g| match row.get(*g) {
                Some(n) if *g == expected => format!("[{n}]"),
                Some(n) => n.to_string(),
                None => String::new(),
            }));
            matrix.add_row(cells);
        }
        format!("{scores}\nconfusion matrix (rows: expected, columns: given)\n{matrix}\n")
    }

    /// Per-case table plus the summary, for a terminal.
    pub fn render_table(&self) -> String {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header([
            "case",
            "expected",
            "got",
            "intents",
            "dnc",
            "wrong turns (expected → got: transcript)",
        ]);
        for case in &self.cases {
            let ok = case.outcome_correct();
            let right = case.turns.iter().filter(|t| t.intent_correct()).count();
            let wrong: Vec<String> = case
                .turns
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.intent_correct())
                .map(|(i, t)| {
                    format!(
                        "{}: {} → {}: {}",
                        i + 1,
                        t.expected_intent.join("|"),
                        t.intent
                            .as_deref()
                            .unwrap_or(if t.reached { "-" } else { "not reached" }),
                        t.transcript.as_deref().unwrap_or("")
                    )
                })
                .collect();
            let dnc = match case.expected_dnc {
                Some(expected) if expected != case.dnc => {
                    format!("{} (want {})", case.dnc, expected)
                }
                _ => case.dnc.to_string(),
            };
            table.add_row(vec![
                Cell::new(&case.name),
                Cell::new(&case.expected_outcome),
                Cell::new(case.outcome.as_deref().unwrap_or("(none)")).fg(if ok {
                    Color::Green
                } else {
                    Color::Red
                }),
                Cell::new(format!("{right}/{}", case.turns.len())),
                Cell::new(dnc),
                Cell::new(wrong.join("\n")),
            ]);
        }
        let s = &self.summary;
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        format!(
            "{table}\n\
             outcome accuracy  {:.3}  ({}/{} cases)\n\
             intent accuracy   {:.3}  ({}/{} turns)\n\
             do-not-call       {}/{} right\n\
             CER               {:.3}\n\
             reply latency     p50 {} ms, p95 {} ms\n\
             recognition       p50 {} ms, p95 {} ms (wall time; the call clock is modeled)\n",
            ratio(s.outcome_correct, s.cases),
            s.outcome_correct,
            s.cases,
            ratio(s.intent_correct, s.turns),
            s.intent_correct,
            s.turns,
            s.dnc_correct,
            s.dnc_total,
            s.cer,
            s.reply_latency_ms.p50,
            s.reply_latency_ms.p95,
            s.recognition_ms.p50,
            s.recognition_ms.p95,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000];
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 95.0), 1000);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 95.0), 7);
    }

    fn turn(intent: Option<&str>, expected: &[&str], reached: bool) -> TurnReport {
        TurnReport {
            audio: Some("a.wav".into()),
            text: Some("不续了".into()),
            transcript: Some("不需了".into()),
            expected_intent: expected.iter().map(|s| s.to_string()).collect(),
            intent: intent.map(str::to_string),
            reached,
            reply_latency_ms: Some(400),
            confidence: Some(0.5),
            audio_fed: true,
        }
    }

    /// A declined call, rightly so, with do-not-call, made of `turns`.
    fn declined_case(turns: Vec<TurnReport>, recognition_ms: Vec<u64>) -> CaseReport {
        CaseReport {
            name: "c".into(),
            expected_outcome: "declined".into(),
            outcome: Some("declined".into()),
            expected_dnc: Some(true),
            dnc: true,
            turns,
            bot_lines: vec![],
            recognition_ms,
        }
    }

    #[test]
    fn precision_recall_and_confusion_count_each_turn_once() {
        let case = declined_case(
            vec![
                turn(Some("decline"), &["decline"], true),
                turn(Some("decline"), &["self_service"], true),
                turn(Some("do_not_call"), &["decline", "do_not_call"], true),
                turn(None, &["decline"], false),
            ],
            vec![300, 500],
        );
        let report = Report::from_cases(vec![case]);
        let s = &report.summary;
        let decline = s.intents["decline"];
        // Given twice, right once; expected three times (the do_not_call turn counts as
        // do_not_call, which was acceptable), found once.
        assert_eq!((decline.given, decline.correct_given), (2, 1));
        assert_eq!((decline.support, decline.found), (2, 1));
        assert_eq!(decline.precision, Some(0.5));
        assert_eq!(s.intents["do_not_call"].precision, Some(1.0));
        assert_eq!(s.intents["self_service"].recall, Some(0.0));
        assert_eq!(s.confusion["self_service"]["decline"], 1);
        assert_eq!(s.confusion["decline"][NOT_REACHED], 1);
        assert_eq!(s.recognition_ms.p50, 300);
        let table = report.render_intent_scores();
        assert!(
            table.contains("[1]") && table.contains("not_rea"),
            "{table}"
        );
    }

    #[test]
    fn summary_counts_and_json_shape_follow_the_contract() {
        let case = declined_case(
            vec![
                turn(Some("decline"), &["decline"], true),
                turn(Some("do_not_call"), &["decline", "do_not_call"], true),
                turn(Some("decline"), &["decline"], false),
            ],
            vec![],
        );
        let report = Report::from_cases(vec![case]);
        let s = &report.summary;
        assert_eq!(
            (
                s.cases,
                s.outcome_correct,
                s.turns,
                s.intent_correct,
                s.dnc_total,
                s.dnc_correct
            ),
            (1, 1, 3, 2, 1, 1)
        );
        assert!((s.cer - 1.0 / 3.0).abs() < 1e-3, "{}", s.cer);
        let json: serde_json::Value = serde_json::to_value(&report).expect("serializes");
        for key in [
            "cases",
            "outcome_correct",
            "turns",
            "intent_correct",
            "dnc_total",
            "dnc_correct",
            "cer",
        ] {
            assert!(json["summary"][key].is_number(), "{key}");
        }
        assert!(json["summary"]["reply_latency_ms"]["p95"].is_number());
        let t = &json["cases"][0]["turns"][0];
        for key in [
            "audio",
            "text",
            "transcript",
            "expected_intent",
            "intent",
            "reached",
            "reply_latency_ms",
            "confidence",
        ] {
            assert!(!t[key].is_null(), "{key}");
        }
        assert!(json["summary"]["intents"]["decline"]["precision"].is_number());
        assert!(json["summary"]["confusion"]["decline"]["decline"].is_number());
        assert!(t.get("audio_fed").is_none());
        assert!(report.render_table().contains("outcome accuracy  1.000"));
    }
}
