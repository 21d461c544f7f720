//! Outbound calls through Twilio's Calls API: `renewal-bot call +8613800000000`.
//!
//! The number is normalized and checked against the permanent do-not-call list (and the
//! store's health: no dial while do-not-call entries wait for the database) before anything
//! is sent. The attempt is recorded (`dialing`) before the Calls API request and gets its
//! CallSid after, so the webhooks and the media stream find it; an attempt whose answer was
//! lost (a crash, a timeout) is reconciled with Twilio's list of calls to the number before
//! the number is dialled again, and when Twilio cannot be asked the number is left alone.
//! Twilio fetches `{public}/twiml` when the callee answers and reports progress to
//! `{public}/status`.

use crate::labels::Outcome;
use crate::store::{DialAttempt, DialResolution, Store, StoreError, normalize_number};
use crate::transport::twilio::config::{DEFAULT_API_BASE, TwilioCredentials, check_public_url};
use crate::transport::twilio::rest::{NewOutboundCall, TwilioRest};
use anyhow::{Context, bail};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use tracing::Instrument;

/// `renewal-bot call NUMBER`: the command line of [`CallArgs`].
#[derive(Debug, Clone, clap::Args)]
pub struct CallFlags {
    /// The callee's number in E.164 form, e.g. +8613800000000 (spaces and dashes are fine).
    pub number: String,
    #[command(flatten)]
    pub dial: DialSettings,
}

/// How calls are placed (caller id, where Twilio finds the bot, ringing time, account):
/// the flags `call` and `campaign` share.
#[derive(Debug, Clone, clap::Args)]
#[command(mut_arg("twilio_api_base", |arg| arg
    .help("Base URL of the Twilio REST API")
    .default_value(DEFAULT_API_BASE)))]
pub struct DialSettings {
    /// The Twilio number to call from.
    #[arg(long, env = "TWILIO_FROM_NUMBER")]
    pub from: Option<String>,
    /// The public base URL of `renewal-bot serve` (https://bot.example.com).
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds to let the phone ring.
    #[arg(long, default_value_t = 30)]
    pub timeout: u32,
    #[command(flatten)]
    pub twilio: TwilioCredentials,
}

impl DialSettings {
    /// The call to `number` with these settings.
    pub fn for_number(&self, number: &str) -> CallArgs {
        let TwilioCredentials {
            auth_token,
            account_sid,
            twilio_api_base,
        } = self.twilio.clone();
        CallArgs {
            number: number.to_string(),
            from: self.from.clone(),
            public_url: self.public_url.clone(),
            twilio_api_base: twilio_api_base.unwrap_or_else(|| DEFAULT_API_BASE.to_string()),
            timeout: self.timeout,
            account_sid,
            auth_token,
        }
    }
}

/// One outbound call to place, as [`place_call`] takes it; see [`DialSettings`] for each field.
#[derive(Debug, Clone)]
pub struct CallArgs {
    pub number: String,
    pub from: Option<String>,
    pub public_url: Option<String>,
    pub twilio_api_base: String,
    /// Seconds to let the phone ring (5 to 600).
    pub timeout: u32,
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
}

impl From<CallFlags> for CallArgs {
    fn from(flags: CallFlags) -> CallArgs {
        flags.dial.for_number(&flags.number)
    }
}

/// The number as Twilio wants it (E.164), or an error saying how to write it.
pub fn e164(number: &str) -> anyhow::Result<String> {
    let normalized = normalize_number(number).map_err(|_| {
        anyhow::anyhow!("{number:?} is not a phone number; write it like +8613800000000")
    })?;
    let digits = normalized.trim_start_matches('+').len();
    if !normalized.starts_with('+') || !(8..=15).contains(&digits) {
        bail!(
            "{number:?} is not in E.164 form: start with + and the country code, e.g. +8613800000000"
        );
    }
    Ok(normalized)
}

fn required(value: &Option<String>, what: &str) -> anyhow::Result<String> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => bail!("{what} is not set"),
    }
}

/// A call Twilio accepted, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedCall {
    /// The call's id in the store (`calls show`).
    pub call_id: String,
    /// Twilio's CallSid.
    pub call_sid: String,
}

