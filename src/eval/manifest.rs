//! The eval manifest of `shared/scenario.md`: recorded call cases, read and checked before
//! anything runs (unknown labels, missing files and duplicate names name the case and line).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::labels::{Intent, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What the callee does after the last turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// Says nothing more until the bot hangs up.
    Silent,
    /// Hangs up right after the last turn.
    Hangup,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub outcome: Outcome,
    pub dnc: Option<bool>,
    pub end: CallEnd,
    pub turns: Vec<Turn>,
}

#[derive(Debug, Clone)]
pub struct Turn {
    /// As written in the manifest (for the report).
    pub audio_name: Option<String>,
    /// Resolved against the manifest's folder.
    pub audio: Option<PathBuf>,
    pub text: Option<String>,
    /// Acceptable labels; any one counts as right.
    pub intents: Vec<Intent>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    case: Vec<CaseEntry>,
}

#[derive(Deserialize)]
struct CaseEntry {
    name: Spanned<String>,
    outcome: Spanned<String>,
    dnc: Option<bool>,
    end: Option<Spanned<String>>,
    #[serde(default)]
    turn: Vec<TurnEntry>,
}

#[derive(Deserialize)]
struct TurnEntry {
    audio: Option<Spanned<String>>,
    text: Option<String>,
    intent: Spanned<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        Manifest::parse(&source, path)
    }

    /// Parses manifest text; audio paths are resolved against `path`'s folder and must exist.
    pub fn parse(source: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let file: File = toml::from_str(source).map_err(|e| ManifestError::Syntax {
            path: path.into(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |span: std::ops::Range<usize>, message: String| ManifestError::Invalid {
            path: path.into(),
            line: source[..span.start.min(source.len())].matches('\n').count() + 1,
            message,
        };
        if file.case.is_empty() {
            return Err(ManifestError::Syntax {
                path: path.into(),
                message: "no [[case]] tables: a manifest lists recorded calls as [[case]] with [[case.turn]]".into(),
            });
        }
        let mut names = HashSet::new();
        let mut cases = Vec::with_capacity(file.case.len());
        for entry in file.case {
            let name = entry.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(invalid(
                    entry.name.span(),
                    "a case needs a non-empty name".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(
                    entry.name.span(),
                    format!("case name `{name}` is used twice; names must be unique"),
                ));
            }
            let outcome: Outcome = entry
                .outcome
                .get_ref()
                .parse()
                .map_err(|e| invalid(entry.outcome.span(), format!("case `{name}`: {e}")))?;
            let end = match entry.end.as_ref().map(|e| e.get_ref().as_str()) {
                None | Some("silent") => CallEnd::Silent,
                Some("hangup") => CallEnd::Hangup,
                Some(other) => {
                    let span = entry.end.as_ref().map_or(0..0, |e| e.span());
                    return Err(invalid(
                        span,
                        format!(
                            "case `{name}`: end = \"{other}\" is not one of \"silent\", \"hangup\""
                        ),
                    ));
                }
            };
            let mut turns = Vec::with_capacity(entry.turn.len());
            for (index, turn) in entry.turn.into_iter().enumerate() {
                let labels = match turn.intent.get_ref() {
                    OneOrMany::One(label) => vec![label.clone()],
                    OneOrMany::Many(labels) => labels.clone(),
                };
                if labels.is_empty() {
                    return Err(invalid(
                        turn.intent.span(),
                        format!("case `{name}` turn {}: intent list is empty", index + 1),
                    ));
                }
                let intents = labels
                    .iter()
                    .map(|l| l.parse::<Intent>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        invalid(
                            turn.intent.span(),
                            format!("case `{name}` turn {}: {e}", index + 1),
                        )
                    })?;
                let audio = match &turn.audio {
                    Some(audio) => {
                        let resolved = base.join(audio.get_ref());
                        if !resolved.is_file() {
                            return Err(invalid(
                                audio.span(),
                                format!(
                                    "case `{name}` turn {}: audio file {} does not exist",
                                    index + 1,
                                    resolved.display()
                                ),
                            ));
                        }
                        Some(resolved)
                    }
                    None => None,
                };
                if audio.is_none() && turn.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
                    return Err(invalid(
                        turn.intent.span(),
                        format!(
                            "case `{name}` turn {}: a turn needs `audio` or `text`",
                            index + 1
                        ),
                    ));
                }
                turns.push(Turn {
                    audio_name: turn.audio.map(|a| a.into_inner()),
                    audio,
                    text: turn.text,
                    intents,
                });
            }
            cases.push(Case {
                name,
                outcome,
                dnc: entry.dnc,
                end,
                turns,
            });
        }
        Ok(Manifest {
            path: path.into(),
            cases,
        })
    }

    pub fn turn_count(&self) -> usize {
        self.cases.iter().map(|c| c.turns.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(source, Path::new("/nonexistent/calls.toml"))
    }

    #[test]
    fn text_turns_with_one_or_many_intents() {
        let m = parse(
            r#"
[[case]]
name = "a"
outcome = "written_only"
dnc = true
[[case.turn]]
text = "是我"
intent = "confirm_identity"
[[case.turn]]
text = "发短信就行，别打电话"
intent = ["written_only", "do_not_call"]

[[case]]
name = "b"
outcome = "callee_hangup"
end = "hangup"
[[case.turn]]
text = "嗯"
intent = "acknowledge"
"#,
        )
        .expect("valid");
        assert_eq!(m.cases.len(), 2);
        assert_eq!(m.turn_count(), 3);
        assert_eq!(
            m.cases[0].turns[1].intents,
            vec![Intent::WrittenOnly, Intent::DoNotCall]
        );
        assert_eq!(m.cases[0].end, CallEnd::Silent);
        assert_eq!(m.cases[1].end, CallEnd::Hangup);
        assert_eq!(m.cases[1].dnc, None);
    }

    #[test]
    fn unknown_labels_name_the_case_and_line() {
        let err = parse("[[case]]\nname = \"x\"\noutcome = \"maybe\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":3:") && err.contains("maybe") && err.contains("self_service"),
            "{err}"
        );
        let err = parse("[[case]]\nname = \"x\"\noutcome = \"hostile\"\n[[case.turn]]\ntext = \"嗯\"\nintent = \"grumble\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":6:") && err.contains("grumble") && err.contains("turn 1"),
            "{err}"
        );
    }

    #[test]
    fn missing_audio_file_is_named() {
        let err = parse("[[case]]\nname = \"x\"\noutcome = \"hostile\"\n[[case.turn]]\naudio = \"wav/none.wav\"\nintent = \"busy\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wav/none.wav") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_bad_end_and_empty_manifest_are_rejected() {
        let dup = "[[case]]\nname = \"x\"\noutcome = \"hostile\"\n[[case]]\nname = \"x\"\noutcome = \"hostile\"\n";
        assert!(parse(dup).unwrap_err().to_string().contains("used twice"));
        let end = "[[case]]\nname = \"x\"\noutcome = \"hostile\"\nend = \"abrupt\"\n";
        assert!(parse(end).unwrap_err().to_string().contains("abrupt"));
        assert!(parse("").unwrap_err().to_string().contains("no [[case]]"));
        assert!(
            parse("[[case]\n")
                .unwrap_err()
                .to_string()
                .contains("not a valid manifest")
        );
        let no_input =
            "[[case]]\nname = \"x\"\noutcome = \"hostile\"\n[[case.turn]]\nintent = \"busy\"\n";
        assert!(
            parse(no_input)
                .unwrap_err()
                .to_string()
                .contains("needs `audio` or `text`")
        );
    }
}
