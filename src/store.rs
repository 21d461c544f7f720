//! The call record and the permanent do-not-call list, in one SQLite file.
//!
//! [`Store`] wraps a single `rusqlite::Connection` behind `Arc<Mutex<_>>`: it is cheap to
//! clone, `Send + Sync`, and every method is synchronous. Each method is one or two short
//! statements (well under a millisecond on a local disk), so async code may call them
//! directly; wrap bulk work (big listings, many calls in a loop) in
//! `tokio::task::spawn_blocking` so it does not hold up a runtime thread.
//!
//! The database runs in WAL mode with a busy timeout, so the server and the `dnc` / `calls`
//! commands can use the same file at the same time. The schema lives in `migrations/*.sql`,
//! embedded at build time and applied in order on [`Store::open`]; the applied version is
//! kept in `PRAGMA user_version` and listed in the `schema_migrations` table.
//!
//! Phone numbers are stored normalized (see [`normalize_number`]), so
//! `"+86 138-0000-0000"` and `"+8613800000000"` are the same do-not-call entry; the
//! do-not-call lookups also treat a Chinese national spelling (`138 0000 0000`) as the
//! same number as its +86 form (see [`same_number_forms`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use serde::Serialize;
use time::{OffsetDateTime, UtcOffset};

use crate::labels::Outcome;
use crate::session::TurnRecord;

/// The embedded schema migrations, applied in order. The version of a migration is its
/// position in this list, starting at 1. Never edit a released migration: add a new one.
pub const MIGRATIONS: &[(&str, &str)] =
    &[("0001_init", include_str!("../migrations/0001_init.sql"))];

/// How long a statement waits for another connection's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong, phrased so the person at the terminal knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the database at {path}: {reason}; check the path / permissions or pass --db PATH"
    )]
    Open { path: DbPath, reason: String },

    #[error(
        "the database at {path} is read-only ({detail}); check the permissions of the file and its directory, or pass --db PATH"
    )]
    ReadOnly {
        path: DbPath,
        detail: rusqlite::Error,
    },

    #[error(
        "the disk holding the database at {path} is full; free space on that disk (or pass --db PATH on another disk) and try again"
    )]
    DiskFull {
        path: DbPath,
        detail: rusqlite::Error,
    },

    #[error(
        "the file at {path} is not a renewal-bot database or is corrupt ({detail}); move it aside so a fresh one is created, restore a backup, or pass --db PATH"
    )]
    Corrupt {
        path: DbPath,
        detail: rusqlite::Error,
    },

    #[error(
        "the database at {path} has schema version {found} but this renewal-bot only knows up to version {known}; use a newer renewal-bot or pass --db PATH"
    )]
    TooNew {
        path: DbPath,
        found: i64,
        known: i64,
    },

    #[error(
        "the database at {path} stayed locked by another process for more than {}s; stop the other renewal-bot process using it, or pass --db PATH",
        BUSY_TIMEOUT.as_secs()
    )]
    Busy {
        path: DbPath,
        detail: rusqlite::Error,
    },

    #[error(
        "unknown call id `{call_id}`: the database at {path} has no such call; `renewal-bot calls list` shows the recent ones"
    )]
    UnknownCall { path: DbPath, call_id: String },

    #[error(
        "a call with id `{call_id}` is already recorded in the database at {path}; use a new call id"
    )]
    DuplicateCall { path: DbPath, call_id: String },

    #[error(
        "'{input}' is not a phone number: use digits with an optional leading +, e.g. +8613800000000"
    )]
    BadNumber { input: String },

    #[error("cannot record the time {time}: {reason}")]
    BadTime { time: String, reason: String },

    #[error("database error at {path}: {detail}")]
    Sqlite {
        path: DbPath,
        detail: rusqlite::Error,
    },
}

/// The location of a database, for error messages (`:memory:` for in-memory ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbPath(pub PathBuf);

impl fmt::Display for DbPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

/// A new call, recorded by [`Store::start_call`] when the call is placed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    pub call_id: String,
    /// `"twilio"`, `"sip"`, `"eval"`, ...
    pub transport: String,
    /// The callee; normalized before it is stored.
    pub to_number: Option<String>,
    /// Our caller id; normalized when it looks like a phone number, else stored as given.
    pub from_number: Option<String>,
    pub call_sid: Option<String>,
    pub stream_sid: Option<String>,
    pub started_at: OffsetDateTime,
}

