//! The SIP side of `renewal-bot sip`: a UDP endpoint (rsipstack transactions and dialogs)
//! that answers INVITEs.
//!
//! Each new INVITE is checked before anything is said, cheapest first:
//! - over its source IP's rate (`--invite-rate`, `--invite-burst`): dropped unanswered
//!   ([`super::admission`] says why not 503) and logged;
//! - `--max-calls` calls already (unconfirmed ones included): `503 Service Unavailable`
//!   with `Retry-After`;
//! - a caller on the do-not-call list: `603 Decline`;
//! - an offer without PCMU/8000, or whose `c=` address is neither the INVITE's source nor
//!   in `--allow-media-net` ([`super::media`]): `488 Not Acceptable Here` with a Warning.
//!
//! Otherwise the bot opens an RTP socket and answers `180`; the call then runs in its own
//! task ([`super::call`]), which records it, answers `200` with the bot's SDP and starts
//! talking at the ACK. In-dialog
//! requests (ACK, BYE, re-INVITE, INFO) go to their dialog, OPTIONS is answered 200, other
//! requests outside a dialog 405 (481 for BYE). rsipstack drops datagrams that do not
//! parse as SIP.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::{Admit, InviteLimiter, InviteRate};
use super::call::{self, CallSetup, SipEnv};
use super::media::{MediaNet, MediaPolicy, RtpLatch};
use super::sdp;

