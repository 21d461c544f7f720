//! Transports: thin drivers that connect the sans-I/O call session to a phone network.
//! `twilio` speaks Twilio's webhooks, Media Streams WebSocket and Calls API; `sip` answers
//! SIP softphones over UDP with RTP audio. Both use `calls` (what a server shares with its
//! calls: dependencies, events, live-call count, start-up and shutdown) and `driver` (the
//! per-call core that runs the session, recognition, turns and the store, while each
//! transport only does its own I/O).

pub mod calls;
pub(crate) mod driver;
pub mod sip;
pub mod twilio;

pub use calls::{CallDeps, CallEvent, SharedDeps};
