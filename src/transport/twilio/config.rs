//! Settings of `renewal-bot serve`: command-line flags and environment variables, with an
//! optional TOML file (`--config FILE`) under them, checked once at start-up.
//! [`TwilioCredentials`], the Twilio account flags, is shared with `renewal-bot call`.
//!
//! Precedence: flag > environment variable > config file > built-in default.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// The Twilio account, as `serve` and `call` take it: flags or environment variables.
/// A command whose help says more about a flag sets it with `mut_arg`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TwilioCredentials {
    /// Twilio auth token (set it in the environment): signs Calls API requests and checks
    /// `X-Twilio-Signature`.
    #[arg(
        long = "auth-token",
        env = "TWILIO_AUTH_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub auth_token: Option<String>,
    /// Twilio account SID.
    #[arg(long = "account-sid", env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: Option<String>,
    /// Base URL of the Twilio REST API [default: https://api.twilio.com].
    #[arg(long, env = "TWILIO_API_BASE")]
    pub twilio_api_base: Option<String>,
}

/// `renewal-bot serve`: answer Twilio's webhooks and Media Streams.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(mut_arg("account_sid", |arg| arg.help(
    "Twilio account SID: with the token, lets the server end calls through the Calls API"
)))]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LISTEN_ADDR")]
    pub listen: Option<SocketAddr>,
    /// The public base URL Twilio reaches this server at (https://bot.example.com); used for
    /// the stream URL in the TwiML and to check signatures. Without it, the Host header is
    /// trusted with https.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The auth token checks `X-Twilio-Signature`; with the account SID, it lets the server
    /// end calls through the Calls API.
    #[command(flatten)]
    pub twilio: TwilioCredentials,
    /// Accept requests without a valid Twilio signature. Only for local experiments.
    #[arg(long)]
    pub insecure_skip_signature: bool,
    /// Directory of 李明's clips (with manifest.toml) [default: audio].
    #[arg(long)]
    pub audio_dir: Option<PathBuf>,
    /// Directory of the dialog script [default: script].
    #[arg(long)]
    pub script_dir: Option<PathBuf>,
    /// TOML file with any of the keys above (listen, public_url, account_sid,
    /// insecure_skip_signature, twilio_api_base, audio_dir, script_dir, shutdown_grace_s).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The same keys, from `--config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    public_url: Option<String>,
    auth_token: Option<String>,
    account_sid: Option<String>,
    #[serde(default)]
    insecure_skip_signature: bool,
    twilio_api_base: Option<String>,
    audio_dir: Option<PathBuf>,
    script_dir: Option<PathBuf>,
    shutdown_grace_s: Option<u64>,
}

/// Checked settings of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Public base URL without a trailing slash (`https://bot.example.com`), if known.
    pub public_url: Option<String>,
    /// `None` only with `--insecure-skip-signature`.
    pub auth_token: Option<String>,
    pub account_sid: Option<String>,
    pub twilio_api_base: String,
    pub audio_dir: PathBuf,
    pub script_dir: PathBuf,
    /// How long live calls may go on after Ctrl-C / SIGTERM.
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// Merges flags, environment and the config file, and checks the result.
    pub fn resolve(&self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = match self.listen.or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let public_url = self
            .public_url
            .clone()
            .or(file.public_url)
            .map(|u| check_public_url(&u))
            .transpose()?;
        let auth_token = self
            .twilio
            .auth_token
            .clone()
            .or(file.auth_token)
            .filter(|t| !t.trim().is_empty());
        let insecure = self.insecure_skip_signature || file.insecure_skip_signature;
        let auth_token = match (auth_token, insecure) {
            (_, true) => {
                tracing::warn!(
                    "!!! --insecure-skip-signature: X-Twilio-Signature is NOT checked; anyone who \
                     finds this server can drive calls and write to the call records. Never run \
                     it like this on a public address. !!!"
                );
                None
            }
            (Some(token), false) => Some(token),
            (None, false) => bail!(
                "no Twilio auth token: set TWILIO_AUTH_TOKEN so the server can check \
                 X-Twilio-Signature, or pass --insecure-skip-signature for a local test"
            ),
        };
        Ok(ServeConfig {
            listen,
            public_url,
            auth_token,
            account_sid: self
                .twilio
                .account_sid
                .clone()
                .or(file.account_sid)
                .filter(|s| !s.trim().is_empty()),
            twilio_api_base: self
                .twilio
                .twilio_api_base
                .clone()
                .or(file.twilio_api_base)
                .unwrap_or_else(|| DEFAULT_API_BASE.to_string()),
            audio_dir: self
                .audio_dir
                .clone()
                .or(file.audio_dir)
                .unwrap_or_else(|| PathBuf::from("audio")),
            script_dir: self
                .script_dir
                .clone()
                .or(file.script_dir)
                .unwrap_or_else(|| PathBuf::from("script")),
            shutdown_grace: Duration::from_secs(file.shutdown_grace_s.unwrap_or(15)),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config file", path.display()))
}

/// `https://host[:port][/prefix]`, no query, no trailing slash.
pub fn check_public_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("--public-url {url:?} must start with https:// (or http:// for local tests)");
    };
    if !matches!(scheme, "https" | "http") {
        bail!("--public-url {url:?} must start with https:// (or http:// for local tests)");
    }
    if rest.is_empty() || rest.contains('?') || rest.contains('#') {
        bail!("--public-url {url:?} must be a base URL: a host, maybe a path, no query");
    }
    Ok(url.to_string())
}

/// The WebSocket form of a public URL: https → wss, http → ws.
pub fn websocket_base(public_url: &str) -> String {
    if let Some(rest) = public_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = public_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        public_url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_and_no_insecure_flag_names_both_options() {
        let err = ServeArgs::default().resolve().unwrap_err().to_string();
        assert!(err.contains("TWILIO_AUTH_TOKEN"), "{err}");
        assert!(err.contains("--insecure-skip-signature"), "{err}");
    }

    #[test]
    fn defaults_and_file_values_fill_in_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\npublic_url = \"https://file.example.com/\"\naudio_dir = \"clips\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            public_url: Some("https://flag.example.com".into()),
            twilio: TwilioCredentials {
                auth_token: Some("tok".into()),
                ..Default::default()
            },
            config: Some(path),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(
            config.public_url.as_deref(),
            Some("https://flag.example.com")
        );
        assert_eq!(config.audio_dir, PathBuf::from("clips"));
        assert_eq!(config.script_dir, PathBuf::from("script"));
        assert_eq!(config.twilio_api_base, DEFAULT_API_BASE);
        assert_eq!(config.auth_token.as_deref(), Some("tok"));
    }

    #[test]
    fn public_urls_are_checked_and_mapped_to_websockets() {
        assert_eq!(
            check_public_url("https://bot.example.com/").unwrap(),
            "https://bot.example.com"
        );
        assert!(check_public_url("bot.example.com").is_err());
        assert!(check_public_url("https://bot.example.com/?x=1").is_err());
        assert_eq!(
            websocket_base("https://bot.example.com/x"),
            "wss://bot.example.com/x"
        );
        assert_eq!(websocket_base("http://127.0.0.1:1"), "ws://127.0.0.1:1");
    }
}
