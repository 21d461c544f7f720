//! 李明's prerecorded lines: `audio/manifest.toml` lists each clip (line id, exact text,
//! file, sha256); the library loads them once as ready-to-send 8 kHz μ-law bytes.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One line of 李明, ready for the phone line.
#[derive(Debug, Clone)]
pub struct Clip {
    pub id: String,
    pub text: String,
    /// 8 kHz μ-law bytes, no header: 160 bytes per 20 ms frame.
    pub mulaw: Vec<u8>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ClipLibrary {
    clips: HashMap<String, Clip>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(
        "cannot read the clip manifest {path}: {source} (render the clips with tools/tts/render_clips.py)"
    )]
    Manifest {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid clip manifest: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("clip `{id}`: {reason}")]
    Clip { id: String, reason: String },
}

#[derive(Debug, Deserialize)]
struct Manifest {
    clip: Vec<ManifestEntry>,
}

#[derive(Debug, Deserialize)]
struct ManifestEntry {
    id: String,
    text: String,
    file: String,
    sha256: String,
}

impl ClipLibrary {
    /// Loads every clip listed in `dir/manifest.toml`, checking each file's checksum.
    pub fn load(dir: &Path) -> Result<ClipLibrary, ClipError> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ClipError::Manifest {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|source| ClipError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut clips = HashMap::new();
        for entry in manifest.clip {
            let clip_error = |reason: String| ClipError::Clip {
                id: entry.id.clone(),
                reason,
            };
            let file = dir.join(&entry.file);
            let bytes = std::fs::read(&file)
                .map_err(|e| clip_error(format!("cannot read {}: {e}", file.display())))?;
            let digest = hex::encode(Sha256::digest(&bytes));
            if !digest.eq_ignore_ascii_case(&entry.sha256) {
                return Err(clip_error(format!(
                    "{} has sha256 {digest} but the manifest says {}; re-render the clips or fix the manifest",
                    file.display(),
                    entry.sha256
                )));
            }
            let (rate, mulaw) =
                super::wav::read_mulaw_bytes(&file).map_err(|e| clip_error(e.to_string()))?;
            if rate != super::PHONE_RATE {
                return Err(clip_error(format!(
                    "{} is {rate} Hz; clips must be 8000 Hz",
                    file.display()
                )));
            }
            let duration_ms = mulaw.len() as u64 * 1_000 / u64::from(rate);
            let clip = Clip {
                id: entry.id.clone(),
                text: entry.text,
                mulaw,
                duration_ms,
            };
            if clips.insert(entry.id.clone(), clip).is_some() {
                return Err(clip_error("listed twice in the manifest".into()));
            }
        }
        Ok(ClipLibrary { clips })
    }

    pub fn get(&self, line_id: &str) -> Option<&Clip> {
        self.clips.get(line_id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.clips.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.clips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }

    /// Builds a library from clips already in memory (tests, tools).
    pub fn from_clips(clips: impl IntoIterator<Item = Clip>) -> ClipLibrary {
        ClipLibrary {
            clips: clips.into_iter().map(|c| (c.id.clone(), c)).collect(),
        }
    }
}
