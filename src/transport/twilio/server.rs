//! The HTTP side of `renewal-bot serve`: an axum app with
//!
//! - `POST /twiml`: the call's webhook; a callee on the do-not-call list (or with no valid
//!   `To`) gets `<Hangup/>`, anyone else `<Connect><Stream>` TwiML that points Twilio at
//!   `wss://PUBLIC/media` and carries the call data as `<Parameter>`s with a one-time stream
//!   token over them ([`super::stream_token`]);
//! - `GET /media`: the Media Streams WebSocket, one task per call ([`super::call`]), which
//!   becomes a call only if its `start` carries a valid, unused token for its CallSid;
//! - `POST /status`: status callbacks, stored as call events;
//! - `GET /healthz`.
//!
//! Every Twilio request must carry a valid `X-Twilio-Signature` (403 otherwise), checked
//! against the URL Twilio used: the public base URL plus the request's path and query. The
//! two webhooks get their checked form parameters from the `SignedForm` extractor.

use crate::labels::Outcome;
use crate::store::{Store, StoreError, normalize_number};
use crate::transport::calls::{
    CallDeps, CallEnv, CallEvent, SharedDeps, close_interrupted_calls, shutdown_signal,
};
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

use super::call::{self, LiveStreams, TwilioEnv};
use super::config::{ServeArgs, ServeConfig, websocket_base};
use super::protocol;
use super::rest::TwilioRest;
use super::signature;
use super::stream_token::{StreamTokens, TOKEN_PARAMETER, unix_now};

/// The server's state, shared by every request and call.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    public_url: Option<String>,
    auth_token: Option<String>,
    env: TwilioEnv,
    connections: AtomicU64,
}

impl AppState {
    /// Builds the state from checked settings. The Calls API client (the hang-up fallback)
    /// exists when both the account SID and the auth token are known.
    pub fn new(config: &ServeConfig, deps: CallDeps) -> AppState {
        let rest = match (&config.account_sid, &config.auth_token) {
            (Some(sid), Some(token)) => Some(TwilioRest::new(&config.twilio_api_base, sid, token)),
            _ => None,
        };
        AppState {
            inner: Arc::new(Inner {
                public_url: config.public_url.clone(),
                auth_token: config.auth_token.clone(),
                env: TwilioEnv {
                    call: CallEnv::new(deps),
                    rest,
                    tokens: Arc::new(StreamTokens::new()),
                    streams: Arc::new(LiveStreams::default()),
                },
                connections: AtomicU64::new(0),
            }),
        }
    }

    /// Call events (opening delay, turns with latency, ends) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.inner.env.call.events.subscribe()
    }

    /// Calls whose stream was admitted and has not finished its record yet; sockets still
    /// waiting for (or refused at) `start` are not calls.
    pub fn live_calls(&self) -> usize {
        self.inner.env.call.live.started()
    }

    /// After the listener stopped: lets live calls finish within `grace`, then cuts the
    /// rest (their records are finished and marked `interrupted`) and waits for the writes.
    pub async fn drain(&self, grace: Duration) {
        if self.inner.env.call.live.drain(grace).await {
            tracing::info!("all calls finished");
        }
    }

    fn base_url(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(url) = &self.inner.public_url {
            return Some(url.clone());
        }
        let host = headers.get(header::HOST)?.to_str().ok()?;
        Some(format!("https://{host}"))
    }

    /// Checks the signature of a request; on success returns its form parameters.
    fn verify(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        body: &[u8],
        websocket: bool,
    ) -> Result<Vec<(String, String)>, Rejected> {
        let params: Result<Vec<(String, String)>, _> = if body.is_empty() {
            Ok(Vec::new())
        } else {
            serde_urlencoded::from_bytes(body)
        };
        let Some(token) = &self.inner.auth_token else {
            return params.map_err(|err| Rejected::BadForm(err.to_string()));
        };
        let forbidden = |why: &str| {
            tracing::warn!(path = %uri.path(), "rejected request: {why}");
            Rejected::Forbidden
        };
        let Ok(params) = params else {
            return Err(forbidden("body is not a form, cannot check its signature"));
        };
        let Some(signature) = headers.get(signature::HEADER).and_then(|v| v.to_str().ok()) else {
            return Err(forbidden("no X-Twilio-Signature"));
        };
        let Some(base) = self.base_url(headers) else {
            return Err(forbidden("no public URL and no Host header"));
        };
        let base = if websocket {
            websocket_base(&base)
        } else {
            base
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{base}{path}");
        if signature::verify(token, &url, &params, signature) {
            Ok(params)
        } else {
            Err(forbidden(&format!("signature does not match {url}")))
        }
    }

    fn store(&self) -> &Store {
        &self.inner.env.call.deps.store
    }
}

