//! The people-facing `dnc` and `calls` commands: look at and edit what the bot stored.
//! The main binary parses these with clap and hands them to [`run_dnc`] / [`run_calls`];
//! when the database cannot even be opened (a full disk), `dnc add` still keeps the number
//! in the do-not-call journal ([`add_dnc_to_journal_only`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use comfy_table::{ContentArrangement, Table, presets};

use crate::store::journal::DncJournal;
use crate::store::{CallRow, DncEntry, Store, StoreError, normalize_number};

/// Where the database lives unless `--db PATH` says otherwise (relative to the current
/// directory).
pub const DEFAULT_DB_PATH: &str = "data/renewal-bot.sqlite";

/// [`DEFAULT_DB_PATH`] as a path.
pub fn default_db_path() -> PathBuf {
    PathBuf::from(DEFAULT_DB_PATH)
}

/// Look at or edit the permanent do-not-call list. Numbers on it are never called.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DncCommand {
    /// List every number on the do-not-call list, oldest first.
    List {
        /// Print a JSON array (number, reason, source_call_id, added_at) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a number on the do-not-call list. An existing entry is kept as it is.
    Add {
        /// The phone number, e.g. +8613800000000 (spaces, dashes and a 00 prefix are fine).
        number: String,
        /// Why the number must not be called: the callee's words or a note.
        #[arg(long, default_value = "added by operator")]
        reason: String,
    },
    /// Take a number off the do-not-call list, so it may be called again.
    Remove {
        /// The phone number, in any spelling that `add` accepts.
        number: String,
    },
}

/// Look at the recorded calls.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CallsCommand {
    /// List the most recent calls, newest first.
    List {
        /// How many calls to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print a JSON array (call_id, transport, to_number, started_at, duration_ms,
        /// outcome, do_not_call, ...) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one call: who, when, how it ended, and every turn (what the callee said,
    /// the intent found, the reply latency and the lines the bot answered with).
    Show {
        /// The call id, as printed by `calls list`.
        call_id: String,
    },
}

/// Run a `dnc` command against `store`, printing to `out`.
pub fn run_dnc(store: &Store, cmd: DncCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        DncCommand::List { json } => {
            let entries = store.list_dnc()?;
            let pending = store.pending_dnc()?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &entries)?;
                writeln!(out)?;
            } else if entries.is_empty() {
                writeln!(out, "The do-not-call list is empty.")?;
            } else {
                let mut table = new_table();
                table.set_header(vec!["number", "added", "reason", "call"]);
                for entry in &entries {
                    table.add_row(vec![
                        entry.number.clone(),
                        short_time(&entry.added_at),
                        entry.reason.clone(),
                        entry.source_call_id.clone().unwrap_or_default(),
                    ]);
                }
                writeln!(out, "{table}")?;
                writeln!(out, "{} number(s) on the do-not-call list.", entries.len())?;
                if !pending.is_empty() {
                    let numbers: Vec<&str> = pending.iter().map(|e| e.number.as_str()).collect();
                    writeln!(
                        out,
                        "{} of them not yet in the database ({}): kept in the do-not-call journal{}, written as soon as the database takes them.",
                        pending.len(),
                        numbers.join(", "),
                        store
                            .journal_path()
                            .map(|p| format!(" at {}", p.display()))
                            .unwrap_or_default()
                    )?;
                }
            }
        }
        DncCommand::Add { number, reason } => {
            let normalized = normalize_number(&number)?;
            if store.add_dnc(&normalized, &reason, None)? {
                writeln!(out, "Added {normalized} to the do-not-call list.")?;
            } else {
                let since = store
                    .get_dnc(&normalized)?
                    .map(|e| format!(" (since {}: {})", short_time(&e.added_at), e.reason))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{normalized} was already on the do-not-call list{since}; kept as it was."
                )?;
            }
        }
        DncCommand::Remove { number } => {
            let normalized = normalize_number(&number)?;
            if store.remove_dnc(&normalized)? {
                writeln!(
                    out,
                    "Removed {normalized} from the do-not-call list; it may be called again."
                )?;
            } else {
                writeln!(
                    out,
                    "{normalized} was not on the do-not-call list; nothing changed."
                )?;
            }
        }
    }
    Ok(())
}

/// `dnc add` when the database cannot be opened (a full disk: SQLite cannot even create
/// its WAL index): the entry goes into the do-not-call journal, which every command reads
/// and the next store that opens writes into the database. Returns the error to report.
pub fn add_dnc_to_journal_only(
    journal: &Path,
    number: &str,
    reason: &str,
    open_error: StoreError,
) -> anyhow::Error {
    let normalized = match normalize_number(number) {
        Ok(normalized) => normalized,
        Err(err) => return err.into(),
    };
    // Another program's file, a newer schema, a corrupt file: nothing to journal for, the
    // operator has the wrong path.
    if matches!(
        open_error,
        StoreError::Foreign { .. } | StoreError::TooNew { .. } | StoreError::Corrupt { .. }
    ) {
        return open_error.into();
    }
    let entry = DncEntry {
        number: normalized.clone(),
        reason: reason.to_string(),
        source_call_id: None,
        added_at: crate::store::now_rfc3339(),
    };
    match DncJournal::new(journal.to_path_buf()).append(&entry) {
        Ok(()) => anyhow::anyhow!(
            "{open_error}; {normalized} is kept in the do-not-call journal at {}, counts as on the list for every renewal-bot command, and is written to the database the next time it opens",
            journal.display()
        ),
        Err(err) => anyhow::anyhow!(
            "{open_error}; nor can the do-not-call journal at {} be written ({err}): {normalized} is NOT on the list — free space and add it again",
            journal.display()
        ),
    }
}

