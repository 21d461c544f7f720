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
//! kept in `PRAGMA user_version` and listed in the `schema_migrations` table. A file that is
//! an SQLite database of another program is refused, never migrated.
//!
//! Phone numbers are stored normalized (see [`normalize_number`]), so
//! `"+86 138-0000-0000"` and `"+8613800000000"` are the same do-not-call entry; the
//! do-not-call lookups also treat a Chinese national spelling (`138 0000 0000`) as the
//! same number as its +86 form (see [`same_number_forms`]).
//!
//! Do-not-call comes before anything else. An entry the database cannot take (full disk,
//! I/O error, a lock held too long) is kept pending in memory, appended to the fsync'd
//! [`journal`] (by default next to the database; `--dnc-journal` puts it on another disk),
//! and retried until it lands; every lookup reads the pending entries and the journal too,
//! and [`Store::health`] reports the store unhealthy until they are in the database, so the
//! servers refuse new calls and the dialers place none. Opening a store replays the journal.
//!
//! Each long-running process registers itself ([`Store::start_instance`]): a row in
//! `instances` with a heartbeat every [`HEARTBEAT_EVERY`], and a keeper thread that also
//! retries the pending entries. Calls carry their owner, so [`Store::close_interrupted_calls`]
//! closes the calls of a dead process at once, whatever their age, and leaves a live
//! process's calls alone.

pub mod instances;
pub mod journal;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use crate::labels::Outcome;
use crate::session::TurnRecord;
pub use instances::{HEARTBEAT_EVERY, InstanceGuard};
use journal::DncJournal;

/// The embedded schema migrations, applied in order. The version of a migration is its
/// position in this list, starting at 1. Never edit a released migration: add a new one.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    (
        "0002_owners_and_dial_attempts",
        include_str!("../migrations/0002_owners_and_dial_attempts.sql"),
    ),
    (
        "0003_turn_confidence",
        include_str!("../migrations/0003_turn_confidence.sql"),
    ),
];

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
        "there is no database at {path}: pass --db with the path `renewal-bot serve` uses, or create a new one there by starting `renewal-bot serve --db {path}` (or `renewal-bot dnc add NUMBER --db {path}`)"
    )]
    Missing { path: DbPath },

    #[error(
        "the file at {path} is an SQLite database of another program (tables: {tables}); renewal-bot leaves it alone: pass --db with a renewal-bot database or a new path"
    )]
    Foreign { path: DbPath, tables: String },

    #[error(
        "the database at {path} fails SQLite's quick_check ({problems}); restore a backup, or recover what is left with `sqlite3 {path} .recover | sqlite3 recovered.sqlite` and pass --db recovered.sqlite"
    )]
    FailsQuickCheck { path: DbPath, problems: String },

    #[error(
        "{number} could not be written to the do-not-call list in the database at {path} ({cause}); it is kept in the do-not-call journal at {journal}, counts as on the list for every renewal-bot command, and is written to the database as soon as it can be"
    )]
    DncPending {
        number: String,
        path: DbPath,
        cause: String,
        journal: String,
    },

    #[error(
        "{number} could not be written to the do-not-call list in the database at {path} ({cause}) nor to the journal ({journal_error}); it is held in this process only, retried until it lands, and no new call is taken meanwhile: free space before stopping renewal-bot"
    )]
    DncNotDurable {
        number: String,
        path: DbPath,
        cause: String,
        journal_error: String,
    },

    #[error(
        "{number} is still waiting in the do-not-call journal at {journal} to be written to the database; free space on the database's disk (any renewal-bot command then writes it), then remove it"
    )]
    DncRemovePending { number: String, journal: String },

    #[error(
        "cannot read the do-not-call journal at {path} ({detail}); fix its permissions or pass --dnc-journal PATH"
    )]
    Journal {
        path: String,
        detail: std::io::Error,
    },

    #[error(
        "the database at {path} is read-only ({detail}); check the permissions of the file and its directory, or pass --db PATH"
    )]
    ReadOnly {
        path: DbPath,
        detail: rusqlite::Error,
    },

    #[error(
        "disk full: the disk holding the database at {path} is full; free space on that disk (or pass --db PATH on another disk) and try again"
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

