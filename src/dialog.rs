//! The renewal script as data: 李明's lines (`script/lines.toml`), the state machine
//! (`script/dialog.toml`) and the intent rules (`script/intents.toml`), loaded together and
//! checked so that a mistake in a data file is reported with its file and line.

use crate::intent::{IntentRules, RulesError};
use crate::labels::{Intent, Outcome};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Rules(#[from] RulesError),
}

/// One line 李明 can say.
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    pub id: String,
    pub text: String,
}

/// What `ask_repeat` replays in a state.
#[derive(Debug, Clone, PartialEq)]
pub enum Repeat {
    Line(String),
    /// The last line the bot said.
    Last,
}

/// What the bot does on one intent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub say: Vec<String>,
    pub say_if_no_resistance: Vec<String>,
    pub next: Next,
    pub pending: Option<Outcome>,
    /// The pending outcome is only what 李明 offered (短信代替电话): silence or a yes lets
    /// it stand, but a callee who hangs up never chose it.
    pub pending_is_offer: bool,
    pub do_not_call_now: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Next {
    /// Stay where the call is.
    #[default]
    Stay,
    State(usize),
    End {
        outcome: Outcome,
        prefer_pending: bool,
    },
}

#[derive(Debug, Clone)]
pub struct State {
    pub name: String,
    pub repeat: Repeat,
    pub reprompt: String,
    /// What a brief reply whose words are not understood is taken to mean here (the
    /// commonest brief answers to the state's question); `None`: it is unclear.
    pub brief_unclear_means: Option<Intent>,
    pub on: HashMap<Intent, Transition>,
}

/// The loaded, validated script.
#[derive(Debug)]
pub struct Script {
    pub lines: HashMap<String, Line>,
    pub opening: Vec<String>,
    pub start: usize,
    pub states: Vec<State>,
    /// Transitions valid in every state, after the state's own.
    pub any: HashMap<Intent, Transition>,
    /// The closing line per outcome; `None` when the reply itself closes.
    pub closing: HashMap<Outcome, Option<String>>,
    pub resistance: HashSet<Intent>,
    pub promotional: HashSet<String>,
    pub rules: IntentRules,
}

#[derive(Deserialize)]
struct LinesFile {
    line: Vec<Line>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DialogFile {
    start: Sp,
    opening: Vec<Sp>,
    resistance: Vec<Sp>,
    promotional: Vec<Sp>,
    closing: HashMap<String, Sp>,
    state: Vec<StateEntry>,
    any: Vec<TransitionEntry>,
}

type Sp = toml::Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateEntry {
    name: Sp,
    repeat: Sp,
    reprompt: Sp,
    #[serde(default)]
    brief_unclear_means: Option<Sp>,
    #[serde(default)]
    on: Vec<TransitionEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionEntry {
    intent: Sp,
    #[serde(default)]
    say: Vec<Sp>,
    #[serde(default)]
    say_if_no_resistance: Vec<Sp>,
    to: Option<Sp>,
    end: Option<Sp>,
    #[serde(default)]
    end_with_pending: bool,
    pending: Option<Sp>,
    offered: Option<Sp>,
    #[serde(default)]
    do_not_call_now: bool,
}

/// Turns spans into "file:line" errors for one source file.
struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Checker<'_> {
    fn error(&self, at: &Sp, message: impl Into<String>) -> ScriptError {
        let line = self.source[..at.span().start.min(self.source.len())]
            .matches('\n')
            .count()
            + 1;
        ScriptError::Invalid {
            path: self.path.into(),
            line,
            message: message.into(),
        }
    }
}

fn read(path: &Path) -> Result<String, ScriptError> {
    std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
        path: path.into(),
        source,
    })
}

impl Script {
    /// Loads `lines.toml`, `dialog.toml` and `intents.toml` from `dir`.
    pub fn load(dir: &Path) -> Result<Script, ScriptError> {
        let lines_path = dir.join("lines.toml");
        let lines_file: LinesFile =
            toml::from_str(&read(&lines_path)?).map_err(|source| ScriptError::Parse {
                path: lines_path.clone(),
                source,
            })?;
        let mut lines = HashMap::new();
        for line in lines_file.line {
            if let Some(previous) = lines.insert(line.id.clone(), line) {
                return Err(ScriptError::Invalid {
                    path: lines_path,
                    line: 0,
                    message: format!("line id `{}` is defined twice", previous.id),
                });
            }
        }
        let rules = IntentRules::load(&dir.join("intents.toml"))?;
        let dialog_path = dir.join("dialog.toml");
        let source = read(&dialog_path)?;
        Self::from_parts(lines, rules, &source, &dialog_path)
    }