/// How an earlier dial whose result was unknown turned out, from Twilio's call list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// Twilio made the call: the attempt now has its CallSid (and, if the call is over,
    /// its end).
    Placed {
        call_id: String,
        call_sid: String,
        status: String,
    },
    /// Twilio made the call, and the server recorded it as `recorded_as`.
    RecordedAs {
        call_id: String,
        recorded_as: String,
    },
    /// Twilio has no such call: the request never reached it.
    NotPlaced { call_id: String },
}

/// Twilio's clock and ours may differ a little: a call created up to this long before the
/// attempt was recorded still counts as the attempt's.
const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// Statuses after which a call is over.
fn is_final_status(status: &str) -> bool {
    matches!(
        status,
        "completed" | "busy" | "no-answer" | "failed" | "canceled"
    )
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .with_context(|| format!("{what} stopped"))
}

/// Refuses to dial while the store cannot be trusted (do-not-call entries waiting for the
/// database, here or in the journal) and when the number is on the list (or waiting for it).
pub async fn check_may_dial(store: &Store, to: &str) -> anyhow::Result<()> {
    let (store, to) = (store.clone(), to.to_string());
    blocking("the do-not-call lookup", move || -> anyhow::Result<()> {
        if let Some(problem) = store.health().problem {
            bail!("refusing to dial {to}: {problem}");
        }
        let entry = store
            .get_dnc(&to)
            .context("cannot check the do-not-call list")?;
        if let Some(entry) = entry {
            bail!(
                "refusing to call {to}: it is on the do-not-call list since {} (reason: {}); \
                 the list is permanent for phone calls",
                entry.added_at,
                entry.reason
            );
        }
        Ok(())
    })
    .await?
}

/// Places the call. Refuses numbers on the do-not-call list, dials nothing while the store
/// cannot be trusted, and first reconciles any earlier dial to the number whose result is
/// unknown: when that dial did reach Twilio, or Twilio cannot be asked, no call is placed.
pub async fn place_call(args: CallArgs, store: &Store) -> anyhow::Result<PlacedCall> {
    let to = e164(&args.number)?;
    check_may_dial(store, &to).await?;
    let dialer = Dialer::new(&args)?;
    for settled in dialer
        .reconcile(store, &to)
        .await
        .map_err(anyhow::Error::msg)?
    {
        match settled {
            Reconciled::NotPlaced { .. } => {}
            Reconciled::Placed {
                call_id,
                call_sid,
                status,
            } => bail!(
                "an earlier dial to {to} did reach Twilio (call {call_id}, CallSid {call_sid}, \
                 status {status}); not dialling it again: see `renewal-bot calls show {call_id}`"
            ),
            Reconciled::RecordedAs {
                call_id,
                recorded_as,
            } => bail!(
                "an earlier dial to {to} (call {call_id}) did reach Twilio and was answered \
                 as call {recorded_as}; not dialling it again: see `renewal-bot calls show {recorded_as}`"
            ),
        }
    }
    dialer.dial(store, &to).await
}

/// Checked settings for placing calls, and the Calls API client.
pub struct Dialer {
    rest: TwilioRest,
    from: String,
    public_url: String,
    timeout: u32,
}

impl Dialer {
    /// Checks the caller id, public URL, account and ringing time.
    pub fn new(args: &CallArgs) -> anyhow::Result<Dialer> {
        let from = e164(&required(&args.from, "--from (or TWILIO_FROM_NUMBER)")?)?;
        let public_url =
            check_public_url(&required(&args.public_url, "--public-url (or PUBLIC_URL)")?)?;
        let account_sid = required(&args.account_sid, "TWILIO_ACCOUNT_SID")?;
        let auth_token = required(&args.auth_token, "TWILIO_AUTH_TOKEN")?;
        if !(5..=600).contains(&args.timeout) {
            bail!(
                "--timeout must be between 5 and 600 seconds, not {}",
                args.timeout
            );
        }
        Ok(Dialer {
            rest: TwilioRest::new(&args.twilio_api_base, &account_sid, &auth_token),
            from,
            public_url,
            timeout: args.timeout,
        })
    }