/// Where `renewal-bot sip` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5070";
/// RFC 3261 Timer H (64 × T1): the longest a 200 OK waits for its ACK.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(32);
/// Calls at once, unconfirmed ones included, by default.
pub const DEFAULT_MAX_CALLS: usize = 8;
/// What a 503 at the call cap asks the caller to wait (about one call's length).
const RETRY_AFTER_S: u32 = 60;
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
    /// Take the caller's RTP from the address its INVITE came from (any port of that IP,
    /// the first one latched) instead of the SDP's c=/m= address: for softphones behind
    /// NAT whose SDP names a private address. Without it only the SDP's address and port
    /// are heard.
    #[arg(long)]
    pub symmetric_rtp: bool,
    /// Seconds a 200 OK waits for the caller's ACK before the bot hangs up (BYE; the call is
    /// recorded as no_response). At most 32 (RFC 3261 Timer H); lower frees the slot of a
    /// caller that never confirms sooner. The bot sends no audio before the ACK.
    #[arg(long, default_value_t = MAX_ACK_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=32))]
    pub ack_timeout_s: u64,
    /// Calls at once, counted from the INVITE (unconfirmed ones too); more get
    /// 503 Service Unavailable with Retry-After.
    #[arg(long, default_value_t = DEFAULT_MAX_CALLS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls: u32,
    /// New INVITEs per second one source IP may send (token bucket refill); INVITEs over
    /// it are dropped unanswered and logged.
    #[arg(long, default_value_t = InviteRate::default().per_second, value_parser = positive_rate)]
    pub invite_rate: f64,
    /// INVITEs one source IP may send at once before --invite-rate applies.
    #[arg(long, default_value_t = InviteRate::default().burst, value_parser = clap::value_parser!(u32).range(1..))]
    pub invite_burst: u32,
    /// A network (CIDR) the SDP's c= address may be in, else 488 Not Acceptable Here;
    /// repeat for more (they replace the default: loopback and the private RFC 1918
    /// networks). The address the INVITE came from is always allowed.
    #[arg(long = "allow-media-net", value_name = "CIDR")]
    pub allow_media_net: Vec<MediaNet>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{s}` is not a positive number of INVITEs per second"
        )),
    }
}

/// Checked settings of the SIP endpoint.
#[derive(Debug, Clone)]
pub struct SipConfig {
    pub listen: SocketAddr,
    /// Where RTP sockets are bound, and what the SDP answer names.
    pub rtp_ip: IpAddr,
    /// `--symmetric-rtp`.
    pub symmetric_rtp: bool,
    /// How long a 200 OK waits for its ACK (at most [`MAX_ACK_TIMEOUT`]).
    pub ack_timeout: Duration,
    /// Calls at once; more get 503.
    pub max_calls: usize,
    /// New INVITEs per source IP.
    pub invite_rate: InviteRate,
    /// Which SDP connection addresses are answered.
    pub media: MediaPolicy,
}

impl SipConfig {
    /// `rtp_ip` defaults to the listen address, which must then be a concrete one; the rest
    /// are the flags' defaults.
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
        Ok(SipConfig {
            listen,
            rtp_ip,
            symmetric_rtp: false,
            ack_timeout: MAX_ACK_TIMEOUT,
            max_calls: DEFAULT_MAX_CALLS,
            invite_rate: InviteRate::default(),
            media: MediaPolicy::default(),
        })
    }

    /// The settings of `renewal-bot sip`'s flags.
    pub fn from_args(args: &SipArgs) -> anyhow::Result<SipConfig> {
        let mut config = SipConfig::new(args.listen, args.rtp_ip)?;
        config.symmetric_rtp = args.symmetric_rtp;
        config.ack_timeout = Duration::from_secs(args.ack_timeout_s).min(MAX_ACK_TIMEOUT);
        config.max_calls = usize::try_from(args.max_calls)
            .context("--max-calls is too large")?
            .max(1);
        config.invite_rate = InviteRate {
            per_second: args.invite_rate,
            burst: args.invite_burst.max(1),
        };
        if !args.allow_media_net.is_empty() {
            config.media = MediaPolicy {
                nets: args.allow_media_net.clone(),
            };
        }
        Ok(config)
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
    let config = SipConfig::from_args(&args)?;
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
    let mut limiter = InviteLimiter::new(config.invite_rate);
    let slots = Arc::new(Semaphore::new(config.max_calls));
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
                let source = source_addr(&tx);
                if !admitted(&mut limiter, &tx, source) {
                    // Dropped unanswered (see `admission`): the transaction goes with it.
                    continue;
                }
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        tokio::spawn(answer_invite(tx, env.clone(), config.clone(), source, slot));
                    }
                    Err(_) => {
                        tracing::warn!(
                            sip_call_id = %sip_call_id(&tx),
                            ?source,
                            max_calls = config.max_calls,
                            "{} calls already (--max-calls): 503 Service Unavailable, Retry-After {RETRY_AFTER_S} s",
                            config.max_calls
                        );
                        let retry = Header::RetryAfter(RETRY_AFTER_S.to_string().into());
                        tokio::spawn(async move {
                            if let Err(err) = tx
                                .reply_with(StatusCode::ServiceUnavailable, vec![retry], None)
                                .await
                            {
                                tracing::debug!(%err, "cannot send 503");
                            }
                        });
                    }
                }
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

/// Where the request came from (the UDP datagram's source, not what its Via claims).
fn source_addr(tx: &Transaction) -> Option<SocketAddr> {
    tx.connection
        .as_ref()
        .and_then(|c| c.get_remote_addr())
        .and_then(|a| a.get_socketaddr().ok())
}

fn sip_call_id(tx: &Transaction) -> String {
    tx.original
        .call_id_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default()
}

/// The INVITE rate check of one source, logged when it drops (first drops of a run, then
/// every power of two, so a flood does not flood the log too).
fn admitted(limiter: &mut InviteLimiter, tx: &Transaction, source: Option<SocketAddr>) -> bool {
    // A request with no known source (not over UDP) shares one bucket with its kind.
    let ip = source.map_or(IpAddr::from([0u8, 0, 0, 0]), |s| s.ip());
    match limiter.admit(ip, std::time::Instant::now()) {
        Admit::Allowed => true,
        Admit::Limited { dropped } => {
            if dropped <= 3 || dropped.is_power_of_two() {
                tracing::warn!(
                    sip_call_id = %sip_call_id(tx),
                    %ip,
                    dropped,
                    "INVITE over the rate of its source (--invite-rate, --invite-burst): dropped"
                );
            }
            false
        }
        Admit::NoRoom => {
            tracing::warn!(
                sip_call_id = %sip_call_id(tx),
                %ip,
                "INVITE from a new source while too many are being rate-limited: dropped"
            );
            false
        }
    }
}

/// Answers a transaction in the background.
fn reply(mut tx: Transaction, status: StatusCode) {
    tokio::spawn(async move {
        if let Err(err) = tx.reply(status).await {
            tracing::debug!(%err, "cannot send the response");
        }
    });
}

/// A new INVITE: checks, answers and runs the call, all inside the call's span. `slot` is
/// its place under `--max-calls`, held until the call's record is complete.
async fn answer_invite(
    mut tx: Transaction,
    env: SipEnv,
    config: SipConfig,
    source: Option<SocketAddr>,
    slot: OwnedSemaphorePermit,
) {
    let call_id = format!("sip-{}", uuid::Uuid::new_v4());
    let sip_call_id = sip_call_id(&tx);
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
        tracing::info!(?caller, ?dialled, to = ?to_number, ?source, "INVITE");

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
                not_acceptable(&mut tx, &err.to_string()).await;
                return;
            }
        };
        let signalling_ip = source.map(|s| s.ip());
        if !config.media.allows(offer.rtp.ip(), signalling_ip) {
            let why = format!(
                "media address {} is not the caller's and not in an allowed network (--allow-media-net)",
                offer.rtp.ip()
            );
            tracing::warn!(
                sdp_rtp = %offer.rtp,
                ?source,
                allowed = %config
                    .media
                    .nets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                "refused: the SDP asks for RTP to an address the bot does not send to: 488"
            );
            not_acceptable(&mut tx, &why).await;
            return;
        }
        let latch = match (config.symmetric_rtp, signalling_ip) {
            (true, Some(ip)) => RtpLatch::symmetric(offer.rtp, ip),
            (true, None) => {
                tracing::warn!("--symmetric-rtp, but the INVITE's source is unknown: using the SDP's address");
                RtpLatch::sdp(offer.rtp)
            }
            (false, _) => RtpLatch::sdp(offer.rtp),
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
        tracing::info!(remote_rtp = %offer.rtp, %local_rtp, rtp_from = %latch.describe(), "accepting the call");
        let setup = CallSetup {
            call_id,
            sip_call_id,
            to_number,
            from_number: dialled,
            dialog,
            states,
            rtp,
            latch,
            answer,
            ack_timeout: config.ack_timeout,
        };
        call::run(setup, env, slot).await;
    }
    .instrument(span)
    .await;
}

/// 488 Not Acceptable Here, with why in a Warning header.
async fn not_acceptable(tx: &mut Transaction, why: &str) {
    let why = why.replace('"', "'");
    let warning = Header::Warning(format!("399 renewal-bot \"{why}\"").into());
    if let Err(err) = tx
        .reply_with(StatusCode::NotAcceptableHere, vec![warning], None)
        .await
    {
        tracing::warn!(%err, "cannot send 488");
    }
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sip: SipArgs,
    }

    fn parse(args: &[&str]) -> Result<SipConfig, String> {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(std::iter::once("sip").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        SipConfig::from_args(&cli.sip).map_err(|e| e.to_string())
    }

    #[test]
    fn hardening_flags_have_safe_defaults() {
        let c = parse(&[]).unwrap();
        assert!(!c.symmetric_rtp);
        assert_eq!(c.ack_timeout, MAX_ACK_TIMEOUT);
        assert_eq!(c.ack_timeout, Duration::from_secs(32));
        assert_eq!(c.max_calls, DEFAULT_MAX_CALLS);
        assert_eq!(c.invite_rate, InviteRate::default());
        assert_eq!(c.media, MediaPolicy::default());
    }

    #[test]
    fn hardening_flags_are_read_and_checked() {
        let c = parse(&[
            "--symmetric-rtp",
            "--ack-timeout-s",
            "4",
            "--max-calls",
            "3",
            "--invite-rate",
            "0.5",
            "--invite-burst",
            "2",
            "--allow-media-net",
            "192.0.2.0/24",
            "--allow-media-net",
            "2001:db8::/32",
        ])
        .unwrap();
        assert!(c.symmetric_rtp);
        assert_eq!(c.ack_timeout, Duration::from_secs(4));
        assert_eq!(c.max_calls, 3);
        assert_eq!(
            c.invite_rate,
            InviteRate {
                per_second: 0.5,
                burst: 2
            }
        );
        assert_eq!(
            c.media.nets,
            vec![
                "192.0.2.0/24".parse::<MediaNet>().unwrap(),
                "2001:db8::/32".parse::<MediaNet>().unwrap()
            ]
        );
        for bad in [
            &["--ack-timeout-s", "33"][..],
            &["--ack-timeout-s", "0"],
            &["--max-calls", "0"],
            &["--invite-rate", "0"],
            &["--invite-rate", "-1"],
            &["--invite-rate", "NaN"],
            &["--invite-burst", "0"],
            &["--allow-media-net", "10.0.0.0/40"],
            &["--allow-media-net", "example.com"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse(&["--allow-media-net", "10.0.0/8"]).unwrap_err();
        assert!(err.contains("CIDR"), "{err}");
    }
}
