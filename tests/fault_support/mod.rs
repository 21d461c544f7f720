//! What the fault tests share: the real `renewal-bot` binary started as a child process
//! (killed with SIGKILL, restarted on the same files), Twilio's side of a call against it
//! (`/twiml`, then the media stream played by `support::fake_call`), and checks of the
//! database afterwards read with a plain SQLite connection.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{self, CallPlan, Twiml, WsStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_renewal-bot");

/// A command line of the real binary, run from the repository root (for `script/`,
/// `audio/`, `models/`).
pub fn bot_command(args: &[&str], db: &Path, journal: Option<&Path>) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).arg("--db").arg(db);
    if let Some(journal) = journal {
        command.arg("--dnc-journal").arg(journal);
    }
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("TWILIO_AUTH_TOKEN")
        .env("NO_COLOR", "1");
    command
}

/// Runs a short command of the binary; its exit status and stdout + stderr.
pub fn run(args: &[&str], db: &Path, journal: Option<&Path>) -> (bool, String) {
    let out = bot_command(args, db, journal)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The line without terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process of the binary whose stderr is collected.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(mut command: Command) -> Proc {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&strip_ansi(&line));
                    log.push('\n');
                }
            }
        });
        Proc { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until stderr holds `needle`; the log so far.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the process exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up of any kind runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `renewal-bot serve` on `db`, listening on a free local port, signatures not checked.
pub struct Server {
    pub proc: Proc,
    pub base: String,
    http: reqwest::Client,
}

impl Server {
    pub fn start(db: &Path, journal: Option<&Path>) -> Server {
        let command = bot_command(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-skip-signature",
                "--log",
                "renewal_bot=info",
            ],
            db,
            journal,
        );
        let mut proc = Proc::spawn(command);
        let log = proc.wait_for_log("serving Twilio webhooks", Duration::from_secs(60));
        let line = log
            .lines()
            .find(|l| l.contains("serving Twilio webhooks"))
            .unwrap_or_default();
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .to_string();
        Server {
            proc,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// `GET /healthz`: status code and JSON body.
    pub async fn healthz(&self) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .expect("GET /healthz");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Waits until `/healthz` answers `status`; its last body.
    pub async fn wait_health(&self, status: u16, limit: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (got, body) = self.healthz().await;
            if got == status {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/healthz stayed {got} {body} instead of {status}; log:\n{}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Twilio fetching the TwiML for a call to `to`: the raw XML.
    pub async fn twiml_xml(&self, call_sid: &str, to: &str) -> String {
        let response = self
            .http
            .post(format!("{}/twiml", self.base))
            .form(&[
                ("AccountSid", support::ACCOUNT),
                ("CallSid", call_sid),
                ("CallStatus", "in-progress"),
                ("Direction", "outbound-api"),
                ("From", support::FROM),
                ("To", to),
                ("AnsweredBy", "human"),
            ])
            .send()
            .await
            .expect("POST /twiml");
        assert_eq!(response.status(), 200);
        response.text().await.expect("TwiML")
    }

    pub async fn twiml(&self, call_sid: &str, to: &str) -> Twiml {
        support::parse_twiml(&self.twiml_xml(call_sid, to).await)
    }

    pub async fn media(&self) -> WsStream {
        let url = format!("{}/media", self.base.replace("http://", "ws://"));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("open /media");
        ws
    }

    /// Starts a call to `to` whose callee plays `plan`; the call id and the running call.
    pub async fn call(
        &self,
        call_sid: &str,
        to: &str,
        plan: CallPlan,
    ) -> (String, tokio::task::JoinHandle<support::CallLog>) {
        let twiml = self.twiml(call_sid, to).await;
        let call_id = twiml.params.get("call_id").cloned().expect("call_id");
        let ws = self.media().await;
        let sid = call_sid.to_string();
        let task =
            tokio::spawn(async move { support::fake_call(ws, &sid, &twiml.params, plan).await });
        (call_id, task)
    }
}

/// The turns of a fixture case, as 8 kHz μ-law.
pub fn case_turns(name: &str) -> Vec<Vec<u8>> {
    let (manifest, dir) = support::fixtures();
    let case = manifest
        .cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture case {name}"));
    case.turns
        .iter()
        .map(|t| support::turn_mulaw(&dir, t))
        .collect()
}

/// A plain SQLite connection to the bot's database, for checks.
pub fn sqlite(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

pub fn integrity_check(db: &Path) -> String {
    sqlite(db)
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check")
}

/// The numbers on the do-not-call list, sorted.
pub fn dnc_numbers(db: &Path) -> Vec<String> {
    let conn = sqlite(db);
    let mut statement = conn
        .prepare("SELECT number FROM do_not_call ORDER BY number")
        .expect("select");
    statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// One call: (ended_at, outcome, do_not_call).
pub fn call_row(db: &Path, call_id: &str) -> (Option<String>, Option<String>, bool) {
    sqlite(db)
        .query_row(
            "SELECT ended_at, outcome, do_not_call FROM calls WHERE call_id = ?1",
            [call_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap_or_else(|e| panic!("no call {call_id}: {e}"))
}

pub fn event_kinds(db: &Path, call_id: &str) -> Vec<String> {
    let conn = sqlite(db);
    let mut statement = conn
        .prepare("SELECT kind FROM call_events WHERE call_id = ?1 ORDER BY id")
        .expect("select");
    statement
        .query_map([call_id], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
