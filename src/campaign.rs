//! Campaigns: `renewal-bot campaign numbers.csv` places the expiry call to every number of
//! a list through Twilio, a few at a time. Right before each dial, an earlier dial to the
//! number whose result is unknown (a crash mid-request) is reconciled with Twilio's call
//! list (a number Twilio cannot tell about is left alone), and the number is checked
//! against the store's health, the do-not-call list and the calls already made: a callee
//! who was reached has been told (every outcome ends follow-up for this notice), and one
//! who never answered is tried again only up to a limit.

use crate::dialer::{DialSettings, Dialer, PlacedCall, e164};
use crate::store::{CallRow, Store};
use anyhow::Context;
use futures_util::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::Instrument;

/// The longest a call lasts once answered (the script's two-minute limit, the closing
/// line, the hang-up), on top of its ringing time.
const LONGEST_CALL: Duration = Duration::from_secs(180);
/// How often the store is asked whether a placed call has ended.
const POLL: Duration = Duration::from_secs(1);

/// `renewal-bot campaign FILE`: the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct CampaignFlags {
    /// The numbers to call: a text or CSV file, one number per line (the `number` or
    /// `phone` column of a CSV with a header, else the first column). `#` starts a comment.
    pub numbers: PathBuf,
    /// Calls in progress at once. Each live call needs its share of the recognizer: two
    /// CPU cores handle about ten.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub concurrent: u16,
    /// Calls to a number that never answered before it is left alone.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub max_attempts: u16,
    /// Show what would be dialled and what skipped, and call no one.
    #[arg(long)]
    pub dry_run: bool,
    /// Caller id, public URL, ringing time and account, as for `renewal-bot call`.
    #[command(flatten)]
    pub call: DialSettings,
}

/// One line of the numbers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedNumber {
    /// 1-based line in the file.
    pub line: usize,
    pub raw: String,
}

/// What happened to one listed number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Not dialled, and why.
    Skipped(String),
    /// Would be dialled (`--dry-run`).
    WouldCall,
    /// Twilio refused or the call could not be recorded.
    Failed(String),
    /// Dialled; the call's outcome once it ended (`None`: still not ended when the
    /// campaign stopped waiting).
    Called {
        call: PlacedCall,
        outcome: Option<String>,
    },
}

/// Reads the numbers file. A CSV header is recognized by a `number`/`phone`/`to` column
/// (or a first row with no phone number in it) and skipped.
pub fn read_numbers(path: &Path) -> anyhow::Result<Vec<ListedNumber>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the numbers file {}", path.display()))?;
    // Line by line, so reported line numbers match the file; each line is still read as
    // CSV (quoted fields, commas inside quotes).
    let mut column = 0;
    let mut numbers = Vec::new();
    let mut header_checked = false;
    for (index, text_line) in text.lines().enumerate() {
        let line = index + 1;
        if text_line.trim().is_empty() || text_line.trim_start().starts_with('#') {
            continue;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text_line.as_bytes());
        let Some(record) = reader.records().next() else {
            continue;
        };
        let record = record.with_context(|| format!("{}:{line}: not valid CSV", path.display()))?;
        if !header_checked {
            header_checked = true;
            let header = record.iter().position(|field| {
                matches!(
                    field.to_lowercase().as_str(),
                    "number" | "phone" | "to" | "号码" | "电话" | "手机"
                )
            });
            if let Some(at) = header {
                column = at;
                continue;
            }
            if !record.iter().any(|field| e164(field).is_ok()) && record.len() > 1 {
                continue;
            }
        }
        let raw = record.get(column).unwrap_or_default().to_string();
        if !raw.is_empty() {
            numbers.push(ListedNumber { line, raw });
        }
    }
    if numbers.is_empty() {
        anyhow::bail!(
            "{} lists no numbers: write one per line, e.g. +8613800000000",
            path.display()
        );
    }
    Ok(numbers)
}

