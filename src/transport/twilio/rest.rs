//! A small client for the Calls API requests the bot makes: create an outbound call, end a
//! live one (`Status=completed`), and list the calls to a number (to reconcile a dial whose
//! answer was lost). Errors carry Twilio's own error JSON (code, message, more_info) so the
//! operator sees why Twilio refused.

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
    /// The request failed on the way: `detail` is the whole chain of causes.
    #[error("cannot reach the Twilio API at {base}: {detail}")]
    Transport {
        base: String,
        detail: String,
        /// No connection was made, so the request was never sent.
        not_sent: bool,
    },
}

impl RestError {
    fn transport(base: &str, err: &reqwest::Error) -> RestError {
        // reqwest's message names the URL, the innermost cause says what went wrong;
        // each cause once (they often repeat each other).
        let mut detail = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(inner) = cause {
            let text = inner.to_string();
            if !detail.contains(&text) {
                detail.push_str(": ");
                detail.push_str(&text);
            }
            cause = inner.source();
        }
        RestError::Transport {
            base: base.to_string(),
            detail,
            not_sent: err.is_connect(),
        }
    }

    /// Whether Twilio surely did not act on the request: it refused it (HTTP 4xx with its
    /// error JSON), or the request never left. Otherwise (a timeout, a 5xx, a garbled
    /// answer) the call may have been made.
    pub fn surely_not_done(&self) -> bool {
        match self {
            RestError::Api { status, .. } => (400..500).contains(status),
            RestError::Transport { not_sent, .. } => *not_sent,
            RestError::Unexpected { .. } => false,
        }
    }
}

/// One call of Twilio's call list: the fields the bot reads.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ListedCall {
    pub sid: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub status: String,
    /// `outbound-api` for calls made through the Calls API.
    #[serde(default)]
    pub direction: String,
    /// RFC 2822, e.g. `Tue, 31 Aug 2010 20:36:28 +0000`.
    #[serde(default)]
    pub date_created: Option<String>,
    /// RFC 2822; empty until the call is dialled.
    #[serde(default)]
    pub start_time: Option<String>,
}

/// A page of the call list.
#[derive(Deserialize)]
struct CallPage {
    #[serde(default)]
    calls: Vec<ListedCall>,
    /// Relative to the API's base, `None` on the last page.
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// The most pages [`TwilioRest::list_calls`] reads (50 calls each).
const MAX_PAGES: usize = 20;

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
            .map_err(|err| RestError::transport(&self.api_base, &err))?;
        Self::read(&self.api_base, response).await
    }

    async fn get(&self, url: String) -> Result<(u16, String), RestError> {
        let response = self
            .client
            .get(url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .send()
            .await
            .map_err(|err| RestError::transport(&self.api_base, &err))?;
        Self::read(&self.api_base, response).await
    }

    async fn read(base: &str, response: reqwest::Response) -> Result<(u16, String), RestError> {
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|err| RestError::transport(base, &err))?;
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

    /// `GET /2010-04-01/Accounts/{sid}/Calls.json?To=…&StartTime>=YYYY-MM-DD` (every page):
    /// the calls to `to` that started on or after midnight UTC of `since_date`, and, since
    /// a call not dialled yet has no start time, those still `queued`.
    pub async fn list_calls(
        &self,
        to: &str,
        since_date: &str,
    ) -> Result<Vec<ListedCall>, RestError> {
        let mut calls = self
            .list_pages(&[("To", to), ("StartTime>", since_date)])
            .await?;
        for call in self.list_pages(&[("To", to), ("Status", "queued")]).await? {
            if !calls.iter().any(|c| c.sid == call.sid) {
                calls.push(call);
            }
        }
        Ok(calls)
    }

    async fn list_pages(&self, filters: &[(&str, &str)]) -> Result<Vec<ListedCall>, RestError> {
        let query = serde_urlencoded::to_string(filters).unwrap_or_default();
        let mut url = format!("{}?{query}&PageSize=50", self.calls_url());
        let mut calls = Vec::new();
        for _ in 0..MAX_PAGES {
            let (status, body) = self.get(url).await?;
            if !(200..300).contains(&status) {
                return Err(Self::api_error(status, &body));
            }
            let page: CallPage =
                serde_json::from_str(&body).map_err(|_| RestError::Unexpected {
                    status,
                    body: body.chars().take(500).collect(),
                })?;
            calls.extend(page.calls);
            match page.next_page_uri.filter(|uri| !uri.is_empty()) {
                Some(next) => url = format!("{}{next}", self.api_base),
                None => return Ok(calls),
            }
        }
        // Better no answer than a partial one: a call missing from it could be dialled twice.
        Err(RestError::Unexpected {
            status: 200,
            body: format!("more than {MAX_PAGES} pages of calls; not all were read"),
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
