//! One-time stream tokens, free of I/O: they bind each Media Stream to the `/twiml` request
//! that asked Twilio to open it.
//!
//! The WebSocket upgrade's `X-Twilio-Signature` is the same for every call (a GET of one
//! URL with no parameters), so it proves nothing about the call; what Twilio sends in
//! `start` (`callSid`, `customParameters`) would otherwise be trusted as is. `/twiml` therefore
//! adds a `token` `<Parameter>`: `v1.<expiry>.<nonce>.<mac>`, where `mac` is
//! HMAC-SHA256 over the CallSid, the expiry (Unix seconds), a random nonce and every other
//! parameter it issued (call id, callee, caller, CallSid), each length-prefixed. A `start`
//! is a call only when its token is well formed, unexpired, has not opened a stream before
//! (used nonces are remembered until their expiry), and its MAC matches `start`'s own
//! `callSid` and exactly its `customParameters` (none edited, added or removed).
//!
//! The key is drawn at random when the process starts and never stored or derived from
//! the auth token: a token is only good for the process that issued it, within
//! [`TOKEN_TTL`]. So a restart, which forgets the used nonces, also voids every token
//! issued before it, and a replay across a restart is refused too. The cost: a call whose
//! webhook was answered in the seconds before a restart loses its stream (Twilio then
//! reaches the TwiML's `<Hangup/>`), and several `serve` processes behind one address need
//! the webhook and the stream of a call to reach the same process.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The `<Parameter>` the token travels in.
pub const TOKEN_PARAMETER: &str = "token";
/// How long after `/twiml` the stream may start. Twilio opens it within a second or two.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

const VERSION: &str = "v1";
/// Used nonces kept at most (each entry lives for `TOKEN_TTL`); far above any call rate
/// the recognizer can serve, it only bounds memory if `/twiml` is flooded with signed
/// requests.
const MAX_USED: usize = 100_000;

/// Why a `start` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no `{TOKEN_PARAMETER}` parameter: this stream was not issued by /twiml")]
    Missing,
    #[error("the stream token is malformed")]
    Malformed,
    #[error("the stream token expired {0} s ago")]
    Expired(u64),
    #[error("the stream token does not match this CallSid and these parameters")]
    Mismatch,
    #[error("the stream token has already opened a stream")]
    Replayed,
    #[error("too many stream tokens in use; try again in a minute")]
    Full,
}

/// Issues and redeems the tokens of one process.
pub struct StreamTokens {
    key: [u8; 32],
    ttl: Duration,
    /// Nonces of redeemed tokens → their expiry (Unix seconds).
    used: Mutex<HashMap<String, u64>>,
}

impl Default for StreamTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamTokens {
    /// A fresh random key (two v4 UUIDs from the OS generator: 244 random bits).
    pub fn new() -> StreamTokens {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        StreamTokens::with_key(key, TOKEN_TTL)
    }

    /// A given key and lifetime (tests).
    pub fn with_key(key: [u8; 32], ttl: Duration) -> StreamTokens {
        StreamTokens {
            key,
            ttl,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The token for a stream of `call_sid` carrying `parameters` (without the token),
    /// issued at `now` (Unix seconds).
    pub fn issue(&self, call_sid: &str, parameters: &[(&str, &str)], now: u64) -> String {
        let expiry = now.saturating_add(self.ttl.as_secs());
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let parameters: BTreeMap<&str, &str> = parameters.iter().copied().collect();
        let mac = self.mac(call_sid, expiry, &nonce, &parameters);
        format!("{VERSION}.{expiry}.{nonce}.{}", BASE64URL.encode(mac))
    }

    /// Checks the token in `parameters` (a `start`'s `customParameters`) against
    /// `call_sid` (its `callSid`) and the other parameters, and marks it used. `now`: Unix
    /// seconds.
    pub fn redeem(
        &self,
        call_sid: &str,
        parameters: &BTreeMap<String, String>,
        now: u64,
    ) -> Result<(), Refusal> {
        let token = parameters.get(TOKEN_PARAMETER).ok_or(Refusal::Missing)?;
        let mut parts = token.split('.');
        let (Some(VERSION), Some(expiry), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Malformed);
        };
        let expiry: u64 = expiry.parse().map_err(|_| Refusal::Malformed)?;
        let mac = BASE64URL.decode(mac).map_err(|_| Refusal::Malformed)?;
        let others: BTreeMap<&str, &str> = parameters
            .iter()
            .filter(|(name, _)| name.as_str() != TOKEN_PARAMETER)
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let expected = self.mac(call_sid, expiry, nonce, &others);
        if !bool::from(expected.as_slice().ct_eq(&mac)) {
            return Err(Refusal::Mismatch);
        }
        if now > expiry {
            return Err(Refusal::Expired(now - expiry));
        }
        // Only tokens this process issued get this far, so the set cannot be filled by
        // forgeries.
        let mut used = match self.used.lock() {
            Ok(used) => used,
            Err(poisoned) => poisoned.into_inner(),
        };
        used.retain(|_, until| *until >= now);
        if used.contains_key(nonce) {
            return Err(Refusal::Replayed);
        }
        if used.len() >= MAX_USED {
            return Err(Refusal::Full);
        }
        used.insert(nonce.to_string(), expiry);
        Ok(())
    }

    fn mac(
        &self,
        call_sid: &str,
        expiry: u64,
        nonce: &str,
        parameters: &BTreeMap<&str, &str>,
    ) -> Vec<u8> {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        // Every field length-prefixed, so no two different inputs encode alike.
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(b"renewal-bot stream token v1");
        field(call_sid.as_bytes());
        field(expiry.to_string().as_bytes());
        field(nonce.as_bytes());
        for (name, value) in parameters {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }
}

/// Now as Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn tokens() -> StreamTokens {
        StreamTokens::with_key([7; 32], Duration::from_secs(60))
    }

