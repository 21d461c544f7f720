//! The eval report: the JSON of the `scenario.md` contract and a table for people.

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
}

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
        };
        Report { summary, cases }
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
             reply latency     p50 {} ms, p95 {} ms\n",
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
            audio_fed: true,
        }
    }

    #[test]
    fn summary_counts_and_json_shape_follow_the_contract() {
        let case = CaseReport {
            name: "c".into(),
            expected_outcome: "declined".into(),
            outcome: Some("declined".into()),
            expected_dnc: Some(true),
            dnc: true,
            turns: vec![
                turn(Some("decline"), &["decline"], true),
                turn(Some("do_not_call"), &["decline", "do_not_call"], true),
                turn(Some("decline"), &["decline"], false),
            ],
            bot_lines: vec![],
        };
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
        ] {
            assert!(!t[key].is_null(), "{key}");
        }
        assert!(t.get("audio_fed").is_none());
        assert!(report.render_table().contains("outcome accuracy  1.000"));
    }
}
