//! The SIP side of `renewal-bot sip`: a UDP endpoint (rsipstack transactions and dialogs)
//! that answers INVITEs.
//!
//! Each new INVITE is checked before anything is said: a caller on the do-not-call list gets
//! `603 Decline`, an offer without PCMU/8000 `488 Not Acceptable Here`; otherwise the bot
//! opens an RTP socket, answers `180` and `200` with its SDP, and the call runs in its own
//! task ([`super::call`]). In-dialog requests (ACK, BYE, re-INVITE, INFO) go to their
//! dialog, OPTIONS is answered 200, other requests outside a dialog 405 (481 for BYE).
//! rsipstack drops datagrams that do not parse as SIP.

use crate::dialog::Script;
use crate::store::normalize_number;
use crate::transport::calls::{
    CallDeps, CallEnv, CallEvent, SharedDeps, close_interrupted_calls, shutdown_signal,
};
use anyhow::{Context, bail};
use rsipstack::EndpointBuilder;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::TransportLayer;
use rsipstack::transport::udp::UdpConnection;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::call::{self, CallSetup, SipEnv};
use super::sdp;

/// Where `renewal-bot sip` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5070";
const USER_AGENT: &str = concat!("renewal-bot/", env!("CARGO_PKG_VERSION"));

/// `renewal-bot sip` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SipArgs {
    /// UDP address for SIP (softphones dial sip:bot@HOST:PORT).
    #[arg(long, env = "SIP_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address for RTP and in the SDP answer; defaults to the --listen address (which then
    /// must not be 0.0.0.0).
    #[arg(long, env = "SIP_RTP_IP")]
    pub rtp_ip: Option<IpAddr>,
    /// Folder with the dialog script (lines.toml, dialog.toml, intents.toml).
    #[arg(long)]
    pub script_dir: Option<PathBuf>,
    /// Folder with 李明's clips and their manifest.toml.
    #[arg(long)]
    pub audio_dir: Option<PathBuf>,
    /// Seconds live calls may take to finish after Ctrl-C / SIGTERM.
    #[arg(long, default_value_t = 15)]
    pub shutdown_grace_s: u64,
}

/// Checked settings of the SIP endpoint.
#[derive(Debug, Clone)]
pub struct SipConfig {
    pub listen: SocketAddr,
    /// Where RTP sockets are bound, and what the SDP answer names.
    pub rtp_ip: IpAddr,
}

impl SipConfig {
    /// `rtp_ip` defaults to the listen address, which must then be a concrete one.
    pub fn new(listen: SocketAddr, rtp_ip: Option<IpAddr>) -> anyhow::Result<SipConfig> {
        let rtp_ip = match rtp_ip {
            Some(ip) => ip,
            None if listen.ip().is_unspecified() => bail!(
                "--listen {listen} is a wildcard address: pass --rtp-ip with the address \
                 callers can send audio to"
            ),
            None => listen.ip(),
        };
        if rtp_ip.is_unspecified() {
            bail!("--rtp-ip {rtp_ip} must be an address callers can reach, not a wildcard");
        }
        Ok(SipConfig { listen, rtp_ip })
    }
}

/// A running SIP endpoint.
pub struct SipServer {
    addr: SocketAddr,
    env: SipEnv,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SipServer {
    /// Binds the UDP port and starts answering calls.
    pub async fn start(config: SipConfig, deps: CallDeps) -> anyhow::Result<SipServer> {
        let cancel = CancellationToken::new();
        let transport_layer = TransportLayer::new(cancel.child_token());
        let udp = UdpConnection::create_connection(config.listen, None, Some(cancel.child_token()))
            .await
            .with_context(|| {
                format!(
                    "cannot listen for SIP on udp {} (see --listen)",
                    config.listen
                )
            })?;
        let addr = udp
            .get_addr()
            .get_socketaddr()
            .context("the SIP socket's address")?;
        transport_layer.add_transport(udp.into());
        let endpoint = EndpointBuilder::new()
            .with_transport_layer(transport_layer)
            .with_cancel_token(cancel.clone())
            .with_user_agent(USER_AGENT)
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .context("the SIP endpoint's transactions")?;
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let env = SipEnv {
            call: CallEnv::new(deps),
            dialogs,
        };
        let serve = tokio::spawn(async move {
            endpoint.serve().await;
            tracing::debug!("SIP endpoint stopped");
        });
        let accept = tokio::spawn(accept_loop(incoming, env.clone(), config, cancel.clone()));
        tracing::info!(%addr, "answering SIP calls");
        Ok(SipServer {
            addr,
            env,
            cancel,
            tasks: vec![serve, accept],
        })
    }

    /// The UDP address SIP is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Call events (opening delay, turns with latency, ends) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.env.call.events.subscribe()
    }

