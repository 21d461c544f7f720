//! Transports: thin drivers that connect the sans-I/O call session to a phone network.
//! `twilio` speaks Twilio's webhooks, Media Streams WebSocket and Calls API; `sip` answers
//! SIP softphones over UDP with RTP audio.

pub mod sip;
pub mod twilio;
