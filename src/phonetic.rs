//! Phrases heard with a syllable or two misheard: the syllable pairs this recognizer is
//! measured to confuse (`script/confusions.toml`, written by `tools/asr/confusions.py` from
//! its own slips on the recorded fixtures) let a rule phrase match a transcript whose
//! syllables differ from it only by such pairs (短信 heard as 段信, 续费 as 需费).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::text;

/// Phrases shorter than this (in syllables) must be heard exactly: a two-syllable phrase
/// with one syllable swapped is too often another word.
pub const MIN_PHRASE_SYLLABLES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConfusionsError {
    #[error("cannot read the syllable confusions {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source} (regenerate it with tools/asr/confusions.py)")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

#[derive(Deserialize)]
struct ConfusionsFile {
    #[serde(default)]
    pair: Vec<PairEntry>,
}

#[derive(Deserialize)]
struct PairEntry {
    a: String,
    b: String,
}

/// Syllable pairs (toneless, after `text::fuzzy_syllable`'s merges) the recognizer confuses.
#[derive(Debug, Clone, Default)]
pub struct Confusions {
    pairs: HashSet<(String, String)>,
}

impl Confusions {
    /// Loads `path`; a missing file is no confusions at all.
    pub fn load(path: &Path) -> Result<Confusions, ConfusionsError> {
        match std::fs::read_to_string(path) {
            Ok(source) => Confusions::parse(&source).map_err(|source| ConfusionsError::Parse {
                path: path.into(),
                source,
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Confusions::default()),
            Err(source) => Err(ConfusionsError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    pub fn parse(source: &str) -> Result<Confusions, toml::de::Error> {
        let file: ConfusionsFile = toml::from_str(source)?;
        let mut pairs = HashSet::new();
        for PairEntry { a, b } in file.pair {
            pairs.insert((b.clone(), a.clone()));
            pairs.insert((a, b));
        }
        Ok(Confusions { pairs })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn confusable(&self, heard: &str, meant: &str) -> bool {
        self.pairs.contains(&(heard.to_string(), meant.to_string()))
    }

    /// Whether `heard` (a transcript's syllables; `None` for what is not a Chinese
    /// character) holds `phrase` with one to `most_slips(phrase)` syllables swapped for a
    /// confusable one and the rest the same.
    pub fn holds(&self, heard: &[Option<String>], phrase: &[String]) -> bool {
        if self.pairs.is_empty()
            || phrase.len() < MIN_PHRASE_SYLLABLES
            || heard.len() < phrase.len()
        {
            return false;
        }
        let allowed = most_slips(phrase.len());
        heard.windows(phrase.len()).any(|window| {
            let mut slips = 0;
            for (got, want) in window.iter().zip(phrase) {
                match got {
                    Some(got) if got == want => {}
                    Some(got) if self.confusable(got, want) => slips += 1,
                    _ => return false,
                }
                if slips > allowed {
                    return false;
                }
            }
            slips > 0
        })
    }
}

/// One misheard syllable in a short phrase, two from five syllables on.
fn most_slips(syllables: usize) -> usize {
    if syllables >= 5 { 2 } else { 1 }
}

/// The fuzzy syllables of `text`, `None` where a character has none.
pub fn syllables(text: &str) -> Vec<Option<String>> {
    text.chars().map(text::fuzzy_syllable).collect()
}

/// The syllables of a phrase, if every character of it has one.
pub fn phrase_syllables(phrase: &str) -> Option<Vec<String>> {
    phrase.chars().map(text::fuzzy_syllable).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confusions() -> Confusions {
        Confusions::parse(
            "[[pair]]\na = \"duan\"\nb = \"dua\"\n[[pair]]\na = \"xu\"\nb = \"xi\"\n[[pair]]\na = \"fei\"\nb = \"hui\"\n",
        )
        .expect("parses")
    }

    fn phrase(text: &str) -> Vec<String> {
        phrase_syllables(text).expect("all Chinese")
    }

    #[test]
    fn a_measured_slip_still_holds_the_phrase() {
        let c = confusions();
        // 续费 → 需费 is the same syllables; 续费的 → 西费的 is one measured slip.
        assert!(c.holds(&syllables("那我就西费的吧"), &phrase("续费的")));
        // Two slips in a three-syllable phrase are too many; five syllables allow two.
        assert!(!c.holds(&syllables("西会的"), &phrase("续费的")));
        assert!(c.holds(&syllables("我西会一下吧"), &phrase("我续费一下")));
        // Unmeasured swaps never count, and an exact phrase is the rules' own business.
        assert!(!c.holds(&syllables("那我就去费的吧"), &phrase("续费的")));
        assert!(!c.holds(&syllables("续费的"), &phrase("续费的")));
    }

    #[test]
    fn short_phrases_and_an_empty_table_never_match() {
        assert!(!confusions().holds(&syllables("西费"), &phrase("续费")));
        assert!(!Confusions::default().holds(&syllables("西费的"), &phrase("续费的")));
    }

    #[test]
    fn a_missing_file_is_no_confusions_and_a_broken_one_says_what_to_do() {
        let missing = Confusions::load(Path::new("/nonexistent/confusions.toml")).expect("ok");
        assert!(missing.is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("confusions.toml");
        std::fs::write(&path, "[[pair]]\na = 1\n").expect("write");
        let err = Confusions::load(&path).unwrap_err().to_string();
        assert!(err.contains("tools/asr/confusions.py"), "{err}");
    }
}