    /// Calls in progress (or still settling their record).
    pub fn live_calls(&self) -> usize {
        self.env.call.live.live()
    }

    /// Lets live calls finish within `grace`, cuts the rest (BYE; their records are
    /// finished and marked `interrupted`), then stops the endpoint.
    pub async fn shutdown(mut self, grace: Duration) {
        self.env.call.live.drain(grace).await;
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for SipServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `renewal-bot sip`: loads the script and clips, answers calls until Ctrl-C or SIGTERM,
/// then lets live calls finish.
pub async fn serve(args: SipArgs, shared: SharedDeps) -> anyhow::Result<()> {
    let config = SipConfig::new(args.listen, args.rtp_ip)?;
    let script_dir = args.script_dir.unwrap_or_else(Script::default_dir);
    let audio_dir = args.audio_dir.unwrap_or_else(|| PathBuf::from("audio"));
    let deps = CallDeps::load(shared, &script_dir, &audio_dir)?;
    close_interrupted_calls(&deps.store);
    let server = SipServer::start(config, deps).await?;
    eprintln!(
        "renewal-bot: answering SIP calls on udp {}; dial sip:bot@{}",
        server.local_addr(),
        server.local_addr()
    );
    shutdown_signal().await;
    server
        .shutdown(Duration::from_secs(args.shutdown_grace_s))
        .await;
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(
    mut incoming: rsipstack::transaction::TransactionReceiver,
    env: SipEnv,
    config: SipConfig,
    cancel: CancellationToken,
) {
    loop {
        let tx = tokio::select! {
            tx = incoming.recv() => tx,
            _ = cancel.cancelled() => break,
        };
        let Some(mut tx) = tx else { break };
        let method = tx.original.method;
        let in_dialog = tx
            .original
            .to_header()
            .ok()
            .and_then(|to| to.tag().ok().flatten())
            .is_some();
        if in_dialog {
            match env.dialogs.match_dialog(&tx) {
                Some(mut dialog) => {
                    tokio::spawn(async move {
                        if let Err(err) = dialog.handle(&mut tx).await {
                            tracing::debug!(%err, %method, "in-dialog request failed");
                        }
                    });
                }
                None if method == Method::Ack => {}
                None => {
                    tracing::info!(%method, "request for an unknown dialog: 481");
                    reply(tx, StatusCode::CallTransactionDoesNotExist);
                }
            }
            continue;
        }
        match method {
            Method::Invite => {
                tokio::spawn(answer_invite(tx, env.clone(), config.clone()));
            }
            Method::Ack => {}
            Method::Options => reply(tx, StatusCode::OK),
            Method::Bye | Method::Cancel => {
                reply(tx, StatusCode::CallTransactionDoesNotExist);
            }
            other => {
                tracing::info!(method = %other, "request outside a dialog: 405");
                reply(tx, StatusCode::MethodNotAllowed);
            }
        }
    }
    tracing::debug!("no more SIP transactions");
}

/// Answers a transaction in the background.
fn reply(mut tx: Transaction, status: StatusCode) {
    tokio::spawn(async move {
        if let Err(err) = tx.reply(status).await {
            tracing::debug!(%err, "cannot send the response");
        }
    });
}

/// A new INVITE: checks, answers and runs the call, all inside the call's span.
async fn answer_invite(mut tx: Transaction, env: SipEnv, config: SipConfig) {
    let call_id = format!("sip-{}", uuid::Uuid::new_v4());
    let sip_call_id = tx
        .original
        .call_id_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("call", call_id = %call_id, sip_call_id = %sip_call_id);
    async move {
        let caller = tx
            .original
            .from_header()
            .ok()
            .and_then(|from| from.uri().ok())
            .and_then(|uri| uri.auth)
            .map(|auth| auth.user);
        let dialled = tx.original.uri.auth.as_ref().map(|auth| auth.user.clone());
        let to_number = match caller.as_deref().map(normalize_number) {
            Some(Ok(number)) => Some(number),
            Some(Err(_)) | None => {
                tracing::warn!(
                    ?caller,
                    "the caller's user part is not a phone number: do-not-call requests cannot be recorded"
                );
                None
            }
        };
        tracing::info!(?caller, ?dialled, to = ?to_number, "INVITE");

        // While do-not-call entries cannot be written, take no call at all.
        if let Some(problem) = env.call.deps.refusing_calls() {
            tracing::error!(%problem, "the store cannot be trusted with a call: 503");
            if let Err(err) = tx.reply(StatusCode::ServiceUnavailable).await {
                tracing::warn!(%err, "cannot send 503");
            }
            return;
        }
        // Never talk to a number on the do-not-call list; when the list cannot be read,
        // do not talk either.
        if let Some(number) = to_number.clone() {
            let store = env.call.deps.store.clone();
            let dnc = tokio::task::spawn_blocking(move || store.is_dnc(&number))
                .await
                .map_err(|err| err.to_string())
                .and_then(|r| r.map_err(|err| err.to_string()))
                .unwrap_or_else(|err| {
                    tracing::error!(%err, "cannot read the do-not-call list: declining to be safe");
                    true
                });
            if dnc {
                tracing::info!("the caller is on the do-not-call list: 603 Decline");
                if let Err(err) = tx.reply(StatusCode::Decline).await {
                    tracing::warn!(%err, "cannot send 603");
                }
                return;
            }
        }

        let offer = match sdp::parse_offer(&tx.original.body) {
            Ok(offer) => offer,
            Err(err) => {
                tracing::warn!(%err, "unusable SDP offer: 488");
                let warning = Header::Warning(format!("399 renewal-bot \"{err}\"").into());
                if let Err(err) = tx
                    .reply_with(StatusCode::NotAcceptableHere, vec![warning], None)
                    .await
                {
                    tracing::warn!(%err, "cannot send 488");
                }
                return;
            }
        };
        let rtp = match UdpSocket::bind(SocketAddr::new(config.rtp_ip, 0)).await {
            Ok(socket) => socket,
            Err(err) => {
                tracing::error!(%err, rtp_ip = %config.rtp_ip, "cannot open an RTP socket: 500");
                let _ = tx.reply(StatusCode::ServerInternalError).await;
                return;
            }
        };
        let local_rtp = match rtp.local_addr() {
            Ok(addr) => addr,
            Err(err) => {
                tracing::error!(%err, "RTP socket address: 500");
                let _ = tx.reply(StatusCode::ServerInternalError).await;
                return;
            }
        };
        let answer = sdp::answer(local_rtp, uuid::Uuid::new_v4().as_u64_pair().0 >> 1);

        let (state_tx, states) = env.dialogs.new_dialog_state_channel();
        let dialog = match env
            .dialogs
            .get_or_create_server_invite(&tx, state_tx, None, None)
        {
            Ok(dialog) => dialog,
            Err(err) => {
                tracing::warn!(%err, "cannot create the dialog: 400");
                let _ = tx.reply(StatusCode::BadRequest).await;
                return;
            }
        };
        // The INVITE transaction (100 Trying, retransmissions, ACK, CANCEL) runs on its own.
        let mut transaction_dialog = dialog.clone();
        tokio::spawn(
            async move {
                if let Err(err) = transaction_dialog.handle(&mut tx).await {
                    tracing::warn!(%err, "INVITE transaction failed");
                }
            }
            .in_current_span(),
        );
        if let Err(err) = dialog.ringing(None, None) {
            tracing::warn!(%err, "cannot send 180 Ringing");
        }
        let headers = vec![Header::ContentType("application/sdp".into())];
        if let Err(err) = dialog.accept(Some(headers), Some(answer.clone().into_bytes())) {
            tracing::warn!(%err, "cannot send 200 OK: giving the call up");
            env.dialogs.remove_dialog(&dialog.id());
            return;
        }
        let t0 = Instant::now();
        tracing::info!(remote_rtp = %offer.rtp, %local_rtp, "answered: 200 OK");
        let setup = CallSetup {
            call_id,
            sip_call_id,
            to_number,
            from_number: dialled,
            dialog,
            states,
            rtp,
            remote_rtp: offer.rtp,
            answer,
            t0,
        };
        call::run(setup, env).await;
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_ip_defaults_to_a_concrete_listen_address() {
        let c = SipConfig::new("127.0.0.1:5070".parse().unwrap(), None).unwrap();
        assert_eq!(c.rtp_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(SipConfig::new("0.0.0.0:5070".parse().unwrap(), None).is_err());
        let c = SipConfig::new(
            "0.0.0.0:5070".parse().unwrap(),
            Some("192.0.2.7".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(c.rtp_ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert!(
            SipConfig::new(
                "127.0.0.1:5070".parse().unwrap(),
                Some("0.0.0.0".parse().unwrap())
            )
            .is_err()
        );
    }
}
