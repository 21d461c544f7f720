//! A small client for the two Calls API requests the bot makes: create an outbound call,
//! and end a live one (`Status=completed`). Errors carry Twilio's own error JSON (code,
//! message, more_info) so the operator sees why Twilio refused.

use serde::Deserialize;
use std::time::Duration;

/// Where and as whom to talk to the Calls API.
#[derive(Clone)]
pub struct TwilioRest {
    client: reqwest::Client,
    api_base: String,
    account_sid: String,
    auth_token: String,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioRest")
            .field("api_base", &self.api_base)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<redacted>")
            .finish()
    }
}

/// What to dial.
#[derive(Debug, Clone)]
pub struct NewOutboundCall {
    pub to: String,
    pub from: String,
    /// The TwiML webhook (`{public}/twiml`).
    pub url: String,
    /// The status webhook (`{public}/status`).
    pub status_callback: String,
    /// Seconds to let it ring.
    pub timeout_s: u32,
}

/// The call resource Twilio returns.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CallResource {
    pub sid: String,
    #[serde(default)]
    pub status: String,
}

/// How a `Status=completed` request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Completed,
    /// 404 / error 20404: the call had already ended.
    AlreadyEnded,
}

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Twilio refused the request (HTTP {status}, error {code}): {message}{}", more_info.as_deref().map(|m| format!(" — see {m}")).unwrap_or_default())]
    Api {
        status: u16,
        code: u32,
        message: String,
        more_info: Option<String>,
    },
    #[error("Twilio answered HTTP {status} with an unexpected body: {body}")]
    Unexpected { status: u16, body: String },
    #[error("cannot reach the Twilio API at {base}: {source}")]
    Transport {
        base: String,
        source: reqwest::Error,
    },
}

impl RestError {
    /// Twilio's error code, when it sent one.
    pub fn code(&self) -> Option<u32> {
        match self {
            RestError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct TwilioErrorBody {
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    more_info: Option<String>,
}

impl TwilioRest {
    pub fn new(api_base: &str, account_sid: &str, auth_token: &str) -> TwilioRest {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        TwilioRest {
            client,
            api_base: api_base.trim_end_matches('/').to_string(),
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
        }
    }

    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    fn calls_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            self.api_base, self.account_sid
        )
    }

    async fn post(&self, url: String, form: &[(&str, String)]) -> Result<(u16, String), RestError> {
        let response = self
            .client
            .post(url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(form)
            .send()
            .await
            .map_err(|source| RestError::Transport {
                base: self.api_base.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|source| RestError::Transport {
                base: self.api_base.clone(),
                source,
            })?;
        Ok((status, body))
    }

    fn api_error(status: u16, body: &str) -> RestError {
        match serde_json::from_str::<TwilioErrorBody>(body) {
            Ok(TwilioErrorBody {
                code: Some(code),
                message,
                more_info,
            }) => RestError::Api {
                status,
                code,
                message: message.unwrap_or_else(|| "(no message)".into()),
                more_info,
            },
            _ => RestError::Unexpected {
                status,
                body: body.chars().take(500).collect(),
            },
        }
    }

    /// `POST /2010-04-01/Accounts/{sid}/Calls.json`: dial out, answering machines detected,
    /// every status event reported to `status_callback`.
    pub async fn create_call(&self, call: &NewOutboundCall) -> Result<CallResource, RestError> {
        let mut form: Vec<(&str, String)> = vec![
            ("To", call.to.clone()),
            ("From", call.from.clone()),
            ("Url", call.url.clone()),
            ("Method", "POST".into()),
            ("StatusCallback", call.status_callback.clone()),
            ("StatusCallbackMethod", "POST".into()),
        ];
        for event in ["initiated", "ringing", "answered", "completed"] {
            form.push(("StatusCallbackEvent", event.into()));
        }
        form.push(("Timeout", call.timeout_s.to_string()));
        form.push(("MachineDetection", "Enable".into()));
        let (status, body) = self.post(self.calls_url(), &form).await?;
        if !(200..300).contains(&status) {
            return Err(Self::api_error(status, &body));
        }
        serde_json::from_str(&body).map_err(|_| RestError::Unexpected {
            status,
            body: body.chars().take(500).collect(),
        })
    }

    /// `POST .../Calls/{CallSid}.json` with `Status=completed`: hang up a live call.
    pub async fn complete_call(&self, call_sid: &str) -> Result<Completion, RestError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{}.json",
            self.api_base, self.account_sid, call_sid
        );
        let (status, body) = self.post(url, &[("Status", "completed".into())]).await?;
        if (200..300).contains(&status) {
            return Ok(Completion::Completed);
        }
        let error = Self::api_error(status, &body);
        if status == 404 || error.code() == Some(20404) {
            return Ok(Completion::AlreadyEnded);
        }
        Err(error)
    }
}