/// Whether `number` may be dialled now, judged from the store: `Err` says why not.
pub fn may_call(store: &Store, number: &str, max_attempts: u16) -> Result<(), String> {
    if let Some(problem) = store.health().problem {
        return Err(format!("not dialled: {problem}"));
    }
    if let Some(entry) = store
        .get_dnc(number)
        .map_err(|e| format!("cannot check the do-not-call list: {e}"))?
    {
        return Err(format!(
            "on the do-not-call list since {} ({})",
            entry.added_at, entry.reason
        ));
    }
    let calls = store
        .calls_to(number)
        .map_err(|e| format!("cannot read earlier calls: {e}"))?;
    if let Some(reached) = calls.iter().rev().find(|c| was_reached(c)) {
        return Err(format!(
            "already reached on {} (outcome {}); the notice has been given",
            reached.started_at,
            reached.outcome.as_deref().unwrap_or("not recorded")
        ));
    }
    if let Some(unknown) = calls
        .iter()
        .find(|c| c.dial_status.as_deref() == Some("dialing"))
    {
        return Err(format!(
            "an earlier dial ({}, {}) has an unknown result; not dialled until it is reconciled with Twilio's call list",
            unknown.call_id, unknown.started_at
        ));
    }
    if let Some(live) = calls
        .iter()
        .find(|c| c.outcome.is_none() && c.ended_at.is_none())
    {
        return Err(format!("a call to it is in progress ({})", live.call_id));
    }
    // Dials Twilio refused, or that never reached it, or were recorded twice, rang no one.
    let rang = calls
        .iter()
        .filter(|c| {
            !matches!(
                c.dial_status.as_deref(),
                Some("refused" | "not_placed" | "merged")
            )
        })
        .count();
    if rang >= usize::from(max_attempts) {
        return Err(format!(
            "{rang} earlier calls went unanswered (--max-attempts {max_attempts})"
        ));
    }
    Ok(())
}

/// The callee picked up and the bot talked: the call had a media stream (one whose line
/// failed under it counts as not answered, and may be tried again).
fn was_reached(call: &CallRow) -> bool {
    call.stream_sid.is_some()
        && call.outcome.as_deref() != Some(crate::labels::Outcome::LineFailed.as_str())
}