    fn from_parts(
        lines: HashMap<String, Line>,
        rules: IntentRules,
        source: &str,
        path: &Path,
    ) -> Result<Script, ScriptError> {
        let file: DialogFile = toml::from_str(source).map_err(|source| ScriptError::Parse {
            path: path.into(),
            source,
        })?;
        let check = Checker { path, source };
        let line_id = |sp: &Sp| -> Result<String, ScriptError> {
            if lines.contains_key(sp.get_ref()) {
                Ok(sp.get_ref().clone())
            } else {
                Err(check.error(
                    sp,
                    format!("unknown line `{}` (not in lines.toml)", sp.get_ref()),
                ))
            }
        };
        let line_ids = |list: &[Sp]| list.iter().map(line_id).collect::<Result<Vec<_>, _>>();
        let intent = |sp: &Sp| {
            sp.get_ref()
                .parse::<Intent>()
                .map_err(|e| check.error(sp, e.to_string()))
        };
        let outcome = |sp: &Sp| {
            sp.get_ref()
                .parse::<Outcome>()
                .map_err(|e| check.error(sp, e.to_string()))
        };

        let state_names: Vec<&str> = file
            .state
            .iter()
            .map(|s| s.name.get_ref().as_str())
            .collect();
        let state_index = |sp: &Sp| {
            state_names
                .iter()
                .position(|n| n == sp.get_ref())
                .ok_or_else(|| check.error(sp, format!("unknown state `{}`", sp.get_ref())))
        };
        let transition = |entry: &TransitionEntry| -> Result<(Intent, Transition), ScriptError> {
            let label = intent(&entry.intent)?;
            let next = match (&entry.to, &entry.end) {
                (Some(_), Some(end)) => {
                    return Err(check.error(end, "a transition has `to` or `end`, not both"));
                }
                (Some(to), None) => Next::State(state_index(to)?),
                (None, Some(end)) => Next::End {
                    outcome: outcome(end)?,
                    prefer_pending: entry.end_with_pending,
                },
                (None, None) => Next::Stay,
            };
            if let (Some(_), Some(offered)) = (&entry.pending, &entry.offered) {
                return Err(
                    check.error(offered, "a transition has `pending` or `offered`, not both")
                );
            }
            let pending_is_offer = entry.offered.is_some();
            let pending = entry
                .pending
                .as_ref()
                .or(entry.offered.as_ref())
                .map(outcome)
                .transpose()?;
            Ok((
                label,
                Transition {
                    say: line_ids(&entry.say)?,
                    say_if_no_resistance: line_ids(&entry.say_if_no_resistance)?,
                    next,
                    pending,
                    pending_is_offer,
                    do_not_call_now: entry.do_not_call_now,
                },
            ))
        };
        let transitions =
            |entries: &[TransitionEntry]| -> Result<HashMap<Intent, Transition>, ScriptError> {
                let mut map = HashMap::new();
                for entry in entries {
                    let (label, t) = transition(entry)?;
                    if map.insert(label, t).is_some() {
                        return Err(check
                            .error(&entry.intent, format!("`{label}` has two transitions here")));
                    }
                }
                Ok(map)
            };

        let mut states = Vec::new();
        for entry in &file.state {
            if states
                .iter()
                .any(|s: &State| s.name == *entry.name.get_ref())
            {
                return Err(check.error(
                    &entry.name,
                    format!("state `{}` is defined twice", entry.name.get_ref()),
                ));
            }
            let repeat = match entry.repeat.get_ref().as_str() {
                "@last" => Repeat::Last,
                _ => Repeat::Line(line_id(&entry.repeat)?),
            };
            let on = transitions(&entry.on)?;
            let brief_unclear_means = match &entry.brief_unclear_means {
                Some(sp) => {
                    let meant = intent(sp)?;
                    if !on.contains_key(&meant) {
                        return Err(check.error(
                            sp,
                            format!(
                                "`{meant}` has no transition in state `{}`",
                                entry.name.get_ref()
                            ),
                        ));
                    }
                    Some(meant)
                }
                None => None,
            };
            states.push(State {
                name: entry.name.get_ref().clone(),
                repeat,
                reprompt: line_id(&entry.reprompt)?,
                brief_unclear_means,
                on,
            });
        }
        let start = state_index(&file.start)?;
        let any = transitions(&file.any)?;

        let mut closing = HashMap::new();
        for (label, line) in &file.closing {
            let outcome = label
                .parse::<Outcome>()
                .map_err(|e| check.error(line, e.to_string()))?;
            let line = if line.get_ref().is_empty() {
                None
            } else {
                Some(line_id(line)?)
            };
            closing.insert(outcome, line);
        }
        if let Some(missing) = Outcome::ALL.iter().find(|o| !closing.contains_key(o)) {
            return Err(check.error(
                &file.start,
                format!("[closing] has no entry for outcome `{missing}`"),
            ));
        }

        // Every state must be reachable from the start, or it is dead script.
        let mut reached = vec![false; states.len()];
        let mut frontier = vec![start];
        while let Some(at) = frontier.pop() {
            if std::mem::replace(&mut reached[at], true) {
                continue;
            }
            for t in states[at].on.values().chain(any.values()) {
                if let Next::State(next) = t.next {
                    frontier.push(next);
                }
            }
        }
        if let Some(dead) = reached.iter().position(|r| !r) {
            return Err(check.error(
                &file.state[dead].name,
                format!("state `{}` is unreachable", states[dead].name),
            ));
        }

        let resistance = file
            .resistance
            .iter()
            .map(intent)
            .collect::<Result<_, _>>()?;
        let promotional = line_ids(&file.promotional)?.into_iter().collect();
        Ok(Script {
            opening: line_ids(&file.opening)?,
            lines,
            start,
            states,
            any,
            closing,
            resistance,
            promotional,
            rules,
        })
    }