/// Why a request was refused before its handler ran.
enum Rejected {
    Forbidden,
    BadForm(String),
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        match self {
            Rejected::Forbidden => {
                (StatusCode::FORBIDDEN, "invalid Twilio signature\n").into_response()
            }
            Rejected::BadForm(err) => {
                (StatusCode::BAD_REQUEST, format!("bad form body: {err}\n")).into_response()
            }
        }
    }
}

/// The form parameters of a webhook (`POST /twiml`, `POST /status`) whose signature checked
/// out: rejects like [`AppState::verify`] (403, or 400 for a bad form body when signatures
/// are not checked); a body that cannot be read gets axum's own rejection.
struct SignedForm(HashMap<String, String>);

impl SignedForm {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The parameter, or `""` when Twilio did not send it.
    fn text(&self, key: &str) -> String {
        self.get(key).unwrap_or_default().to_string()
    }
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (headers, uri) = (req.headers().clone(), req.uri().clone());
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let params = state
            .verify(&headers, &uri, &body, false)
            .map_err(IntoResponse::into_response)?;
        Ok(SignedForm(params.into_iter().collect()))
    }
}

/// The app: routes and state. Tests bind it to 127.0.0.1:0 themselves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/twiml", post(twiml))
        .route("/status", post(status))
        .route("/media", get(media))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// 200 `{"status": "ok"}` while calls are welcome; 503 with the reason while the store