/// Run a `calls` command against `store`, printing to `out`.
pub fn run_calls(store: &Store, cmd: CallsCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        CallsCommand::List { limit, json } => {
            let calls = store.recent_calls(limit)?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &calls)?;
                writeln!(out)?;
            } else if calls.is_empty() {
                writeln!(out, "No calls recorded yet in {}.", store.path().display())?;
            } else {
                let mut table = new_table();
                table.set_header(vec![
                    "id",
                    "transport",
                    "number",
                    "start",
                    "duration",
                    "outcome",
                    "dnc",
                ]);
                for call in &calls {
                    table.add_row(vec![
                        call.call_id.clone(),
                        call.transport.clone(),
                        call.to_number.clone().unwrap_or_default(),
                        short_time(&call.started_at),
                        call.duration_ms.map(duration).unwrap_or_default(),
                        outcome_text(call),
                        dnc_text(call, "yes", ""),
                    ]);
                }
                writeln!(out, "{table}")?;
            }
        }
        CallsCommand::Show { call_id } => {
            let call =
                store
                    .get_call(&call_id)?
                    .ok_or_else(|| crate::store::StoreError::UnknownCall {
                        path: crate::store::DbPath(store.path().to_path_buf()),
                        call_id: call_id.clone(),
                    })?;
            let turns = store.call_turns(&call_id)?;
            let events = store
                .call_events(&call_id)
                .with_context(|| format!("reading the events of call {call_id}"))?;
            let none = || "-".to_string();
            let fields = [
                ("call", call.call_id.clone()),
                ("transport", call.transport.clone()),
                ("to", call.to_number.clone().unwrap_or_else(none)),
                ("from", call.from_number.clone().unwrap_or_else(none)),
                ("call sid", call.call_sid.clone().unwrap_or_else(none)),
                ("stream sid", call.stream_sid.clone().unwrap_or_else(none)),
                ("started", short_time(&call.started_at)),
                (
                    "ended",
                    call.ended_at
                        .as_deref()
                        .map(short_time)
                        .unwrap_or_else(none),
                ),
                (
                    "duration",
                    call.duration_ms.map(duration).unwrap_or_else(none),
                ),
                ("outcome", outcome_text(&call)),
                ("do-not-call", dnc_text(&call, "yes", "no")),
            ];
            for (name, value) in fields {
                writeln!(out, "{name:<12}{value}")?;
            }
            if !events.is_empty() {
                writeln!(out, "\nEvents:")?;
                for event in &events {
                    writeln!(
                        out,
                        "  {}  {}  {}",
                        short_time(&event.at),
                        event.kind,
                        event.detail
                    )?;
                }
            }
            if turns.is_empty() {
                writeln!(out, "\nNo turns recorded.")?;
            } else {
                writeln!(out, "\nTurns:")?;
                let mut table = new_table();
                table.set_header(vec![
                    "#",
                    "time",
                    "transcript",
                    "intent",
                    "latency",
                    "reply",
                ]);
                for turn in &turns {
                    let intent = match (&turn.intent, turn.intents.len()) {
                        (Some(first), n) if n > 1 => {
                            format!("{first} (also {})", turn.intents[1..].join(", "))
                        }
                        (Some(first), _) => first.clone(),
                        (None, _) => "-".into(),
                    };
                    table.add_row(vec![
                        turn.seq.to_string(),
                        format!(
                            "{}-{}",
                            call_time(turn.speech_start_ms),
                            call_time(turn.speech_end_ms)
                        ),
                        turn.transcript.clone(),
                        intent,
                        turn.latency_ms
                            .map(|ms| format!("{ms} ms"))
                            .unwrap_or_else(none),
                        turn.reply.join(", "),
                    ]);
                }
                writeln!(out, "{table}")?;
            }
        }
    }
    Ok(())
}

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table
}

fn outcome_text(call: &CallRow) -> String {
    match (&call.outcome, &call.ended_at, call.dial_status.as_deref()) {
        (Some(outcome), _, _) => outcome.clone(),
        (None, None, Some("dialing")) => "(dialing: result unknown)".to_string(),
        (None, _, Some("refused")) => "(not placed)".to_string(),
        (None, _, Some("not_placed")) => "(never reached Twilio)".to_string(),
        (None, _, Some("merged")) => "(recorded twice; see the other record)".to_string(),
        (None, None, _) => "(in progress)".to_string(),
        // Closed at start-up after the bot stopped mid-call (`close_interrupted_calls`).
        (None, Some(_), _) => "(interrupted)".to_string(),
    }
}

/// The do-not-call column: `-` for a call with no number (nothing could be listed).
fn dnc_text(call: &CallRow, yes: &str, no: &str) -> String {
    match (&call.to_number, call.do_not_call) {
        (None, _) => "-",
        (Some(_), true) => yes,
        (Some(_), false) => no,
    }
    .to_string()
}

/// `2026-01-02T03:04:05.678Z` → `2026-01-02 03:04:05Z`.
fn short_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(date), Some(clock)) if rfc3339.len() >= 20 => format!("{date} {clock}Z"),
        _ => rfc3339.to_string(),
    }
}

/// A call length: `0:42`, `12:05`.
fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// A call-time offset with tenths: `0:05.2`.
fn call_time(ms: u64) -> String {
    let tenths = ms / 100;
    format!("{}:{:02}.{}", tenths / 600, (tenths / 10) % 60, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(
            short_time("2026-01-02T03:04:05.678Z"),
            "2026-01-02 03:04:05Z"
        );
        assert_eq!(short_time("garbage"), "garbage");
        assert_eq!(duration(42_999), "0:42");
        assert_eq!(duration(725_000), "12:05");
        assert_eq!(call_time(5_250), "0:05.2");
        assert_eq!(call_time(61_900), "1:01.9");
    }
}