    /// The transition for `intent` in `state`, if any.
    pub fn transition(&self, state: usize, intent: Intent) -> Option<&Transition> {
        self.states[state]
            .on
            .get(&intent)
            .or_else(|| self.any.get(&intent))
    }

    /// Every line id the script can say (for checking the clip library).
    pub fn spoken_lines(&self) -> HashSet<&str> {
        let mut ids: HashSet<&str> = self.opening.iter().map(String::as_str).collect();
        for state in &self.states {
            ids.insert(&state.reprompt);
            if let Repeat::Line(line) = &state.repeat {
                ids.insert(line);
            }
            for t in state.on.values() {
                ids.extend(
                    t.say
                        .iter()
                        .chain(&t.say_if_no_resistance)
                        .map(String::as_str),
                );
            }
        }
        for t in self.any.values() {
            ids.extend(
                t.say
                    .iter()
                    .chain(&t.say_if_no_resistance)
                    .map(String::as_str),
            );
        }
        ids.extend(self.closing.values().flatten().map(String::as_str));
        ids
    }

    /// The script shipped in the repository (`script/` beside Cargo.toml).
    pub fn default_dir() -> PathBuf {
        PathBuf::from("script")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("script")
    }

    fn load_with_dialog(dialog: &str) -> Result<Script, ScriptError> {
        let dir = script_dir();
        let lines: LinesFile =
            toml::from_str(&std::fs::read_to_string(dir.join("lines.toml")).unwrap()).unwrap();
        let lines = lines.line.into_iter().map(|l| (l.id.clone(), l)).collect();
        let rules = IntentRules::load(&dir.join("intents.toml")).unwrap();
        Script::from_parts(lines, rules, dialog, Path::new("dialog.toml"))
    }

    #[test]
    fn shipped_script_loads() {
        let script = Script::load(&script_dir()).expect("script/ loads");
        assert_eq!(script.states[script.start].name, "identity");
        assert!(script.spoken_lines().contains("closing_done"));
    }

    #[test]
    fn mistakes_are_reported_with_file_and_line() {
        let good = std::fs::read_to_string(script_dir().join("dialog.toml")).unwrap();
        let cases = [
            (
                good.replacen("say = [\"notice\"]", "say = [\"noticee\"]", 1),
                "unknown line `noticee`",
            ),
            (
                good.replacen("intent = \"busy\"", "intent = \"in_a_hurry\"", 1),
                "unknown Intent label `in_a_hurry`",
            ),
            (
                good.replacen("end = \"declined\"", "end = \"refused\"", 1),
                "unknown Outcome label `refused`",
            ),
            (
                good.replacen("to = \"follow_up\"", "to = \"nowhere\"", 1),
                "unknown state `nowhere`",
            ),
            (
                good.replacen(
                    "brief_unclear_means = \"confirm_identity\"",
                    "brief_unclear_means = \"decline\"",
                    1,
                ),
                "`decline` has no transition in state `identity`",
            ),
        ];
        for (dialog, expected) in cases {
            let err = load_with_dialog(&dialog).unwrap_err().to_string();
            assert!(
                err.starts_with("dialog.toml:") && err.contains(expected),
                "{err}"
            );
            let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
            assert!(
                dialog
                    .lines()
                    .nth(line - 1)
                    .unwrap()
                    .contains(expected.split('`').nth(1).unwrap()),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unreachable_state_is_rejected() {
        let good = std::fs::read_to_string(script_dir().join("dialog.toml")).unwrap();
        let dialog = format!(
            "{good}\n[[state]]\nname = \"limbo\"\nrepeat = \"@last\"\nreprompt = \"question_short\"\n"
        );
        let err = load_with_dialog(&dialog).unwrap_err().to_string();
        assert!(err.contains("state `limbo` is unreachable"), "{err}");
    }
}
