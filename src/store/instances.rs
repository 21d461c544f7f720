//! Which renewal-bot processes use the database, and the calls a dead one left open.
//!
//! Each long-running command (`serve`, `sip`, `campaign`, `call`) registers an instance (a
//! row in `instances`) with [`Store::start_instance`]. Its keeper thread refreshes the
//! heartbeat every [`HEARTBEAT_EVERY`], retries the do-not-call entries waiting for the
//! database, and, in the servers, closes the calls of dead instances. A process is dead
//! when its heartbeat is older than [`DEAD_AFTER`] or, on the same host (boot id and pid
//! namespace), when its pid is gone or now belongs to a newer process: so a server
//! restarted right after a `kill -9` closes the calls it had cut off at once, whatever
//! their age, while the calls of another live process sharing the database stay open.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::params;
use time::OffsetDateTime;

use super::{
    DialAttempt, Store, StoreError, find_dnc, format_time, normalize_number, now_text,
    same_number_forms,
};

/// How often a running process refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A heartbeat older than this: the process is gone (killed, crashed, its machine down).
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// How often the keeper retries do-not-call entries waiting for the database.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often a server looks for calls of dead processes.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Calls recorded by a renewal-bot older than schema version 2 have no owner: closed only
/// when no call could still be running (two minutes of talk, ringing, the closing line).
const UNOWNED_CLOSED_AFTER: Duration = Duration::from_secs(600);
/// A placed call whose media never started is Twilio's until its final status callback
/// (ringing lasts at most 600 s); closed after this even if that callback never came.
const UNANSWERED_CLOSED_AFTER: Duration = Duration::from_secs(900);