    /// Settles every earlier dial to `to` whose result is unknown (the process was killed,
    /// or Twilio's answer lost, while the request was in flight) against Twilio's list of
    /// calls to `to` since then. `Err` says why the number must be left alone: such a dial
    /// is still in flight in another process, or Twilio's list cannot be read.
    pub async fn reconcile(&self, store: &Store, to: &str) -> Result<Vec<Reconciled>, String> {
        let attempts = {
            let (store, number) = (store.clone(), to.to_string());
            blocking("reading earlier dials", move || {
                store.unresolved_dials(&number)
            })
            .await
            .and_then(|r| r.map_err(anyhow::Error::from))
            .map_err(|err| format!("cannot read the earlier dials to {to}: {err:#}"))?
        };
        let mut settled = Vec::new();
        for attempt in attempts {
            let span = tracing::info_span!("call", call_id = %attempt.call_id);
            settled.push(self.reconcile_one(store, attempt).instrument(span).await?);
        }
        Ok(settled)
    }

    async fn reconcile_one(
        &self,
        store: &Store,
        attempt: DialAttempt,
    ) -> Result<Reconciled, String> {
        let DialAttempt {
            call_id,
            to_number,
            from_number,
            started_at,
            live_owner,
        } = attempt;
        if let Some(owner) = live_owner {
            return Err(format!(
                "a dial to {to_number} by another running renewal-bot ({owner}) is still \
                 waiting for Twilio's answer (call {call_id}); not dialling it twice"
            ));
        }
        let attempted = OffsetDateTime::parse(&started_at, &Rfc3339).map_err(|err| {
            format!("the earlier dial {call_id} has an unreadable time {started_at:?}: {err}")
        })?;
        let earliest = attempted - CLOCK_SKEW;
        let since = earliest.date().to_string();
        tracing::info!(%to_number, %started_at, "an earlier dial has an unknown result: asking Twilio's call list");
        let listed = self.rest.list_calls(&to_number, &since).await.map_err(|err| {
            format!(
                "an earlier dial to {to_number} at {started_at} (call {call_id}) has an unknown \
                 result and Twilio's call list cannot be read ({err}); not dialling {to_number}, \
                 so the callee is not called twice: check the Twilio console, then run again"
            )
        })?;
        let mut candidates = Vec::new();
        for call in listed {
            let same_route = call.direction == "outbound-api"
                && e164(&call.to).is_ok_and(|n| n == to_number)
                && from_number
                    .as_deref()
                    .is_none_or(|from| e164(&call.from).is_ok_and(|n| n == from));
            // A call with no readable creation time might be this one: counted.
            let created = call
                .date_created
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc2822).ok());
            if !same_route || created.is_some_and(|t| t < earliest) {
                continue;
            }
            // A call another dial attempt already owns is not this one's.
            let owner = {
                let (store, sid) = (store.clone(), call.sid.clone());
                blocking("a CallSid lookup", move || {
                    let id = store.find_call_by_sid(&sid)?;
                    id.map(|id| store.get_call(&id)).transpose()
                })
                .await
                .and_then(|r| r.map_err(anyhow::Error::from))
                .map_err(|err| format!("cannot look up CallSid {}: {err:#}", call.sid))?
            };
            let owned_by_attempt = owner
                .flatten()
                .is_some_and(|row| row.call_id != call_id && row.dial_status.is_some());
            if !owned_by_attempt {
                candidates.push((created, call));
            }
        }
        candidates.sort_by_key(|(created, _)| *created);
        let found = candidates.into_iter().next().map(|(_, call)| call);
        let detail = match &found {
            Some(call) => format!(
                "Twilio's call list has {} to {to_number} (status {}) for the dial whose answer was lost",
                call.sid, call.status
            ),
            None => format!(
                "Twilio's call list has no call to {to_number} since {since}: the request never reached Twilio"
            ),
        };
        tracing::warn!(%detail, "reconciled an earlier dial");
        let resolution = {
            let (store, id) = (store.clone(), call_id.clone());
            let found_pair = found.as_ref().map(|c| (c.sid.clone(), c.status.clone()));
            blocking("recording the reconciled dial", move || {
                let resolution = store.resolve_dial(
                    &id,
                    found_pair.as_ref().map(|(s, t)| (s.as_str(), t.as_str())),
                    &detail,
                )?;
                // Over, and the bot never talked (the server would have recorded it): like
                // a call that ended without a media stream.
                if let (DialResolution::Placed, Some((_, status))) = (&resolution, &found_pair)
                    && is_final_status(status)
                {
                    store.finish_call(&id, Outcome::NoResponse, false, 0)?;
                }
                Ok::<_, StoreError>(resolution)
            })
            .await
            .and_then(|r| r.map_err(anyhow::Error::from))
            .map_err(|err| format!("cannot record how the earlier dial {call_id} ended: {err:#}"))?
        };
        Ok(match (resolution, found) {
            (DialResolution::NotPlaced, _) | (_, None) => Reconciled::NotPlaced { call_id },
            (DialResolution::RecordedAs(recorded_as), Some(_)) => Reconciled::RecordedAs {
                call_id,
                recorded_as,
            },
            (DialResolution::Placed, Some(call)) => Reconciled::Placed {
                call_id,
                call_sid: call.sid,
                status: call.status,
            },
        })
    }

    /// Dials `to`: checks the store and the do-not-call list once more, records the attempt,
    /// then asks the Calls API, and records what it answered. An answer that was lost
    /// leaves the attempt `dialing`, to be reconciled before `to` is dialled again.
    pub async fn dial(&self, store: &Store, to: &str) -> anyhow::Result<PlacedCall> {
        check_may_dial(store, to).await?;
        let call_id = format!("twilio-{}", uuid::Uuid::new_v4());
        let span = tracing::info_span!("call", call_id = %call_id);
        self.dial_recorded(store, to, call_id)
            .instrument(span)
            .await
    }

    async fn dial_recorded(
        &self,
        store: &Store,
        to: &str,
        call_id: String,
    ) -> anyhow::Result<PlacedCall> {
        {
            let (store, id, number, from) = (
                store.clone(),
                call_id.clone(),
                to.to_string(),
                self.from.clone(),
            );
            blocking("recording the dial", move || {
                store.record_dial_attempt(&id, &number, &from, OffsetDateTime::now_utc())
            })
            .await?
            .with_context(|| format!("cannot record the dial to {to}, so it is not placed"))?;
        }
        let created = self
            .rest
            .create_call(&NewOutboundCall {
                to: to.to_string(),
                from: self.from.clone(),
                url: format!("{}/twiml", self.public_url),
                status_callback: format!("{}/status", self.public_url),
                timeout_s: self.timeout,
            })
            .await;
        let store = store.clone();
        let id = call_id.clone();
        match created {
            Ok(created) => {
                tracing::info!(call_sid = %created.sid, status = %created.status, %to, "call placed");
                let sid = created.sid.clone();
                blocking("recording the call", move || {
                    store.dial_placed(&id, &created.sid, &created.status)
                })
                .await?
                .with_context(|| {
                    format!(
                        "the call {sid} to {to} was placed but its CallSid could not be recorded; \
                         it is reconciled with Twilio's call list before {to} is dialled again"
                    )
                })?;
                Ok(PlacedCall {
                    call_id,
                    call_sid: sid,
                })
            }
            Err(err) if err.surely_not_done() => {
                let why = err.to_string();
                let recorded = blocking("recording the refusal", move || {
                    store.dial_refused(&id, &why)
                })
                .await;
                if let Ok(Err(record_err)) = recorded {
                    tracing::warn!(%record_err, "cannot record that Twilio refused the dial");
                }
                Err(anyhow::Error::new(err)
                    .context(format!("Twilio did not place the call to {to}")))
            }
            Err(err) => {
                let why = err.to_string();
                tracing::error!(%why, %to, "the Calls API's answer was lost: the call may have been placed");
                let note = why.clone();
                let recorded = blocking("recording the lost answer", move || {
                    store.dial_result_unknown(&id, &note)
                })
                .await;
                if let Ok(Err(record_err)) = recorded {
                    tracing::warn!(%record_err, "cannot record that the dial's result is unknown");
                }
                bail!(
                    "Twilio's answer to the call to {to} was lost ({why}); the call may have been \
                     placed, so {to} is not dialled again until the dial is reconciled with \
                     Twilio's call list (at the next `call` or `campaign`)"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_must_be_e164() {
        assert_eq!(e164("+86 138-0000-0000").unwrap(), "+8613800000000");
        assert_eq!(e164("0086 13800000000").unwrap(), "+8613800000000");
        let err = e164("13800000000").unwrap_err().to_string();
        assert!(err.contains("+8613800000000"), "{err}");
        assert!(e164("call me").is_err());
    }
}