/// Runs the campaign, writing a line per number to `out` as each is settled; returns
/// every number's disposition in list order.
pub async fn run_campaign(
    flags: &CampaignFlags,
    store: &Store,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Vec<(ListedNumber, Disposition)>> {
    let listed = read_numbers(&flags.numbers)?;
    let mut seen = HashSet::new();
    let mut jobs = Vec::new();
    let mut settled: Vec<Option<Disposition>> = vec![None; listed.len()];
    for (index, entry) in listed.iter().enumerate() {
        match e164(&entry.raw) {
            Err(err) => settled[index] = Some(Disposition::Skipped(err.to_string())),
            Ok(number) if !seen.insert(number.clone()) => {
                settled[index] = Some(Disposition::Skipped(format!(
                    "{number} is listed twice; called once"
                )));
            }
            Ok(number) => jobs.push((index, number)),
        }
    }
    let wait_limit = Duration::from_secs(u64::from(flags.call.timeout)) + LONGEST_CALL;
    let mut results = stream::iter(jobs)
        .map(|(index, number)| {
            let span = tracing::info_span!("campaign", line = listed[index].line, %number);
            async move { (index, settle(flags, store, &number, wait_limit).await) }.instrument(span)
        })
        .buffer_unordered(usize::from(flags.concurrent));
    for (index, disposition) in settled.iter().enumerate() {
        if let Some(disposition) = disposition {
            write_line(out, &listed[index], disposition)?;
        }
    }
    while let Some((index, disposition)) = results.next().await {
        write_line(out, &listed[index], &disposition)?;
        settled[index] = Some(disposition);
    }
    drop(results);
    let all: Vec<(ListedNumber, Disposition)> = listed
        .into_iter()
        .zip(settled)
        .map(|(entry, d)| {
            let d = d.unwrap_or_else(|| Disposition::Failed("never settled".into()));
            (entry, d)
        })
        .collect();
    write_summary(out, &all)?;
    Ok(all)
}

/// Reconciles earlier dials whose result is unknown, checks, dials and waits for the end
/// of one call.
async fn settle(
    flags: &CampaignFlags,
    store: &Store,
    number: &str,
    wait_limit: Duration,
) -> Disposition {
    let dialer = if flags.dry_run {
        None
    } else {
        match Dialer::new(&flags.call.for_number(number)) {
            Ok(dialer) => Some(dialer),
            Err(err) => return Disposition::Failed(format!("{err:#}")),
        }
    };
    if let Some(dialer) = &dialer
        && let Err(reason) = dialer.reconcile(store, number).await
    {
        tracing::warn!(%reason, "left alone");
        return Disposition::Skipped(reason);
    }
    let verdict = {
        let (store, number, attempts) = (store.clone(), number.to_string(), flags.max_attempts);
        tokio::task::spawn_blocking(move || may_call(&store, &number, attempts))
            .await
            .unwrap_or_else(|e| Err(format!("the check failed: {e}")))
    };
    if let Err(reason) = verdict {
        return Disposition::Skipped(reason);
    }
    let Some(dialer) = dialer else {
        return Disposition::WouldCall;
    };
    let call = match dialer.dial(store, number).await {
        Ok(call) => call,
        Err(err) => return Disposition::Failed(format!("{err:#}")),
    };
    tracing::info!(call_id = %call.call_id, call_sid = %call.call_sid, "dialled; waiting for the call to end");
    let outcome = wait_for_end(store, &call.call_id, wait_limit).await;
    Disposition::Called { call, outcome }
}

/// The call's outcome once `serve` has recorded its end; `None` after `limit`.
async fn wait_for_end(store: &Store, call_id: &str, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let row = {
            let (store, call_id) = (store.clone(), call_id.to_string());
            tokio::task::spawn_blocking(move || store.get_call(&call_id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        };
        if let Some(row) = row.filter(|r| r.outcome.is_some() || r.ended_at.is_some()) {
            return Some(row.outcome.unwrap_or_else(|| "(interrupted)".into()));
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(%call_id, "the call has not ended; not waiting any longer (is `renewal-bot serve` running on the same database?)");
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Shown for a call the campaign stopped waiting for.
const STILL_RUNNING: &str = "(still running)";

impl Disposition {
    /// The word the report uses for this kind of disposition.
    fn kind(&self) -> &'static str {
        match self {
            Disposition::Skipped(_) => "skipped",
            Disposition::WouldCall => "would call",
            Disposition::Failed(_) => "failed",
            Disposition::Called { .. } => "called",
        }
    }
}

fn write_line(
    out: &mut (dyn Write + Send),
    entry: &ListedNumber,
    disposition: &Disposition,
) -> std::io::Result<()> {
    let detail = match disposition {
        Disposition::Skipped(reason) | Disposition::Failed(reason) => format!("\t{reason}"),
        Disposition::WouldCall => String::new(),
        Disposition::Called { call, outcome } => format!(
            "\t{}\t{}\t{}",
            call.call_sid,
            call.call_id,
            outcome.as_deref().unwrap_or(STILL_RUNNING)
        ),
    };
    writeln!(
        out,
        "line {}\t{}\t{}{detail}",
        entry.line,
        entry.raw,
        disposition.kind()
    )
}

fn write_summary(
    out: &mut (dyn Write + Send),
    all: &[(ListedNumber, Disposition)],
) -> std::io::Result<()> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, disposition) in all {
        if let Disposition::Called { outcome, .. } = disposition {
            let label = outcome.as_deref().unwrap_or(STILL_RUNNING).to_string();
            *outcomes.entry(label).or_default() += 1;
        }
        *counts.entry(disposition.kind()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    write!(
        out,
        "campaign: {} numbers: {}",
        all.len(),
        counts.join(", ")
    )?;
    if !outcomes.is_empty() {
        let outcomes: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        write!(out, "; outcomes: {}", outcomes.join(", "))?;
    }
    writeln!(out)
}