impl StoreError {
    /// The problem in a few words, for a sentence that names the database itself:
    /// "disk full", "read-only", ...
    pub fn cause(&self) -> String {
        match self {
            StoreError::DiskFull { .. } => "disk full".into(),
            StoreError::ReadOnly { .. } => "the database is read-only".into(),
            StoreError::Busy { .. } => "locked by another process".into(),
            StoreError::Corrupt { detail, .. } => format!("corrupt: {detail}"),
            StoreError::Open { reason, .. } => reason.clone(),
            StoreError::Sqlite { detail, .. } => detail.to_string(),
            other => other.to_string(),
        }
    }
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

/// One row of the do-not-call list (and one line of the [`journal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Outbound calls: `dialing` (the Calls API's answer is not known), `placed`, `refused`,
    /// `not_placed` or `merged` (see `migrations/0002_owners_and_dial_attempts.sql`);
    /// `None` for calls that came in.
    pub dial_status: Option<String>,
}

/// Whether the store can be trusted with new calls, as `/healthz`, `/twiml`, the SIP server
/// and the dialers ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    /// Do-not-call entries not in the database yet (this process's and the journal's).
    pub pending_do_not_call: usize,
    /// Why the store is unhealthy; `None` when it is healthy.
    pub problem: Option<String>,
}

impl StoreHealth {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// What [`Store::open_with`] does with a path that has no database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Create it (and its directories): `serve`, `sip`, `eval`, `dnc add`.
    Create,
    /// Refuse with [`StoreError::Missing`]: every other command, so a mistyped `--db`
    /// never stands in for the real list.
    Refuse,
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub if_missing: IfMissing,
    /// The do-not-call journal; `None`: [`default_journal_path`].
    pub dnc_journal: Option<PathBuf>,
}

/// The do-not-call journal's default place: next to the database (`X.sqlite` →
/// `X.sqlite.dnc-journal`). Better on another disk: see `--dnc-journal`.
pub fn default_journal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".dnc-journal");
    PathBuf::from(name)
}

/// One stored turn of a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// The recognizer's confidence in the transcript (0–1), if it was heard.
    pub confidence: Option<f32>,
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
    durable: Arc<Durable>,
}

/// What keeps do-not-call durable while the database cannot take it, shared by clones.
struct Durable {
    journal: Option<DncJournal>,
    state: Mutex<DurableState>,
    /// This process's `instances.instance_id`, once registered: stamped on the calls it
    /// starts.
    instance: OnceLock<String>,
    /// Whether opening created the database.
    created: bool,
}

#[derive(Default)]
struct DurableState {
    /// Entries the database has not taken yet, oldest first.
    pending: Vec<Pending>,
    /// Why the pending entries did not land, in a few words ("disk full").
    pending_cause: Option<String>,
    /// Why the last heartbeat could not be written, while it cannot.
    write_error: Option<String>,
    /// Why the journal could not be written, while it cannot.
    journal_error: Option<String>,
}