    /// What `start` hands back: the issued parameters plus the token.
    fn start_params(tokens: &StreamTokens, call_sid: &str) -> BTreeMap<String, String> {
        let issued = [
            ("call_id", "c-1"),
            ("to", "+8613800000000"),
            ("from", "+14155550100"),
            ("call_sid", call_sid),
        ];
        let token = tokens.issue(call_sid, &issued, NOW);
        let mut params: BTreeMap<String, String> = issued
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        params.insert(TOKEN_PARAMETER.into(), token);
        params
    }

    #[test]
    fn a_token_opens_exactly_one_stream() {
        let tokens = tokens();
        let params = start_params(&tokens, "CA1");
        assert_eq!(tokens.redeem("CA1", &params, NOW + 1), Ok(()));
        assert_eq!(
            tokens.redeem("CA1", &params, NOW + 2),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn every_edit_of_the_call_is_refused() {
        let tokens = tokens();
        let params = start_params(&tokens, "CA1");
        assert_eq!(
            tokens.redeem("CA2", &params, NOW),
            Err(Refusal::Mismatch),
            "another CallSid"
        );
        for (name, value) in [
            ("to", "+8613800000001"),
            ("call_id", "c-2"),
            ("from", "+1"),
            ("call_sid", "CA2"),
            ("extra", "1"),
        ] {
            let mut edited = params.clone();
            edited.insert(name.into(), value.into());
            assert_eq!(
                tokens.redeem("CA1", &edited, NOW),
                Err(Refusal::Mismatch),
                "{name} edited"
            );
        }
        let mut removed = params.clone();
        removed.remove("from");
        assert_eq!(tokens.redeem("CA1", &removed, NOW), Err(Refusal::Mismatch));
        // Another process (another key) did not issue it.
        let other = StreamTokens::with_key([8; 32], Duration::from_secs(60));
        assert_eq!(other.redeem("CA1", &params, NOW), Err(Refusal::Mismatch));
        // None of these used the token up.
        assert_eq!(tokens.redeem("CA1", &params, NOW), Ok(()));
    }

    #[test]
    fn malformed_missing_and_expired_tokens_are_refused() {
        let tokens = tokens();
        let mut params = start_params(&tokens, "CA1");
        assert_eq!(
            tokens.redeem("CA1", &params, NOW + 61),
            Err(Refusal::Expired(1))
        );
        let token = params[TOKEN_PARAMETER].clone();
        // The expiry is covered by the MAC: pushing it out breaks the token.
        let mut parts: Vec<&str> = token.split('.').collect();
        let later = (NOW + 3_600).to_string();
        parts[1] = &later;
        params.insert(TOKEN_PARAMETER.into(), parts.join("."));
        assert_eq!(tokens.redeem("CA1", &params, NOW), Err(Refusal::Mismatch));
        for bad in [
            "",
            "v1",
            "v2.1.2.3",
            "v1.x.n.AAAA",
            "v1.1.n.***",
            "v1.1.n.m.extra",
        ] {
            params.insert(TOKEN_PARAMETER.into(), bad.into());
            assert!(
                matches!(
                    tokens.redeem("CA1", &params, NOW),
                    Err(Refusal::Malformed | Refusal::Mismatch)
                ),
                "{bad:?}"
            );
        }
        params.remove(TOKEN_PARAMETER);
        assert_eq!(tokens.redeem("CA1", &params, NOW), Err(Refusal::Missing));
    }

    #[test]
    fn used_nonces_are_forgotten_once_expired() {
        let tokens = tokens();
        for i in 0..10 {
            let params = start_params(&tokens, &format!("CA{i}"));
            assert_eq!(tokens.redeem(&format!("CA{i}"), &params, NOW), Ok(()));
        }
        assert_eq!(tokens.used.lock().unwrap().len(), 10);
        // Redeeming after the earlier tokens expired drops them from the set.
        let fresh = {
            let token = tokens.issue("CAy", &[("call_id", "c-y")], NOW + 120);
            BTreeMap::from([
                ("call_id".to_string(), "c-y".to_string()),
                (TOKEN_PARAMETER.to_string(), token),
            ])
        };
        assert_eq!(tokens.redeem("CAy", &fresh, NOW + 121), Ok(()));
        assert_eq!(tokens.used.lock().unwrap().len(), 1);
    }
}