/// Where a pid means something, and which process it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessId {
    pid: u32,
    /// Boot id and pid namespace: two rows with the same host see the same pids.
    host: String,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat`, field 22).
    proc_start: String,
}

fn this_process() -> ProcessId {
    let pid = std::process::id();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let host = if boot.is_empty() || namespace.is_empty() {
        // No way to check pids: only heartbeats tell.
        format!("unknown-{}", uuid::Uuid::new_v4())
    } else {
        format!("{boot}/{namespace}")
    };
    ProcessId {
        pid,
        host,
        proc_start: proc_start(pid).unwrap_or_default(),
    }
}

/// Field 22 of `/proc/PID/stat`, counted after the command name (which may hold spaces).
fn proc_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// One row of `instances`.
struct InstanceRow {
    command: String,
    process: ProcessId,
    heartbeat_at: String,
}

impl InstanceRow {
    fn is_alive(&self, me: &ProcessId, heartbeat_cutoff: &str) -> bool {
        if self.heartbeat_at.as_str() < heartbeat_cutoff {
            return false;
        }
        if self.process.host != me.host || self.process.proc_start.is_empty() {
            return true;
        }
        proc_start(self.process.pid).as_deref() == Some(self.process.proc_start.as_str())
    }

    fn describe(&self) -> String {
        format!("`{}`, pid {}", self.command, self.process.pid)
    }
}

fn instances(conn: &rusqlite::Connection) -> rusqlite::Result<HashMap<String, InstanceRow>> {
    let mut statement = conn.prepare(
        "SELECT instance_id, command, pid, host, proc_start, heartbeat_at FROM instances",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            InstanceRow {
                command: row.get(1)?,
                process: ProcessId {
                    pid: row.get(2)?,
                    host: row.get(3)?,
                    proc_start: row.get(4)?,
                },
                heartbeat_at: row.get(5)?,
            },
        ))
    })?;
    rows.collect()
}

fn heartbeat_cutoff() -> Result<String, StoreError> {
    format_time(OffsetDateTime::now_utc() - DEAD_AFTER)
}

/// This process's registration; dropping it stops the keeper thread and deletes the row
/// (a clean exit: the process's calls are all finished by then).
pub struct InstanceGuard {
    store: Store,
    id: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    keeper: Option<JoinHandle<()>>,
}

impl InstanceGuard {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        // Entries that landed while stopping must not wait for the next start.
        self.store.retry_pending();
        let conn = self.store.lock();
        if let Err(err) = conn.execute("DELETE FROM instances WHERE instance_id = ?1", [&self.id]) {
            tracing::warn!(instance = %self.id, %err, "cannot unregister this process from the database");
        }
    }
}

impl Store {
    /// Registers this process as a running `command` and starts its keeper thread
    /// (heartbeat, do-not-call retries and, with `close_dead_calls`, closing the calls of
    /// dead processes). A database that cannot be written now is retried by the keeper;
    /// meanwhile [`Store::health`] reports it.
    pub fn start_instance(&self, command: &str, close_dead_calls: bool) -> InstanceGuard {
        let id = self
            .durable
            .instance
            .get_or_init(|| format!("{command}-{}", uuid::Uuid::new_v4()))
            .clone();
        let process = this_process();
        self.beat(&id, command, &process);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let keeper = {
            let (store, id, command, stop) = (
                self.clone(),
                id.clone(),
                command.to_string(),
                Arc::clone(&stop),
            );
            let span = tracing::info_span!("keeper", instance = %id);
            std::thread::Builder::new()
                .name("store-keeper".into())
                .spawn(move || {
                    let _entered = span.enter();
                    store.keep(&id, &command, &process, close_dead_calls, &stop);
                })
                .map_err(|err| tracing::error!(%err, "cannot start the store keeper thread"))
                .ok()
        };
        InstanceGuard {
            store: self.clone(),
            id,
            stop,
            keeper,
        }
    }

    /// This process's instance id, once [`Store::start_instance`] ran.
    pub fn instance_id(&self) -> Option<&str> {
        self.durable.instance.get().map(String::as_str)
    }

    fn keep(
        &self,
        id: &str,
        command: &str,
        process: &ProcessId,
        close_dead_calls: bool,
        stop: &(Mutex<bool>, Condvar),
    ) {
        let (stopped, wake) = stop;
        let mut last_beat = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            let guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = wake
                .wait_timeout_while(guard, RETRY_EVERY, |stopped| !*stopped)
                .unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
            drop(guard);
            self.retry_pending();
            if last_beat.elapsed() >= HEARTBEAT_EVERY {
                last_beat = Instant::now();
                self.beat(id, command, process);
            }
            if close_dead_calls && last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                log_closed(self.close_interrupted_calls());
            }
        }
    }

    /// Writes the heartbeat (registering the instance if its row is missing), and records
    /// whether the database could take it.
    fn beat(&self, id: &str, command: &str, process: &ProcessId) {
        let now = now_text();
        let result = {
            let conn = self.lock();
            conn.execute(
                "INSERT INTO instances (instance_id, command, pid, host, proc_start, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![id, command, process.pid, process.host, process.proc_start, now],
            )
            .map_err(|e| self.err(e))
        };
        let mut state = self.durable_state();
        match result {
            Ok(_) => {
                if state.write_error.take().is_some() {
                    tracing::info!(db = %self.path, "the database can be written again");
                }
            }
            Err(err) => {
                if state.write_error.is_none() {
                    tracing::error!(db = %self.path, %err, "cannot write the heartbeat: refusing new calls until the database can be written");
                }
                state.write_error = Some(err.cause());
            }
        }
    }

    /// Closes the calls that a dead process left open (killed, crashed, power lost),
    /// whatever their age; the calls of live processes, and dial attempts whose result is
    /// not known yet (the dialer reconciles those), stay open. Each closed call gets an end
    /// time, an `interrupted` event and the `do_not_call` flag the list says it earned; its
    /// outcome stays empty, since nobody knows how it would have ended. Returns the ids of
    /// the calls closed.
    pub fn close_interrupted_calls(&self) -> Result<Vec<String>, StoreError> {
        let me = this_process();
        let my_id = self.instance_id().map(str::to_string);
        let now = OffsetDateTime::now_utc();
        let heartbeat_cutoff = heartbeat_cutoff()?;
        let unowned_cutoff = format_time(now - UNOWNED_CLOSED_AFTER)?;
        let unanswered_cutoff = format_time(now - UNANSWERED_CLOSED_AFTER)?;
        let now = format_time(now)?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let owners = instances(&tx).map_err(|e| self.err(e))?;
        type OpenCall = (
            String,
            Option<String>,
            String,
            Option<String>,
            bool,
            Option<String>,
        );
        let open: Vec<OpenCall> = {
            let mut statement = tx
                .prepare(
                    "SELECT call_id, to_number, started_at, owner_instance, stream_sid IS NOT NULL,
                            dial_status
                     FROM calls WHERE outcome IS NULL AND ended_at IS NULL ORDER BY started_at",
                )
                .map_err(|e| self.err(e))?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        let mut closed = Vec::new();
        for (call_id, to_number, started_at, owner, has_stream, dial_status) in open {
            if dial_status.as_deref() == Some("dialing") {
                continue;
            }
            // Inbound and SIP calls run their media from the start; an outbound one once
            // its stream started. Before that it is ringing, and Twilio's to end.
            let media_started = dial_status.is_none() || has_stream;
            let detail = match owner.as_deref() {
                None if started_at < unowned_cutoff => {
                    "the bot stopped before this call ended; closed at the next start".to_string()
                }
                None => continue,
                Some(id) if Some(id) == my_id.as_deref() => continue,
                Some(id) => match owners.get(id) {
                    Some(owner) if owner.is_alive(&me, &heartbeat_cutoff) => continue,
                    found if media_started || started_at < unanswered_cutoff => {
                        let who = found
                            .map_or_else(|| format!("instance {id}"), |owner| owner.describe());
                        format!(
                            "the renewal-bot process handling this call ({who}) stopped before it ended; closed by instance {}",
                            my_id.as_deref().unwrap_or("(unregistered)")
                        )
                    }
                    _ => continue,
                },
            };
            let listed = match to_number.as_deref() {
                Some(number) => {
                    find_dnc(&tx, number)
                        .map_err(|e| self.err(e))?
                        .is_some_and(|entry| {
                            entry.source_call_id.as_deref() == Some(call_id.as_str())
                                || entry.added_at >= started_at
                        })
                }
                None => false,
            };
            tx.execute(
                "UPDATE calls SET ended_at = ?2, do_not_call = MAX(do_not_call, ?3)
                 WHERE call_id = ?1",
                params![call_id, now, listed],
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO call_events (call_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![call_id, now, "interrupted", detail],
            )
            .map_err(|e| self.err(e))?;
            closed.push(call_id);
        }
        // Forget dead processes that own no open call any more.
        for (id, owner) in &owners {
            if Some(id.as_str()) != my_id.as_deref() && !owner.is_alive(&me, &heartbeat_cutoff) {
                tx.execute(
                    "DELETE FROM instances WHERE instance_id = ?1 AND NOT EXISTS (
                         SELECT 1 FROM calls WHERE owner_instance = ?1 AND ended_at IS NULL)",
                    [id],
                )
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(closed)
    }

    /// The outbound dials to `number` (any spelling) whose result is not known: the
    /// process was stopped, or Twilio's answer lost, while the Calls API request was in
    /// flight. Oldest first.
    pub fn unresolved_dials(&self, number: &str) -> Result<Vec<DialAttempt>, StoreError> {
        let number = normalize_number(number)?;
        let me = this_process();
        let heartbeat_cutoff = heartbeat_cutoff()?;
        let conn = self.lock();
        let owners = instances(&conn).map_err(|e| self.err(e))?;
        let mut attempts = Vec::new();
        for form in same_number_forms(&number) {
            let mut statement = conn
                .prepare(
                    "SELECT call_id, to_number, from_number, started_at, owner_instance FROM calls
                     WHERE dial_status = 'dialing' AND to_number = ?1",
                )
                .map_err(|e| self.err(e))?;
            let rows = statement
                .query_map([&form], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (call_id, to_number, from_number, started_at, owner) =
                    row.map_err(|e| self.err(e))?;
                let live_owner = owner
                    .as_deref()
                    .filter(|id| Some(*id) != self.instance_id())
                    .and_then(|id| owners.get(id))
                    .filter(|owner| owner.is_alive(&me, &heartbeat_cutoff))
                    .map(InstanceRow::describe);
                attempts.push(DialAttempt {
                    call_id,
                    to_number,
                    from_number,
                    started_at,
                    live_owner,
                });
            }
        }
        attempts.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(attempts)
    }
}

/// Logs what [`Store::close_interrupted_calls`] did.
pub fn log_closed(result: Result<Vec<String>, StoreError>) {
    match result {
        Ok(ids) if ids.is_empty() => {}
        Ok(ids) => tracing::warn!(
            calls = ids.len(),
            ids = %ids.join(", "),
            "closed calls that a stopped renewal-bot process left open (it stopped mid-call); their turns are kept"
        ),
        Err(err) => tracing::error!(%err, "cannot close the calls a stopped process left open"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = this_process();
        assert!(!me.proc_start.is_empty(), "no /proc/self/stat start time");
        let cutoff = heartbeat_cutoff().unwrap();
        let fresh = now_text();
        let alive = InstanceRow {
            command: "serve".into(),
            process: me.clone(),
            heartbeat_at: fresh.clone(),
        };
        assert!(alive.is_alive(&me, &cutoff));
        let reused_pid = InstanceRow {
            command: "serve".into(),
            process: ProcessId {
                proc_start: "1".into(),
                ..me.clone()
            },
            heartbeat_at: fresh,
        };
        assert!(
            !reused_pid.is_alive(&me, &cutoff),
            "pid reused by a newer process"
        );
        let silent = InstanceRow {
            command: "serve".into(),
            process: ProcessId {
                host: "elsewhere".into(),
                ..me.clone()
            },
            heartbeat_at: "2000-01-01T00:00:00.000Z".into(),
        };
        assert!(!silent.is_alive(&me, &cutoff), "no heartbeat for years");
    }
}
