//! The do-not-call journal: an append-only file of do-not-call entries the database could
//! not take (full disk, I/O error, locked), so that a restart before they land loses none.
//!
//! One JSON object per line (`number`, `reason`, `source_call_id`, `added_at`), each
//! appended under an exclusive `flock` and `fsync`ed (with the directory, when the file is
//! new) before the append returns. Every renewal-bot process reads it: an entry in the
//! journal counts as on the list, and whichever process finds every entry of the journal in
//! the database empties it. Put it on another filesystem than the database (`--dnc-journal`),
//! so a full database disk does not also stop the journal.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::DncEntry;

/// The journal file (which need not exist yet).
#[derive(Debug, Clone)]
pub struct DncJournal {
    path: PathBuf,
}

impl DncJournal {
    pub fn new(path: PathBuf) -> DncJournal {
        DncJournal { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and waits until it is on the disk.
    pub fn append(&self, entry: &DncEntry) -> io::Result<()> {
        let existed = self.path.exists();
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)?;
        file.lock()?;
        let mut line = serde_json::to_string(entry).map_err(io::Error::other)?;
        line.push('\n');
        // A process killed mid-append leaves a line without its newline: start a new one
        // so this entry is not glued to the torn one.
        if ends_without_newline(&mut file)? {
            line.insert(0, '\n');
        }
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        if !existed && let Some(parent) = self.path.parent() {
            // The new file's name must survive a power cut too.
            let dir = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Every entry in the journal (none when there is no journal file). Torn or unreadable
    /// lines are skipped with a warning.
    pub fn read(&self) -> io::Result<Vec<DncEntry>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if no_file(&err) => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        if file.metadata()?.len() == 0 {
            return Ok(Vec::new());
        }
        file.lock_shared()?;
        read_entries(&mut file, &self.path)
    }

    /// Whether the journal holds nothing (cheap: one `stat`).
    pub fn is_empty(&self) -> io::Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.len() == 0),
            Err(err) if no_file(&err) => Ok(true),
            Err(err) => Err(err),
        }
    }

    /// Empties the journal if `landed` holds for every entry in it (read again under the
    /// lock, so an entry appended meanwhile by another process is never dropped). Whether
    /// it was emptied.
    pub fn clear_if_all(&self, landed: impl Fn(&DncEntry) -> bool) -> io::Result<bool> {
        let mut file = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(file) => file,
            Err(err) if no_file(&err) => return Ok(true),
            Err(err) => return Err(err),
        };
        file.lock()?;
        let entries = read_entries(&mut file, &self.path)?;
        if !entries.iter().all(landed) {
            return Ok(false);
        }
        file.set_len(0)?;
        file.sync_all()?;
        Ok(true)
    }
}

/// There is no journal file there (nor could there be one): nothing to read.
fn no_file(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn ends_without_newline(file: &mut File) -> io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn read_entries(file: &mut File, path: &Path) -> io::Result<Vec<DncEntry>> {
    file.seek(SeekFrom::Start(0))?;
    let mut entries = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<DncEntry>(&line) {
            Ok(entry) => entries.push(entry),
            Err(err) => tracing::warn!(
                journal = %path.display(),
                line = index + 1,
                %err,
                "skipping an unreadable line of the do-not-call journal (a write cut off by a crash?)"
            ),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: &str) -> DncEntry {
        DncEntry {
            number: number.into(),
            reason: "别再打了".into(),
            source_call_id: Some("c1".into()),
            added_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn entries_round_trip_and_a_torn_line_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let journal = DncJournal::new(dir.path().join("sub/dnc.journal"));
        assert!(journal.read().unwrap().is_empty());
        assert!(journal.is_empty().unwrap());
        journal.append(&entry("+8613800000001")).unwrap();
        // A crash in the middle of the next append.
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        file.write_all(br#"{"number":"+86138"#).unwrap();
        journal.append(&entry("+8613800000002")).unwrap();
        let numbers: Vec<String> = journal
            .read()
            .unwrap()
            .into_iter()
            .map(|e| e.number)
            .collect();
        assert_eq!(numbers, ["+8613800000001", "+8613800000002"]);
        assert!(!journal.clear_if_all(|e| e.number.ends_with('1')).unwrap());
        assert_eq!(journal.read().unwrap().len(), 2);
        assert!(journal.clear_if_all(|_| true).unwrap());
        assert!(journal.is_empty().unwrap());
    }
}
