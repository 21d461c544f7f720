//! Twilio: `POST /twiml` connects a call to a bidirectional Media Stream, `GET /media` is
//! that stream (one task per call driving a [`crate::session::Session`]), `POST /status`
//! takes status callbacks; outbound calls and the hang-up fallback go through the Calls API.
//!
//! - [`protocol`] — the WebSocket messages and the TwiML, no I/O;
//! - [`signature`] — `X-Twilio-Signature`;
//! - [`stream_token`] — the one-time token binding a stream to its `/twiml` request;
//! - [`config`] — `serve` settings, and the Twilio account flags `call` shares;
//! - [`server`] — the axum app and graceful shutdown;
//! - [`call`] — the per-call Media Stream (pacing, marks, `clear`, closing the stream), driven
//!   by `transport::driver`;
//! - [`rest`] — the Calls API client.

pub mod call;
pub mod config;
pub mod protocol;
pub mod rest;
pub mod server;
pub mod signature;
pub mod stream_token;

pub use config::{ServeArgs, ServeConfig, TwilioCredentials};
pub use server::{AppState, router, serve};