/// One row of the do-not-call list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DncEntry {
    /// Normalized number, e.g. `+8613800000000`.
    pub number: String,
    /// The callee's words or an operator's note.
    pub reason: String,
    /// The call that put the number on the list, if any.
    pub source_call_id: Option<String>,
    /// RFC 3339 UTC.
    pub added_at: String,
}

/// One call, as listed by [`Store::recent_calls`]. The JSON field names are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRow {
    pub call_id: String,
    pub transport: String,
    pub to_number: Option<String>,
    pub from_number: Option<String>,
    pub call_sid: Option<String>,
    pub stream_sid: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC; `None` while live.
    pub ended_at: Option<String>,
    /// `None` while live.
    pub duration_ms: Option<u64>,
    /// An [`Outcome`] label; `None` while live (or if the process died mid-call).
    pub outcome: Option<String>,
    pub do_not_call: bool,
}

/// One stored turn of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnRow {
    /// 1, 2, 3, ... within the call.
    pub seq: u32,
    pub speech_start_ms: u64,
    pub speech_end_ms: u64,
    pub transcript: String,
    /// The reported intent label (the first of `intents`), `None` if there was none.
    pub intent: Option<String>,
    /// Every intent label the rules found.
    pub intents: Vec<String>,
    /// The line ids the bot answered with.
    pub reply: Vec<String>,
    pub latency_ms: Option<u64>,
    /// RFC 3339 UTC wall time the turn was stored.
    pub recorded_at: String,
}

/// One row of `call_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    /// RFC 3339 UTC.
    pub at: String,
    pub kind: String,
    pub detail: String,
}

/// Handle to the database. Clones share one connection; see the module docs.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Arc<DbPath>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path.0).finish()
    }
}

/// Normalize a phone number for storage and do-not-call lookups: drop spaces, dashes,
/// parentheses and dots, keep a leading `+`, turn a leading `00` into `+`.
///
/// `"+86 138-0000-0000"`, `"0086 (138) 0000.0000"` and `"+8613800000000"` all become
/// `"+8613800000000"`. Anything else (letters, a `+` in the middle, no digits) is an error.
pub fn normalize_number(input: &str) -> Result<String, StoreError> {
    let bad = || StoreError::BadNumber {
        input: input.to_string(),
    };
    let mut out = String::with_capacity(input.len());
    for (i, c) in input.trim().chars().enumerate() {
        match c {
            '0'..='9' => out.push(c),
            '+' if i == 0 => out.push(c),
            ' ' | '\t' | '-' | '(' | ')' | '.' | '\u{3000}' => {}
            _ => return Err(bad()),
        }
    }
    if let Some(rest) = out.strip_prefix("00") {
        out = format!("+{rest}");
    }
    let digits = out.trim_start_matches('+');
    if digits.is_empty() || digits.len() > 20 {
        return Err(bad());
    }
    Ok(out)
}

/// Now, in the stored time format.
fn now_text() -> String {
    // Formatting the current time cannot fail (the year is within 0..=9999).
    format_time(OffsetDateTime::now_utc())
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

/// RFC 3339 in UTC with exactly three fractional digits, so stored times sort as text.
fn format_time(t: OffsetDateTime) -> Result<String, StoreError> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(UtcOffset::UTC)
        .format(&format)
        .map_err(|e| StoreError::BadTime {
            time: t.to_string(),
            reason: e.to_string(),
        })
}

