//! renewal-bot: an outbound service-expiry phone bot. See ARCHITECTURE.md for the flow.

pub mod asr;
pub mod audio;
pub mod campaign;
pub mod dialer;
pub mod dialog;
pub mod eval;
pub mod intent;
pub mod labels;
pub mod phonetic;
pub mod records;
pub mod session;
pub mod store;
pub mod text;
pub mod transport;
pub mod vad;
