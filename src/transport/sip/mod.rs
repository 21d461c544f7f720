//! SIP: answers calls from a SIP softphone (UDP, `sip:bot@HOST:PORT`) and talks over RTP
//! (PCMU/8000, 20 ms packets), one task per call driving a [`crate::session::Session`]
//! through the same `transport::driver` core as the Twilio driver.
//!
//! - [`sdp`] — the offer/answer for one PCMU stream, no I/O;
//! - [`rtp`] — RTP packet parsing and the outgoing stream's header fields, no I/O;
//! - [`media`] — which SDP addresses get RTP (`--allow-media-net`) and which sources are
//!   the caller's RTP (the SDP's address and port, or `--symmetric-rtp`), no I/O;
//! - [`admission`] — the INVITE rate per source IP, no I/O;
//! - [`server`] — the rsipstack endpoint: INVITE checks (rate per source → dropped, call
//!   cap → 503, do-not-call → 603, no PCMU or a media address not allowed → 488), answers,
//!   in-dialog routing, graceful shutdown;
//! - [`call`] — the per-call dialog and RTP stream (no media before the ACK, the ACK
//!   deadline, the RTP latch, pacing, playback, BYE), driven by `transport::driver`.

pub mod admission;
pub mod call;
pub mod media;
pub mod rtp;
pub mod sdp;
pub mod server;

pub use server::{
    DEFAULT_LISTEN, DEFAULT_MAX_CALLS, MAX_ACK_TIMEOUT, SipArgs, SipConfig, SipServer, serve,
};
