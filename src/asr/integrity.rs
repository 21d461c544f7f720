//! Is the loaded whisper model the file it should be, and can it still hear? A model whose
//! tensor data was damaged loads without complaint and then hears nothing or garbage, which
//! would silently miss every "don't call me again". So a model is checked at load: against
//! its pinned checksum when it is one of the files `models/fetch` makes, and in every case by
//! transcribing one of 李明's own clips and comparing with its known text.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{AsrError, RecognizerPool};
use crate::audio::{resample, wav};
use crate::text;

/// 李明's `identity_check` clip (8 kHz μ-law, in git) and the words it says.
const SELF_TEST_WAV: &[u8] = include_bytes!("../../audio/identity_check.wav");
pub const SELF_TEST_TEXT: &str = "您好，是泰山公司的张强先生吗？";

/// The most characters in a hundred the self-test transcript may get wrong. Whisper base
/// gets about 14 of 100 of 李明's clips wrong; a damaged model gets nearly all of them.
pub const SELF_TEST_MAX_CER: f64 = 0.5;

/// What the checksum check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// The file matches a pin for its name.
    Pinned(String),
    /// No pin exists for a file of this name (a model the user brought): only the self-test
    /// vouches for it.
    Unknown,
}

/// Pins for `file_name` from `checksums.txt` and the record `models/fetch` keeps for a q8_0
/// file made from the official model: `(algorithm, hex digest)`.
fn pins_for(models_dir: &Path, file_name: &str) -> Vec<(String, String)> {
    let mut sources = vec![models_dir.join("checksums.txt")];
    sources.push(models_dir.join("cache/ggml-base-q8_0.official.sha256"));
    let mut pins = Vec::new();
    for source in sources {
        let Ok(text) = std::fs::read_to_string(&source) else {
            continue;
        };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [algorithm, digest, name] = parts[..] else {
                continue;
            };
            if name.split(':').next() == Some(file_name) {
                pins.push((algorithm.to_string(), digest.to_ascii_lowercase()));
            }
        }
    }
    pins
}

fn digest_of(path: &Path, algorithm: &str) -> std::io::Result<Option<String>> {
    let mut file = std::fs::File::open(path)?;
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        match algorithm {
            "sha256" => sha256.update(&buffer[..n]),
            "sha1" => sha1.update(&buffer[..n]),
            _ => return Ok(None),
        }
    }
    Ok(Some(match algorithm {
        "sha256" => hex::encode(sha256.finalize()),
        _ => hex::encode(sha1.finalize()),
    }))
}

/// Checks `model` against the pins for its file name in `checksums.txt` beside it.
pub fn verify_checksum(model: &Path) -> Result<Checksum, AsrError> {
    let file_name = model.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let models_dir = model.parent().unwrap_or(Path::new("."));
    let pins = pins_for(models_dir, file_name);
    if pins.is_empty() {
        return Ok(Checksum::Unknown);
    }
    let corrupt = |reason: String| AsrError::ModelCorrupt {
        path: model.to_path_buf(),
        reason,
    };
    for (algorithm, expected) in &pins {
        let got =
            digest_of(model, algorithm).map_err(|e| corrupt(format!("cannot read it: {e}")))?;
        if got.as_deref() == Some(expected.as_str()) {
            return Ok(Checksum::Pinned(format!("{algorithm} {expected}")));
        }
    }
    Err(corrupt(format!(
        "its checksum matches none of the {} pinned for {file_name} in models/checksums.txt",
        pins.len()
    )))
}

/// The self-test clip as the recognizer takes it (16 kHz).
fn self_test_audio() -> Result<Vec<f32>, String> {
    let clip = wav::parse_mono(SELF_TEST_WAV)?;
    resample::resample(&clip.samples, clip.rate, 16_000).map_err(|e| e.to_string())
}

/// Transcribes the self-test clip; the model is deaf or damaged if too much of it is wrong.
/// Returns the transcript's character error rate.
pub fn self_test(pool: &RecognizerPool, model: &Path) -> Result<f64, AsrError> {
    let failed = |reason: String| AsrError::ModelCorrupt {
        path: PathBuf::from(model),
        reason,
    };
    let audio = self_test_audio().map_err(|e| failed(format!("the self-test clip: {e}")))?;
    let (transcript, _) = pool.recognize_blocking(audio)?;
    let (errors, length) = text::char_errors(SELF_TEST_TEXT, &transcript.text);
    let cer = errors as f64 / length.max(1) as f64;
    tracing::info!(model = %model.display(), transcript = %transcript.text, cer, "model self-test");
    if cer > SELF_TEST_MAX_CER {
        return Err(failed(format!(
            "it heard 李明's clip \"{SELF_TEST_TEXT}\" as \"{}\" ({:.0}% of the characters wrong)",
            transcript.text,
            cer * 100.0
        )));
    }
    Ok(cer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_test_clip_says_the_text_of_its_line() {
        let lines = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("script/lines.toml"),
        )
        .expect("lines.toml");
        let at = lines
            .find("id = \"identity_check\"")
            .expect("identity_check line");
        assert!(
            lines[at..].contains(&format!("text = \"{SELF_TEST_TEXT}\"")),
            "SELF_TEST_TEXT must be identity_check's text in script/lines.toml"
        );
        let audio = self_test_audio().expect("the clip decodes");
        assert!(audio.len() > 16_000, "{} samples", audio.len());
    }

    #[test]
    fn a_pinned_name_with_other_bytes_is_corrupt_and_an_unknown_name_is_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("checksums.txt"),
            "# pins\nsha256  2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae  model.bin:converted\n",
        )
        .expect("write");
        let model = dir.path().join("model.bin");
        std::fs::write(&model, "foo").expect("write");
        assert!(matches!(verify_checksum(&model), Ok(Checksum::Pinned(_))));
        std::fs::write(&model, "fop").expect("write");
        let err = verify_checksum(&model).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains("models/fetch"),
            "{err}"
        );
        let other = dir.path().join("mine.bin");
        std::fs::write(&other, "anything").expect("write");
        assert_eq!(verify_checksum(&other).expect("ok"), Checksum::Unknown);
    }
}