/// cannot be trusted with them (do-not-call entries waiting for the database, a database
/// that cannot be written).
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.store().clone();
    let health = blocking(move || store.health()).await;
    let live_calls = state.live_calls();
    match health {
        Some(health) if health.is_ok() => {
            axum::Json(serde_json::json!({"status": "ok", "live_calls": live_calls}))
                .into_response()
        }
        unhealthy => {
            let (reason, pending) = unhealthy.map_or_else(
                || ("the store check failed".to_string(), 0),
                |h| (h.problem.unwrap_or_default(), h.pending_do_not_call),
            );
            let body = serde_json::json!({
                "status": "unhealthy",
                "reason": reason,
                "pending_do_not_call": pending,
                "live_calls": live_calls,
            });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn twiml(State(state): State<AppState>, headers: HeaderMap, form: SignedForm) -> Response {
    let call_sid = form.text("CallSid");
    let to = form.text("To");
    let from = form.text("From");
    let answered_by = form.text("AnsweredBy");

    // The callee's number, as the list and the stream token hold it; none: nobody to
    // check against the list or to record a refusal for, so no stream.
    let callee = normalize_number(&to).ok();
    let store = state.store().clone();
    let lookup = {
        let (call_sid, callee) = (call_sid.clone(), callee.clone());
        blocking(move || {
            let call_id = if call_sid.is_empty() {
                None
            } else {
                store.find_call_by_sid(&call_sid).ok().flatten()
            };
            // Respect the callee: when the list cannot be read, do not talk to the number;
            // while do-not-call entries cannot be written, take no call at all.
            let refusal = if let Some(problem) = store.health().problem {
                Some(Refusal::StoreUnhealthy(problem))
            } else {
                match callee.as_deref() {
                    None => Some(Refusal::InvalidTo),
                    Some(number) => match store.is_dnc(number) {
                        Ok(true) => Some(Refusal::DoNotCall),
                        Ok(false) => None,
                        Err(StoreError::BadNumber { .. }) => Some(Refusal::InvalidTo),
                        Err(err) => Some(Refusal::StoreUnhealthy(format!(
                            "cannot read the do-not-call list: {err}"
                        ))),
                    },
                }
            };
            (call_id, refusal)
        })
        .await
    };
    let (known_id, refusal) = lookup.unwrap_or_else(|| {
        (
            None,
            Some(Refusal::StoreUnhealthy("the store lookup failed".into())),
        )
    });
    let call_id = known_id
        .clone()
        .unwrap_or_else(|| format!("twilio-{}", uuid::Uuid::new_v4()));
    let span = tracing::info_span!("call", call_id = %call_id);
    let _entered = span.enter();

    let note = |kind: &'static str, detail: String| {
        if let Some(id) = known_id.clone() {
            let store = state.store().clone();
            tokio::task::spawn_blocking(move || {
                if let Err(err) = store.record_event(&id, kind, &detail) {
                    tracing::warn!(%err, "cannot record the event");
                }
            });
        }
    };
    match refusal {
        Some(Refusal::DoNotCall) => {
            tracing::warn!(%to, "number is on the do-not-call list: hanging up at once");
            note("refused", "number on the do-not-call list".into());
            return xml(protocol::hangup_twiml());
        }
        Some(Refusal::InvalidTo) => {
            tracing::warn!(%to, "the To number is not a valid phone number: hanging up at once");
            note("refused", format!("invalid To number {to:?}"));
            return xml(protocol::hangup_twiml());
        }
        Some(Refusal::StoreUnhealthy(problem)) => {
            tracing::error!(%to, %problem, "the store cannot be trusted with a call: hanging up at once");
            note("refused", format!("store unhealthy: {problem}"));
            return xml(protocol::hangup_twiml());
        }
        None => {}
    }
    let Some(callee) = callee else {
        return xml(protocol::hangup_twiml());
    };
    if answered_by.starts_with("machine") || answered_by == "fax" {
        tracing::info!(%answered_by, "answering machine: hanging up");
        note("answered_by", answered_by);
        return xml(protocol::hangup_twiml());
    }
    let Some(base) = state.base_url(&headers) else {
        return (StatusCode::BAD_REQUEST, "no Host header\n").into_response();
    };
    let stream_url = format!("{}/media", websocket_base(&base));
    tracing::info!(%call_sid, to = %callee, %stream_url, "connecting the call to the media stream");
    let mut parameters = vec![
        ("call_id", call_id.as_str()),
        ("to", callee.as_str()),
        ("from", from.as_str()),
        ("call_sid", call_sid.as_str()),
    ];
    let token = state
        .inner
        .env
        .tokens
        .issue(&call_sid, &parameters, unix_now());
    parameters.push((TOKEN_PARAMETER, token.as_str()));
    xml(protocol::connect_stream_twiml(&stream_url, &parameters))
}

/// Why `/twiml` hangs up before the call starts.
enum Refusal {
    DoNotCall,
    InvalidTo,
    StoreUnhealthy(String),
}

/// Statuses after which the call is over.
fn is_final_status(status: &str) -> bool {
    matches!(
        status,
        "completed" | "busy" | "no-answer" | "failed" | "canceled"
    )
}

async fn status(State(state): State<AppState>, form: SignedForm) -> Response {
    let call_sid = form.text("CallSid");
    let call_status = form.text("CallStatus");
    let duration_ms = form
        .get("CallDuration")
        .and_then(|d| d.parse::<u64>().ok())
        .map_or(0, |s| s * 1_000);
    let mut detail = call_status.clone();
    for key in ["AnsweredBy", "CallDuration", "SipResponseCode", "ErrorCode"] {
        if let Some(v) = form.get(key) {
            detail.push_str(&format!(" {key}={v}"));
        }
    }
    let store = state.store().clone();
    let done = blocking(move || {
        let call_id = match store.find_call_by_sid(&call_sid) {
            Ok(Some(id)) => id,
            Ok(None) => {
                tracing::warn!(%call_sid, %detail, "status callback for an unknown call");
                return;
            }
            Err(err) => {
                tracing::error!(%call_sid, %err, "cannot look the call up");
                return;
            }
        };
        let span = tracing::info_span!("call", call_id = %call_id);
        let _entered = span.enter();
        tracing::info!(%detail, "status callback");
        if let Err(err) = store.record_event(&call_id, "status", &detail) {
            tracing::warn!(%err, "cannot record the status");
        }
        if !is_final_status(&call_status) {
            return;
        }
        match store.get_call(&call_id) {
            // A call with a media stream is finished by its driver, with the real outcome.
            Ok(Some(row)) if row.stream_sid.is_none() && row.outcome.is_none() => {
                tracing::info!(%call_status, "call ended without a media stream");
                if let Err(err) =
                    store.finish_call(&call_id, Outcome::NoResponse, false, duration_ms)
                {
                    tracing::error!(%err, "cannot finish the call record");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "cannot read the call"),
        }
    })
    .await;
    if done.is_none() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn media(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(rejected) = state.verify(&headers, &uri, &[], true) {
        return rejected.into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let conn = state.inner.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let env = state.inner.env.clone();
    ws.max_message_size(256 * 1024)
        .on_failed_upgrade(move |err| tracing::warn!(conn, %err, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| call::run(socket, env, conn))
}

/// Runs the server until Ctrl-C or SIGTERM, then lets live calls finish (see
/// [`AppState::drain`]).
pub async fn serve(args: ServeArgs, shared: SharedDeps) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let deps = CallDeps::load(shared, &config.script_dir, &config.audio_dir)?;
    if config.public_url.is_none() {
        tracing::warn!(
            "no --public-url / PUBLIC_URL: the Host header is trusted and https assumed for \
             stream URLs and signatures"
        );
    }
    close_interrupted_calls(&deps.store);
    let state = AppState::new(&config, deps);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (see --listen)", config.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, public_url = ?config.public_url, "serving Twilio webhooks and media streams");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    state.drain(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}