fn to_sql_u64(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn from_sql_u64(x: Option<i64>) -> Option<u64> {
    x.map(|v| u64::try_from(v).unwrap_or(0))
}

impl Store {
    /// Open (creating it and its parent directories if needed) the database at `path`
    /// and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db_path = DbPath(path.to_path_buf());
        let open_err = |reason: String| StoreError::Open {
            path: db_path.clone(),
            reason,
        };
        if path.as_os_str().is_empty() {
            return Err(open_err("the path is empty".into()));
        }
        if path.is_dir() {
            return Err(open_err("that is a directory, not a file".into()));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                open_err(format!(
                    "cannot create the directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let conn = Connection::open(path).map_err(|e| match classify(&db_path, e) {
            StoreError::Sqlite { detail, .. } => open_err(detail.to_string()),
            other => other,
        })?;
        Self::init(conn, db_path, true)
    }

    /// A private, empty in-memory database (for tests and the evaluator).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let db_path = DbPath(PathBuf::from(":memory:"));
        let conn = Connection::open_in_memory().map_err(|e| classify(&db_path, e))?;
        Self::init(conn, db_path, false)
    }

    fn init(mut conn: Connection, path: DbPath, on_disk: bool) -> Result<Store, StoreError> {
        let err = |e: rusqlite::Error| classify(&path, e);
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        if on_disk {
            // The first statement that reads the file: a non-SQLite file fails here.
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(db = %path, %mode, "SQLite refused WAL mode; using {mode}");
            }
            // Do-not-call entries must survive a power cut, not just a crash.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(err)?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path),
        })
    }

    /// Where this database lives (`:memory:` for in-memory ones).
    pub fn path(&self) -> &Path {
        &self.path.0
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.lock();
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.err(e))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (an open
        // transaction rolls back when dropped), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }

    fn unknown_call(&self, call_id: &str) -> StoreError {
        StoreError::UnknownCall {
            path: (*self.path).clone(),
            call_id: call_id.to_string(),
        }
    }

    fn call_exists(&self, conn: &Connection, call_id: &str) -> Result<bool, StoreError> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM calls WHERE call_id = ?1)",
            [call_id],
            |row| row.get(0),
        )
        .map_err(|e| self.err(e))
    }

    fn ensure_call(&self, conn: &Connection, call_id: &str) -> Result<(), StoreError> {
        if self.call_exists(conn, call_id)? {
            Ok(())
        } else {
            Err(self.unknown_call(call_id))
        }
    }

    /// Every row of a query, each made a record by `from_row` (e.g. [`CallRow::from_row`]).
    fn query_rows<T>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
        from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, from_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Record a new, live call. Fails with [`StoreError::DuplicateCall`] if the id is taken
    /// and [`StoreError::BadNumber`] if `to_number` is not a phone number.
    pub fn start_call(&self, call: &NewCall) -> Result<(), StoreError> {
        let to_number = call
            .to_number
            .as_deref()
            .map(normalize_number)
            .transpose()?;
        let from_number = call
            .from_number
            .as_deref()
            .map(|n| normalize_number(n).unwrap_or_else(|_| n.to_string()));
        let started_at = format_time(call.started_at)?;
        let conn = self.lock();
        if self.call_exists(&conn, &call.call_id)? {
            return Err(StoreError::DuplicateCall {
                path: (*self.path).clone(),
                call_id: call.call_id.clone(),
            });
        }
        conn.execute(
            "INSERT INTO calls (call_id, transport, to_number, from_number, call_sid, stream_sid, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                call.call_id,
                call.transport,
                to_number,
                from_number,
                call.call_sid,
                call.stream_sid,
                started_at
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Attach the Twilio CallSid and StreamSid (known once the media stream starts).
    pub fn set_stream(
        &self,
        call_id: &str,
        call_sid: &str,
        stream_sid: &str,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        let changed = conn
            .execute(
                "UPDATE calls SET call_sid = ?2, stream_sid = ?3 WHERE call_id = ?1",
                params![call_id, call_sid, stream_sid],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(self.unknown_call(call_id));
        }
        Ok(())
    }

    /// Store one understood utterance; turns are numbered 1, 2, 3, ... per call.
    /// `latency_ms`: end of speech to the first reply audio, if measured.
    pub fn record_turn(
        &self,
        call_id: &str,
        turn: &TurnRecord,
        latency_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let intents: Vec<&str> = turn.intents.iter().map(|i| i.as_str()).collect();
        let intent = intents.first().copied();
        // Serializing a list of strings cannot fail.
        let intents_json = serde_json::to_string(&intents).unwrap_or_else(|_| "[]".into());
        let reply_json = serde_json::to_string(&turn.reply).unwrap_or_else(|_| "[]".into());
        let conn = self.lock();
        self.ensure_call(&conn, call_id)?;
        conn.execute(
            "INSERT INTO turns (call_id, seq, speech_start_ms, speech_end_ms, transcript,
                                intent, intents, reply, latency_ms, recorded_at)
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
             FROM turns WHERE call_id = ?1",
            params![
                call_id,
                to_sql_u64(turn.speech_start),
                to_sql_u64(turn.speech_end),
                turn.transcript,
                intent,
                intents_json,
                reply_json,
                latency_ms.map(to_sql_u64),
                now_text()
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Note something about a call: a Twilio status callback (`kind = "status"`,
    /// `detail = "completed"`), an error, a barge-in, ...
    pub fn record_event(&self, call_id: &str, kind: &str, detail: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        self.ensure_call(&conn, call_id)?;
        conn.execute(
            "INSERT INTO call_events (call_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![call_id, now_text(), kind, detail],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Record how the call ended. Idempotent: only the first finish counts, a later one
    /// (say, a status callback after the session already finished) changes nothing.
    /// Returns whether this call recorded the outcome.
    ///
    /// With `do_not_call`, the callee's number also goes on the do-not-call list (if it is
    /// not there already, e.g. from [`Store::add_dnc`] with the callee's own words), in the
    /// same transaction.
    pub fn finish_call(
        &self,
        call_id: &str,
        outcome: Outcome,
        do_not_call: bool,
        duration_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = now_text();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let changed = tx
            .execute(
                "UPDATE calls SET outcome = ?2, do_not_call = ?3, duration_ms = ?4, ended_at = ?5
                 WHERE call_id = ?1 AND outcome IS NULL",
                params![
                    call_id,
                    outcome.as_str(),
                    do_not_call,
                    to_sql_u64(duration_ms),
                    now
                ],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return if self.call_exists(&tx, call_id)? {
                Ok(false)
            } else {
                Err(self.unknown_call(call_id))
            };
        }
        if do_not_call {
            let to_number: Option<String> = tx
                .query_row(
                    "SELECT to_number FROM calls WHERE call_id = ?1",
                    [call_id],
                    |row| row.get(0),
                )
                .map_err(|e| self.err(e))?;
            if let Some(number) = to_number {
                let reason = format!("call outcome: {}", outcome.as_str());
                insert_dnc(&tx, &number, &reason, Some(call_id)).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Put a number on the do-not-call list for good. Returns `true` if it was not there
    /// yet (in any spelling, see [`same_number_forms`]); an existing entry (its reason
    /// and time) is never overwritten.
    pub fn add_dnc(
        &self,
        number: &str,
        reason: &str,
        source_call_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let number = normalize_number(number)?;
        let conn = self.lock();
        let added = insert_dnc(&conn, &number, reason, source_call_id).map_err(|e| self.err(e))?;
        if added {
            tracing::info!(db = %self.path, %number, ?source_call_id, "added to the do-not-call list");
        }
        Ok(added)
    }

    /// Whether the number is on the do-not-call list, in any spelling: `+86 138-0000-0000`,
    /// `+8613800000000`, `008613800000000` and `138 0000 0000` are all the same number.
    pub fn is_dnc(&self, number: &str) -> Result<bool, StoreError> {
        Ok(self.get_dnc(number)?.is_some())
    }

    /// The entry for a number (in any spelling), if it is on the list.
    pub fn get_dnc(&self, number: &str) -> Result<Option<DncEntry>, StoreError> {
        let number = normalize_number(number)?;
        let conn = self.lock();
        find_dnc(&conn, &number).map_err(|e| self.err(e))
    }

    /// Take a number (every spelling of it) off the list, an operator's decision.
    /// Returns whether it was there.
    pub fn remove_dnc(&self, number: &str) -> Result<bool, StoreError> {
        let number = normalize_number(number)?;
        let conn = self.lock();
        let mut removed = 0;
        for form in same_number_forms(&number) {
            removed += conn
                .execute("DELETE FROM do_not_call WHERE number = ?1", [form])
                .map_err(|e| self.err(e))?;
        }
        if removed > 0 {
            tracing::info!(db = %self.path, %number, "removed from the do-not-call list");
        }
        Ok(removed > 0)
    }

    /// The whole do-not-call list, oldest first.
    pub fn list_dnc(&self) -> Result<Vec<DncEntry>, StoreError> {
        let conn = self.lock();
        self.query_rows(
            &conn,
            "SELECT number, reason, source_call_id, added_at FROM do_not_call
                 ORDER BY added_at, number",
            [],
            DncEntry::from_row,
        )
    }

    /// The `limit` most recently started calls, newest first.
    pub fn recent_calls(&self, limit: usize) -> Result<Vec<CallRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock();
        self.query_rows(
            &conn,
            &format!(
                "SELECT {CALL_COLUMNS} FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?1"
            ),
            [limit],
            CallRow::from_row,
        )
    }

    /// One call, `None` if there is no call with that id.
    pub fn get_call(&self, call_id: &str) -> Result<Option<CallRow>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?1"),
            [call_id],
            CallRow::from_row,
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// The turns of a call, in order. [`StoreError::UnknownCall`] if there is no such call.
    pub fn call_turns(&self, call_id: &str) -> Result<Vec<TurnRow>, StoreError> {
        let conn = self.lock();
        self.ensure_call(&conn, call_id)?;
        self.query_rows(
            &conn,
            "SELECT seq, speech_start_ms, speech_end_ms, transcript, intent, intents, reply,
                        latency_ms, recorded_at
                 FROM turns WHERE call_id = ?1 ORDER BY seq",
            [call_id],
            TurnRow::from_row,
        )
    }

    /// The events of a call, in order. [`StoreError::UnknownCall`] if there is no such call.
    pub fn call_events(&self, call_id: &str) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.lock();
        self.ensure_call(&conn, call_id)?;
        self.query_rows(
            &conn,
            "SELECT at, kind, detail FROM call_events WHERE call_id = ?1 ORDER BY id",
            [call_id],
            EventRow::from_row,
        )
    }

    /// Every call to a number (in any spelling), oldest first.
    pub fn calls_to(&self, number: &str) -> Result<Vec<CallRow>, StoreError> {
        let number = normalize_number(number)?;
        let conn = self.lock();
        let mut calls = Vec::new();
        for form in same_number_forms(&number) {
            calls.extend(self.query_rows(
                &conn,
                &format!("SELECT {CALL_COLUMNS} FROM calls WHERE to_number = ?1"),
                [&form],
                CallRow::from_row,
            )?);
        }
        calls.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(calls)
    }

    /// The call id of the call with this Twilio CallSid (the most recent, should there be
    /// several).
    pub fn find_call_by_sid(&self, call_sid: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT call_id FROM calls WHERE call_sid = ?1 ORDER BY started_at DESC LIMIT 1",
            [call_sid],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Closes the calls an earlier run of the bot left open (killed, crashed, power lost):
    /// no call lasts `older_than`, so one started before that and still without an end
    /// was cut off. Each gets an end time and an `interrupted` event; its outcome stays
    /// empty, since nobody knows how it would have ended. Its turns and any do-not-call
    /// entry were stored as they happened. Returns the ids of the calls closed.
    pub fn close_interrupted_calls(&self, older_than: Duration) -> Result<Vec<String>, StoreError> {
        let cutoff = format_time(OffsetDateTime::now_utc() - older_than)?;
        let now = now_text();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let ids: Vec<String> = {
            let mut statement = tx
                .prepare(
                    "SELECT call_id FROM calls
                     WHERE outcome IS NULL AND ended_at IS NULL AND started_at < ?1
                     ORDER BY started_at",
                )
                .map_err(|e| self.err(e))?;
            let rows = statement
                .query_map([&cutoff], |row| row.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        for id in &ids {
            tx.execute(
                "UPDATE calls SET ended_at = ?2 WHERE call_id = ?1",
                params![id, now],
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO call_events (call_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![
                    id,
                    now,
                    "interrupted",
                    "the bot stopped before this call ended; closed at the next start"
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ids)
    }
}

/// The columns [`CallRow::from_row`] reads, in order.
const CALL_COLUMNS: &str = "call_id, transport, to_number, from_number, call_sid, stream_sid, \
                            started_at, ended_at, duration_ms, outcome, do_not_call";

impl CallRow {
    /// A row of `SELECT {CALL_COLUMNS} FROM calls`.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<CallRow> {
        Ok(CallRow {
            call_id: row.get(0)?,
            transport: row.get(1)?,
            to_number: row.get(2)?,
            from_number: row.get(3)?,
            call_sid: row.get(4)?,
            stream_sid: row.get(5)?,
            started_at: row.get(6)?,
            ended_at: row.get(7)?,
            duration_ms: from_sql_u64(row.get(8)?),
            outcome: row.get(9)?,
            do_not_call: row.get(10)?,
        })
    }
}

impl DncEntry {
    /// A row of `SELECT number, reason, source_call_id, added_at FROM do_not_call`.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<DncEntry> {
        Ok(DncEntry {
            number: row.get(0)?,
            reason: row.get(1)?,
            source_call_id: row.get(2)?,
            added_at: row.get(3)?,
        })
    }
}

impl TurnRow {
    /// A row of `SELECT seq, speech_start_ms, speech_end_ms, transcript, intent, intents,
    /// reply, latency_ms, recorded_at FROM turns`.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<TurnRow> {
        let intents: String = row.get(5)?;
        let reply: String = row.get(6)?;
        Ok(TurnRow {
            seq: row.get(0)?,
            speech_start_ms: from_sql_u64(row.get(1)?).unwrap_or(0),
            speech_end_ms: from_sql_u64(row.get(2)?).unwrap_or(0),
            transcript: row.get(3)?,
            intent: row.get(4)?,
            intents: parse_string_list(&intents),
            reply: parse_string_list(&reply),
            latency_ms: from_sql_u64(row.get(7)?),
            recorded_at: row.get(8)?,
        })
    }
}

impl EventRow {
    /// A row of `SELECT at, kind, detail FROM call_events`.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            at: row.get(0)?,
            kind: row.get(1)?,
            detail: row.get(2)?,
        })
    }
}

/// The spellings under which a normalized number may sit on the do-not-call list. The
/// callee is in China (+86), so a national spelling and the international one are the
/// same number: mobile `13800000000` ↔ `+8613800000000`, landline `01012345678` ↔
/// `+861012345678`. Other numbers only match themselves.
pub fn same_number_forms(normalized: &str) -> Vec<String> {
    let mut forms = vec![normalized.to_string()];
    let is_mobile = |n: &str| n.len() == 11 && n.starts_with('1');
    if let Some(national) = normalized.strip_prefix("+86") {
        if is_mobile(national) {
            forms.push(national.to_string());
        } else if !national.is_empty() {
            forms.push(format!("0{national}"));
        }
    } else if !normalized.starts_with('+') {
        if is_mobile(normalized) {
            forms.push(format!("+86{normalized}"));
        } else if let Some(rest) = normalized.strip_prefix('0').filter(|r| !r.is_empty()) {
            forms.push(format!("+86{rest}"));
        }
    }
    forms
}

fn find_dnc(conn: &Connection, normalized: &str) -> rusqlite::Result<Option<DncEntry>> {
    for form in same_number_forms(normalized) {
        let entry = conn
            .query_row(
                "SELECT number, reason, source_call_id, added_at FROM do_not_call WHERE number = ?1",
                [form],
                DncEntry::from_row,
            )
            .optional()?;
        if entry.is_some() {
            return Ok(entry);
        }
    }
    Ok(None)
}

/// Insert unless the number is already listed in some spelling; whether it was inserted.
fn insert_dnc(
    conn: &Connection,
    normalized: &str,
    reason: &str,
    source_call_id: Option<&str>,
) -> rusqlite::Result<bool> {
    if find_dnc(conn, normalized)?.is_some() {
        return Ok(false);
    }
    let changed = conn.execute(
        "INSERT OR IGNORE INTO do_not_call (number, reason, source_call_id, added_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![normalized, reason, source_call_id, now_text()],
    )?;
    Ok(changed > 0)
}

/// A JSON array of strings; tolerates a comma-joined list.
fn parse_string_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|_| {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

/// Turn a SQLite error into the message that tells the user what to do.
fn classify(path: &DbPath, e: rusqlite::Error) -> StoreError {
    let path = path.clone();
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { path, detail: e },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path, detail: e }
        }
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path, detail: e },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy { path, detail: e }
        }
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => StoreError::Open {
            path,
            reason: e.to_string(),
        },
        _ => StoreError::Sqlite { path, detail: e },
    }
}

/// Apply every migration newer than the database's `user_version`, each in its own
/// transaction.
fn migrate(conn: &mut Connection, path: &DbPath) -> Result<(), StoreError> {
    let err = |e: rusqlite::Error| classify(path, e);
    let known = MIGRATIONS.len() as i64;
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(err)?;
    if current > known {
        return Err(StoreError::TooNew {
            path: path.clone(),
            found: current,
            known,
        });
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY NOT NULL,
                 name       TEXT NOT NULL,
                 applied_at TEXT NOT NULL
             )",
        )
        .map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, now_text()],
        )
        .map_err(err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(db = %path, version, name, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_accepts_common_spellings() {
        for input in [
            "+8613800000000",
            "+86 138-0000-0000",
            "+86 (138) 0000.0000",
            "008613800000000",
            "0086 138 0000 0000",
            "  +86 138 0000 0000  ",
        ] {
            assert_eq!(
                normalize_number(input).unwrap(),
                "+8613800000000",
                "{input}"
            );
        }
        assert_eq!(normalize_number("138-0000-0000").unwrap(), "13800000000");
        assert_eq!(normalize_number("010 1234 5678").unwrap(), "01012345678");
    }

    #[test]
    fn normalization_rejects_non_numbers_with_a_clear_message() {
        for input in [
            "",
            "   ",
            "abc",
            "+",
            "--",
            "+86 138x0000",
            "86+138",
            "++86",
            "client:alice",
        ] {
            let err = normalize_number(input).unwrap_err();
            assert!(
                matches!(err, StoreError::BadNumber { .. }),
                "{input}: {err}"
            );
        }
        let message = normalize_number("abc").unwrap_err().to_string();
        assert_eq!(
            message,
            "'abc' is not a phone number: use digits with an optional leading +, e.g. +8613800000000"
        );
    }

    #[test]
    fn chinese_national_and_international_spellings_are_the_same_number() {
        assert_eq!(
            same_number_forms("+8613800000000"),
            ["+8613800000000", "13800000000"]
        );
        assert_eq!(
            same_number_forms("13800000000"),
            ["13800000000", "+8613800000000"]
        );
        assert_eq!(
            same_number_forms("+861012345678"),
            ["+861012345678", "01012345678"]
        );
        assert_eq!(
            same_number_forms("01012345678"),
            ["01012345678", "+861012345678"]
        );
        assert_eq!(same_number_forms("+14155550100"), ["+14155550100"]);
        let store = Store::open_in_memory().unwrap();
        assert!(store.add_dnc("138 0000 0000", "别打了", None).unwrap());
        assert!(store.is_dnc("+86 138-0000-0000").unwrap());
        assert!(!store.add_dnc("+8613800000000", "again", None).unwrap());
        assert_eq!(store.list_dnc().unwrap().len(), 1);
        assert!(store.remove_dnc("0086 13800000000").unwrap());
        assert!(!store.is_dnc("13800000000").unwrap());
    }

    #[test]
    fn a_full_disk_is_reported_as_such() {
        let store = Store::open_in_memory().unwrap();
        store
            .start_call(&NewCall {
                call_id: "c".into(),
                transport: "eval".into(),
                to_number: None,
                from_number: None,
                call_sid: None,
                stream_sid: None,
                started_at: OffsetDateTime::UNIX_EPOCH,
            })
            .unwrap();
        // Cap the database at its current size: the next pages cannot be allocated.
        {
            let conn = store.lock();
            let pages: i64 = conn
                .pragma_query_value(None, "page_count", |row| row.get(0))
                .unwrap();
            conn.pragma_update(None, "max_page_count", pages).unwrap();
        }
        let big = "说".repeat(20_000);
        let err = (0..10)
            .find_map(|_| store.record_event("c", "note", &big).err())
            .expect("the capped database fills up");
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        assert!(err.to_string().contains(":memory: is full"), "{err}");
    }

    #[test]
    fn migrations_bring_a_new_database_to_the_latest_version() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let conn = store.lock();
        let applied: Vec<(i64, String)> = conn
            .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<(i64, String)> = MIGRATIONS
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (i as i64 + 1, name.to_string()))
            .collect();
        assert_eq!(applied, expected);
        for table in ["calls", "turns", "do_not_call", "call_events"] {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "table {table}");
        }
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = DbPath(":memory:".into());
        migrate(&mut conn, &path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        let err = migrate(&mut conn, &DbPath("x.sqlite".into())).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found: 999, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("x.sqlite"), "{err}");
    }

    #[test]
    fn stored_times_have_a_fixed_width() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.5 +08:00);
        assert_eq!(format_time(t).unwrap(), "2026-01-01T19:04:05.500Z");
        assert_eq!(now_text().len(), "2026-01-01T19:04:05.500Z".len());
    }

    #[test]
    fn sqlite_errors_map_to_actionable_messages() {
        let path = DbPath("data/x.sqlite".into());
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None);
        let err = classify(&path, full);
        assert!(matches!(err, StoreError::DiskFull { .. }));
        assert!(err.to_string().contains("data/x.sqlite is full"), "{err}");
        let notadb = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(26), None);
        assert!(matches!(
            classify(&path, notadb),
            StoreError::Corrupt { .. }
        ));
    }

    #[test]
    fn store_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Store>();
    }
}