struct Pending {
    entry: DncEntry,
    /// In the journal, so a restart keeps it.
    journaled: bool,
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

/// Now, as the store writes times (RFC 3339 UTC with milliseconds).
pub fn now_rfc3339() -> String {
    now_text()
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
    /// and bring its schema up to date; the do-not-call journal is the default one next to
    /// it. See [`Store::open_with`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(
            path,
            &OpenOptions {
                if_missing: IfMissing::Create,
                dnc_journal: None,
            },
        )
    }

    /// Open the database at `path` (creating it only with [`IfMissing::Create`]), bring its
    /// schema up to date, and write the journal's do-not-call entries into it. A path with
    /// no file, or an empty one, has no database.
    pub fn open_with(path: &Path, options: &OpenOptions) -> Result<Store, StoreError> {
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
        let missing = std::fs::metadata(path).map_or(true, |meta| meta.len() == 0);
        if missing && options.if_missing == IfMissing::Refuse {
            return Err(StoreError::Missing { path: db_path });
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
        let journal = options
            .dnc_journal
            .clone()
            .unwrap_or_else(|| default_journal_path(path));
        let store = Self::init(conn, db_path, Some(DncJournal::new(journal)), missing)?;
        // Entries a run could not write (full disk) land now, if the database takes them.
        store.retry_pending();
        Ok(store)
    }

    /// A private, empty in-memory database (for tests and the evaluator). It has no
    /// journal: an entry it cannot take is only kept pending in memory.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let db_path = DbPath(PathBuf::from(":memory:"));
        let conn = Connection::open_in_memory().map_err(|e| classify(&db_path, e))?;
        Self::init(conn, db_path, None, true)
    }

    fn init(
        mut conn: Connection,
        path: DbPath,
        journal: Option<DncJournal>,
        created: bool,
    ) -> Result<Store, StoreError> {
        let on_disk = journal.is_some();
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
            durable: Arc::new(Durable {
                journal,
                state: Mutex::new(DurableState::default()),
                instance: OnceLock::new(),
                created,
            }),
        })
    }

    /// Whether opening this store created its database.
    pub fn created(&self) -> bool {
        self.durable.created
    }

    /// The do-not-call journal, `None` for in-memory stores.
    pub fn journal_path(&self) -> Option<&Path> {
        self.durable.journal.as_ref().map(DncJournal::path)
    }

    /// SQLite's `PRAGMA quick_check`: `serve` and `sip` refuse a database that fails it.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        let rows = self.query_rows(&conn, "PRAGMA quick_check(5)", [], |row| {
            row.get::<_, String>(0)
        })?;
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(());
        }
        let lines: Vec<&str> = rows
            .iter()
            .flat_map(|row| row.lines())
            .filter(|line| !line.starts_with("***"))
            .collect();
        let mut problems = lines.iter().take(3).copied().collect::<Vec<_>>().join("; ");
        if lines.len() > 3 {
            problems.push_str("; …");
        }
        Err(StoreError::FailsQuickCheck {
            path: (*self.path).clone(),
            problems,
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
            "INSERT INTO calls (call_id, transport, to_number, from_number, call_sid, stream_sid,
                                started_at, owner_instance)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                call.call_id,
                call.transport,
                to_number,
                from_number,
                call.call_sid,
                call.stream_sid,
                started_at,
                self.instance_id()
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Attach the Twilio CallSid and StreamSid (known once the media stream starts). The
    /// call now belongs to this process (the server running its media).
    pub fn set_stream(
        &self,
        call_id: &str,
        call_sid: &str,
        stream_sid: &str,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        let changed = conn
            .execute(
                "UPDATE calls SET call_sid = ?2, stream_sid = ?3,
                                  owner_instance = COALESCE(?4, owner_instance)
                 WHERE call_id = ?1",
                params![call_id, call_sid, stream_sid, self.instance_id()],
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
                                intent, intents, reply, latency_ms, recorded_at, confidence)
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
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
                now_text(),
                turn.confidence.map(f64::from)
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
        let result = self.finish_call_now(call_id, outcome, do_not_call, duration_ms);
        if do_not_call && result.is_err() {
            // The end of the call can wait for the next start; the do-not-call entry cannot.
            let number = self
                .get_call(call_id)
                .ok()
                .flatten()
                .and_then(|c| c.to_number);
            if let Some(number) = number {
                let entry = DncEntry {
                    number,
                    reason: format!("call outcome: {}", outcome.as_str()),
                    source_call_id: Some(call_id.to_string()),
                    added_at: now_text(),
                };
                if let Err(err) = result.as_ref() {
                    let _ = self.keep_pending(entry, err);
                }
            }
        }
        result
    }

    fn finish_call_now(
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
                "UPDATE calls SET outcome = ?2, do_not_call = MAX(do_not_call, ?3),
                                  duration_ms = ?4, ended_at = ?5
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
                let entry = DncEntry {
                    number,
                    reason: format!("call outcome: {}", outcome.as_str()),
                    source_call_id: Some(call_id.to_string()),
                    added_at: now.clone(),
                };
                insert_dnc(&tx, &entry).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Put a number on the do-not-call list for good. Returns `true` if it was not there
    /// yet (in any spelling, see [`same_number_forms`]); an existing entry (its reason
    /// and time) is never overwritten.
    ///
    /// When the database cannot take it, the entry is kept pending (in memory and in the
    /// journal) and retried, and the error says so: [`StoreError::DncPending`], or
    /// [`StoreError::DncNotDurable`] when the journal cannot be written either.
    pub fn add_dnc(
        &self,
        number: &str,
        reason: &str,
        source_call_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let number = normalize_number(number)?;
        let entry = DncEntry {
            number,
            reason: reason.to_string(),
            source_call_id: source_call_id.map(str::to_string),
            added_at: now_text(),
        };
        match self.insert_entry(&entry) {
            Ok(added) => {
                if added {
                    tracing::info!(db = %self.path, number = %entry.number, ?source_call_id, "added to the do-not-call list");
                }
                Ok(added)
            }
            Err(err) => Err(self.keep_pending(entry, &err)),
        }
    }

    fn insert_entry(&self, entry: &DncEntry) -> Result<bool, StoreError> {
        let conn = self.lock();
        insert_dnc(&conn, entry).map_err(|e| self.err(e))
    }

    fn durable_state(&self) -> MutexGuard<'_, DurableState> {
        self.durable
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps an entry the database refused with `cause`: pending in memory, and appended
    /// to the journal. Returns the error that tells the caller where the entry is.
    fn keep_pending(&self, entry: DncEntry, cause: &StoreError) -> StoreError {
        let cause = cause.cause();
        let mut state = self.durable_state();
        let known = state
            .pending
            .iter()
            .position(|p| p.entry.number == entry.number);
        let journaled = match known {
            Some(at) if state.pending[at].journaled => Ok(()),
            _ => self.append_to_journal(&entry),
        };
        match known {
            Some(at) => state.pending[at].journaled |= journaled.is_ok(),
            None => state.pending.push(Pending {
                entry: entry.clone(),
                journaled: journaled.is_ok(),
            }),
        }
        state.pending_cause = Some(cause.clone());
        state.journal_error = journaled.as_ref().err().cloned();
        drop(state);
        let number = entry.number;
        let path = (*self.path).clone();
        match journaled {
            Ok(()) => {
                let journal = self
                    .journal_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                tracing::error!(db = %path, %number, %cause, %journal, "the database cannot take a do-not-call entry: kept in the journal and retried");
                StoreError::DncPending {
                    number,
                    path,
                    cause,
                    journal,
                }
            }
            Err(journal_error) => {
                tracing::error!(db = %path, %number, %cause, %journal_error, "neither the database nor the journal can take a do-not-call entry: held in memory, retried; refusing new calls");
                StoreError::DncNotDurable {
                    number,
                    path,
                    cause,
                    journal_error,
                }
            }
        }
    }

    fn append_to_journal(&self, entry: &DncEntry) -> Result<(), String> {
        let Some(journal) = &self.durable.journal else {
            return Err("an in-memory database has no journal".into());
        };
        journal.append(entry).map_err(|err| {
            let what = if err.kind() == std::io::ErrorKind::StorageFull {
                "disk full".to_string()
            } else {
                err.to_string()
            };
            format!("{}: {what}", journal.path().display())
        })
    }

    /// The do-not-call entries kept outside the database: this process's pending ones and
    /// the journal's (each number once), whether or not they have landed since.
    fn waiting_entries(&self) -> Result<Vec<DncEntry>, StoreError> {
        let mut entries: Vec<DncEntry> = self
            .durable_state()
            .pending
            .iter()
            .map(|p| p.entry.clone())
            .collect();
        if let Some(journal) = &self.durable.journal {
            let journal_err = |detail| StoreError::Journal {
                path: journal.path().display().to_string(),
                detail,
            };
            if !journal.is_empty().map_err(journal_err)? {
                entries.extend(journal.read().map_err(journal_err)?);
            }
        }
        let mut seen = BTreeSet::new();
        entries.retain(|e| seen.insert(e.number.clone()));
        Ok(entries)
    }

    /// The do-not-call entries not in the database yet (full disk): this process's and the
    /// journal's. They count as on the list.
    pub fn pending_dnc(&self) -> Result<Vec<DncEntry>, StoreError> {
        let waiting = self.waiting_entries()?;
        if waiting.is_empty() {
            return Ok(waiting);
        }
        let conn = self.lock();
        Ok(waiting
            .into_iter()
            .filter(|e| !matches!(find_dnc(&conn, &e.number), Ok(Some(_))))
            .collect())
    }

    /// Writes the pending and journaled do-not-call entries into the database, empties the
    /// journal once all of it has landed, and retries the journal for entries it could
    /// not take. Returns how many entries are still not in the database.
    pub fn retry_pending(&self) -> usize {
        let waiting = match self.waiting_entries() {
            Ok(waiting) => waiting,
            Err(err) => {
                tracing::error!(%err, "cannot read the do-not-call entries waiting for the database");
                return self.durable_state().pending.len();
            }
        };
        if waiting.is_empty() {
            return 0;
        }
        let mut landed = BTreeSet::new();
        let mut failure = None;
        for entry in &waiting {
            match self.insert_entry(entry) {
                Ok(added) => {
                    if added {
                        tracing::info!(db = %self.path, number = %entry.number, source_call_id = ?entry.source_call_id, "a waiting do-not-call entry is now in the database");
                    }
                    landed.insert(entry.number.clone());
                }
                Err(err) => failure = Some(err),
            }
        }
        let remaining = {
            let mut state = self.durable_state();
            state.pending.retain(|p| !landed.contains(&p.entry.number));
            let mut journal_error = None;
            for i in 0..state.pending.len() {
                if !state.pending[i].journaled {
                    match self.append_to_journal(&state.pending[i].entry) {
                        Ok(()) => state.pending[i].journaled = true,
                        Err(err) => journal_error = Some(err),
                    }
                }
            }
            state.journal_error = journal_error;
            if let Some(err) = &failure {
                state.pending_cause = Some(err.cause());
            } else if state.pending.is_empty() {
                state.pending_cause = None;
            }
            state.pending.len()
        };
        if let Some(journal) = &self.durable.journal {
            let all_landed = journal.clear_if_all(|entry| {
                let conn = self.lock();
                matches!(find_dnc(&conn, &entry.number), Ok(Some(_)))
            });
            match all_landed {
                Ok(true) if failure.is_none() => {
                    tracing::info!(journal = %journal.path().display(), "every journaled do-not-call entry is in the database: journal emptied");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(journal = %journal.path().display(), %err, "cannot empty the do-not-call journal");
                }
            }
        }
        if let Some(err) = failure {
            tracing::warn!(%err, "do-not-call entries still cannot be written; retrying");
        }
        remaining.max(waiting.len() - landed.len())
    }

    /// Whether the store can be trusted with new calls: no do-not-call entry is waiting
    /// for the database (here or in the journal) and the last heartbeat could be written.
    pub fn health(&self) -> StoreHealth {
        let (pending_cause, write_error, journal_error) = {
            let state = self.durable_state();
            (
                state.pending_cause.clone(),
                state.write_error.clone(),
                state.journal_error.clone(),
            )
        };
        let pending = match self.pending_dnc() {
            Ok(pending) => pending.len(),
            Err(err) => {
                return StoreHealth {
                    pending_do_not_call: self.durable_state().pending.len(),
                    problem: Some(err.to_string()),
                };
            }
        };
        let problem = if pending > 0 {
            let cause =
                pending_cause.unwrap_or_else(|| "the database has not taken them yet".into());
            let kept = match (journal_error, self.journal_path()) {
                (Some(err), _) => format!(
                    "the journal cannot be written either ({err}): a restart now would lose them"
                ),
                (None, Some(journal)) => format!("kept in the journal at {}", journal.display()),
                (None, None) => "kept in memory only".into(),
            };
            Some(format!(
                "{pending} do-not-call request(s) not yet written to the database at {} ({cause}); {kept}; new calls are refused until they are written",
                self.path
            ))
        } else {
            write_error.map(|err| {
                format!(
                    "the database at {} cannot be written ({err}); new calls are refused until it can",
                    self.path
                )
            })
        };
        StoreHealth {
            pending_do_not_call: pending,
            problem,
        }
    }

    /// Whether the number is on the do-not-call list, in any spelling: `+86 138-0000-0000`,
    /// `+8613800000000`, `008613800000000` and `138 0000 0000` are all the same number.
    /// Entries still waiting for the database (pending, journal) count.
    pub fn is_dnc(&self, number: &str) -> Result<bool, StoreError> {
        Ok(self.get_dnc(number)?.is_some())
    }

    /// The entry for a number (in any spelling), if it is on the list or waiting for it.
    pub fn get_dnc(&self, number: &str) -> Result<Option<DncEntry>, StoreError> {
        let number = normalize_number(number)?;
        {
            let conn = self.lock();
            if let Some(entry) = find_dnc(&conn, &number).map_err(|e| self.err(e))? {
                return Ok(Some(entry));
            }
        }
        let forms = same_number_forms(&number);
        Ok(self
            .waiting_entries()?
            .into_iter()
            .find(|e| forms.contains(&e.number)))
    }

    /// Take a number (every spelling of it) off the list, an operator's decision.
    /// Returns whether it was there. Refused while the number waits in the journal (it
    /// would come back when the journal lands).
    pub fn remove_dnc(&self, number: &str) -> Result<bool, StoreError> {
        let number = normalize_number(number)?;
        let forms = same_number_forms(&number);
        if self
            .waiting_entries()?
            .iter()
            .any(|e| forms.contains(&e.number))
        {
            return Err(StoreError::DncRemovePending {
                number,
                journal: self
                    .journal_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(memory)".into()),
            });
        }
        let conn = self.lock();
        let mut removed = 0;
        for form in forms {
            removed += conn
                .execute("DELETE FROM do_not_call WHERE number = ?1", [form])
                .map_err(|e| self.err(e))?;
        }
        if removed > 0 {
            tracing::info!(db = %self.path, %number, "removed from the do-not-call list");
        }
        Ok(removed > 0)
    }

    /// The whole do-not-call list, oldest first, with the entries still waiting for the
    /// database (see [`Store::pending_dnc`]).
    pub fn list_dnc(&self) -> Result<Vec<DncEntry>, StoreError> {
        let mut entries = {
            let conn = self.lock();
            self.query_rows(
                &conn,
                "SELECT number, reason, source_call_id, added_at FROM do_not_call
                     ORDER BY added_at, number",
                [],
                DncEntry::from_row,
            )?
        };
        let pending = self.pending_dnc()?;
        if !pending.is_empty() {
            entries.extend(pending);
            entries.sort_by(|a, b| (&a.added_at, &a.number).cmp(&(&b.added_at, &b.number)));
        }
        Ok(entries)
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
                        latency_ms, recorded_at, confidence
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

    /// Records an outbound call attempt before the Calls API request is sent
    /// (`dial_status = 'dialing'`, owned by this process), so a crash while the request is
    /// in flight leaves a trace to reconcile instead of a blind redial.
    pub fn record_dial_attempt(
        &self,
        call_id: &str,
        to_number: &str,
        from_number: &str,
        started_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.start_call(&NewCall {
            call_id: call_id.to_string(),
            transport: "twilio".into(),
            to_number: Some(to_number.to_string()),
            from_number: Some(from_number.to_string()),
            call_sid: None,
            stream_sid: None,
            started_at,
        })?;
        let conn = self.lock();
        conn.execute(
            "UPDATE calls SET dial_status = 'dialing' WHERE call_id = ?1",
            [call_id],
        )
        .map_err(|e| self.err(e))?;
        conn.execute(
            "INSERT INTO call_events (call_id, at, kind, detail) VALUES (?1, ?2, 'dialing', ?3)",
            params![call_id, now_text(), "Calls API request sent"],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Twilio created the attempt's call: its CallSid and first status.
    pub fn dial_placed(
        &self,
        call_id: &str,
        call_sid: &str,
        twilio_status: &str,
    ) -> Result<(), StoreError> {
        self.update_dial(
            call_id,
            "UPDATE calls SET call_sid = ?2, dial_status = 'placed' WHERE call_id = ?1",
            call_sid,
            ("status", twilio_status),
        )
    }

    /// Twilio refused the attempt's request (`why`): no call was made.
    pub fn dial_refused(&self, call_id: &str, why: &str) -> Result<(), StoreError> {
        self.update_dial(
            call_id,
            "UPDATE calls SET dial_status = 'refused', ended_at = ?2 WHERE call_id = ?1",
            &now_text(),
            ("dial_refused", why),
        )
    }

    /// Twilio's answer to the attempt's request was lost (`why`): the call may exist. The
    /// attempt stays `dialing` until it is reconciled with Twilio's call list.
    pub fn dial_result_unknown(&self, call_id: &str, why: &str) -> Result<(), StoreError> {
        self.record_event(call_id, "dial_unknown", why)
    }

    /// Settles an attempt whose result was unknown, from Twilio's call list: `found` is the
    /// call Twilio made for it (CallSid and status), `None` when there is none.
    pub fn resolve_dial(
        &self,
        call_id: &str,
        found: Option<(&str, &str)>,
        detail: &str,
    ) -> Result<DialResolution, StoreError> {
        let Some((call_sid, twilio_status)) = found else {
            self.update_dial(
                call_id,
                "UPDATE calls SET dial_status = 'not_placed', ended_at = ?2 WHERE call_id = ?1",
                &now_text(),
                ("reconciled", detail),
            )?;
            return Ok(DialResolution::NotPlaced);
        };
        if let Some(other) = self
            .find_call_by_sid(call_sid)?
            .filter(|other| other != call_id)
        {
            // The server recorded the call under its own id (the CallSid was unknown to it).
            self.update_dial(
                call_id,
                "UPDATE calls SET dial_status = 'merged', ended_at = ?2 WHERE call_id = ?1",
                &now_text(),
                ("reconciled", &format!("{detail}; recorded as call {other}")),
            )?;
            return Ok(DialResolution::RecordedAs(other));
        }
        self.update_dial(
            call_id,
            "UPDATE calls SET call_sid = ?2, dial_status = 'placed' WHERE call_id = ?1",
            call_sid,
            ("reconciled", detail),
        )?;
        self.record_event(call_id, "status", twilio_status)?;
        Ok(DialResolution::Placed)
    }

    fn update_dial(
        &self,
        call_id: &str,
        sql: &str,
        value: &str,
        (kind, detail): (&str, &str),
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let changed = tx
            .execute(sql, params![call_id, value])
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(self.unknown_call(call_id));
        }
        tx.execute(
            "INSERT INTO call_events (call_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![call_id, now_text(), kind, detail],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// An outbound dial whose result is not known (see [`Store::unresolved_dials`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialAttempt {
    pub call_id: String,
    /// Normalized.
    pub to_number: String,
    pub from_number: Option<String>,
    /// RFC 3339 UTC: when the attempt was recorded, just before the request.
    pub started_at: String,
    /// The process that sent the request, while it still runs (`campaign`, pid 1234): its
    /// request may still be in flight.
    pub live_owner: Option<String>,
}

/// How [`Store::resolve_dial`] settled an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResolution {
    /// Twilio made the call; the attempt now has its CallSid.
    Placed,
    /// Twilio made the call and it is recorded under this other call id.
    RecordedAs(String),
    /// Twilio has no such call: the request never reached it.
    NotPlaced,
}

/// The columns [`CallRow::from_row`] reads, in order.
const CALL_COLUMNS: &str = "call_id, transport, to_number, from_number, call_sid, stream_sid, \
                            started_at, ended_at, duration_ms, outcome, do_not_call, dial_status";

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
            dial_status: row.get(11)?,
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
    /// reply, latency_ms, recorded_at, confidence FROM turns`.
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
            confidence: row.get::<_, Option<f64>>(9)?.map(|c| c as f32),
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
/// The call that asked is flagged `do_not_call` either way, so its flag matches the list.
fn insert_dnc(conn: &Connection, entry: &DncEntry) -> rusqlite::Result<bool> {
    let added = if find_dnc(conn, &entry.number)?.is_some() {
        false
    } else {
        conn.execute(
            "INSERT OR IGNORE INTO do_not_call (number, reason, source_call_id, added_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                entry.number,
                entry.reason,
                entry.source_call_id,
                entry.added_at
            ],
        )? > 0
    };
    if let Some(call_id) = &entry.source_call_id {
        conn.execute(
            "UPDATE calls SET do_not_call = 1 WHERE call_id = ?1 AND do_not_call = 0",
            [call_id],
        )?;
    }
    Ok(added)
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
    // SQLite's message without the statement it was about (our migration SQL is no help).
    let e = match e {
        rusqlite::Error::SqlInputError { error, msg, .. } => {
            rusqlite::Error::SqliteFailure(error, Some(msg))
        }
        other => other,
    };
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { path, detail: e },
        // SQLite reports some writes on a full disk (the WAL index, a file growing) as a
        // bare "disk I/O error": tell a full disk from a failing one.
        Some(ErrorCode::SystemIoFailure) if disk_is_full(&path) => {
            StoreError::DiskFull { path, detail: e }
        }
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

/// Whether the disk holding the database has no room left: a page-sized probe file next to
/// it cannot be written.
fn disk_is_full(path: &DbPath) -> bool {
    if path.0.as_os_str() == ":memory:" {
        return false;
    }
    let mut probe = path.0.as_os_str().to_owned();
    probe.push(".space-probe");
    let probe = PathBuf::from(probe);
    let result = std::fs::write(&probe, [0u8; 4096]).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&probe)?
            .sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    matches!(
        result,
        Err(err) if matches!(err.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
    )
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
    if current == 0 {
        // A database never migrated has no tables: one with tables belongs to another
        // program. Never migrate it (nor fail half-way with our SQL in the message).
        let mut statement = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
                 ORDER BY name",
            )
            .map_err(err)?;
        let foreign: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        drop(statement);
        if !foreign.is_empty() {
            return Err(StoreError::Foreign {
                path: path.clone(),
                tables: foreign.join(", "),
            });
        }
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
        for table in ["calls", "turns", "do_not_call", "call_events", "instances"] {
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
