//! Outbound calls through Twilio's Calls API: `renewal-bot call +8613800000000`.
//!
//! The number is normalized and checked against the permanent do-not-call list before
//! anything is sent; Twilio then fetches `{public}/twiml` when the callee answers and
//! reports progress to `{public}/status`. The call is recorded with its CallSid so the
//! webhooks and the media stream find it.

use crate::store::{NewCall, Store, normalize_number};
use crate::transport::twilio::config::{DEFAULT_API_BASE, TwilioCredentials, check_public_url};
use crate::transport::twilio::rest::{NewOutboundCall, TwilioRest};
use anyhow::{Context, bail};
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

/// Places the call. Refuses numbers on the do-not-call list.
pub async fn place_call(args: CallArgs, store: &Store) -> anyhow::Result<PlacedCall> {
    let to = e164(&args.number)?;
    let dnc = {
        let (store, to) = (store.clone(), to.clone());
        tokio::task::spawn_blocking(move || store.get_dnc(&to))
            .await
            .context("do-not-call lookup")?
            .context("cannot check the do-not-call list")?
    };
    if let Some(entry) = dnc {
        bail!(
            "refusing to call {to}: it is on the do-not-call list since {} (reason: {}); \
             the list is permanent for phone calls",
            entry.added_at,
            entry.reason
        );
    }
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

    let call_id = format!("twilio-{}", uuid::Uuid::new_v4());
    let span = tracing::info_span!("call", call_id = %call_id);
    place(
        args,
        store,
        to,
        from,
        public_url,
        account_sid,
        auth_token,
        call_id,
    )
    .instrument(span)
    .await
}

#[allow(clippy::too_many_arguments)]
async fn place(
    args: CallArgs,
    store: &Store,
    to: String,
    from: String,
    public_url: String,
    account_sid: String,
    auth_token: String,
    call_id: String,
) -> anyhow::Result<PlacedCall> {
    let rest = TwilioRest::new(&args.twilio_api_base, &account_sid, &auth_token);
    let created = rest
        .create_call(&NewOutboundCall {
            to: to.clone(),
            from: from.clone(),
            url: format!("{public_url}/twiml"),
            status_callback: format!("{public_url}/status"),
            timeout_s: args.timeout,
        })
        .await
        .with_context(|| format!("Twilio did not place the call to {to}"))?;
    tracing::info!(call_sid = %created.sid, status = %created.status, %to, "call placed");

    let record = NewCall {
        call_id: call_id.clone(),
        transport: "twilio".into(),
        to_number: Some(to),
        from_number: Some(from),
        call_sid: Some(created.sid.clone()),
        stream_sid: None,
        started_at: time::OffsetDateTime::now_utc(),
    };
    let store = store.clone();
    let status = created.status.clone();
    let record = tokio::task::spawn_blocking(move || -> anyhow::Result<NewCall> {
        store.start_call(&record)?;
        store.record_event(&record.call_id, "status", &status)?;
        Ok(record)
    })
    .await
    .context("recording the call")?
    .with_context(|| {
        format!(
            "the call {} was placed but could not be recorded",
            created.sid
        )
    })?;
    Ok(PlacedCall {
        call_id: record.call_id,
        call_sid: created.sid,
    })
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
