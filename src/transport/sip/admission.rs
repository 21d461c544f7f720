//! Whether a new INVITE is taken at all, no I/O: a token bucket per source IP
//! ([`InviteLimiter`], `--invite-rate`/`--invite-burst`). The cap on calls at once
//! (`--max-calls`) is a semaphore in the server.
//!
//! INVITEs over the rate are dropped without an answer rather than refused with 503: a
//! reply to a forged source address would make the bot a reflector, and a real user agent
//! retransmits an unanswered INVITE (RFC 3261 Timer A), which then finds a token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// At most this many sources are tracked; when full, sources whose bucket has refilled are
/// forgotten first, and a new source finds no room only while every tracked one is still
/// limited (a flood from forged addresses).
const MAX_SOURCES: usize = 4_096;

/// `--invite-rate` and `--invite-burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InviteRate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: INVITEs one source may send at once.
    pub burst: u32,
}

impl Default for InviteRate {
    fn default() -> Self {
        InviteRate {
            per_second: 5.0,
            burst: 10,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// INVITEs dropped since this source was last allowed one.
    dropped: u64,
}

/// What became of one INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Allowed,
    /// Over the rate; `dropped` counts this source's drops in a row (for the log).
    Limited {
        dropped: u64,
    },
    /// Too many sources at once to track another.
    NoRoom,
}

/// Token buckets of INVITEs per source IP.
#[derive(Debug)]
pub struct InviteLimiter {
    rate: InviteRate,
    buckets: HashMap<IpAddr, Bucket>,
}

impl InviteLimiter {
    pub fn new(rate: InviteRate) -> InviteLimiter {
        InviteLimiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `source`'s bucket, if it has one.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Admit {
        let source = source.to_canonical();
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            self.forget_refilled(now);
            if self.buckets.len() >= MAX_SOURCES {
                return Admit::NoRoom;
            }
        }
        let burst = f64::from(self.rate.burst);
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
            dropped: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.dropped = 0;
            Admit::Allowed
        } else {
            bucket.dropped += 1;
            Admit::Limited {
                dropped: bucket.dropped,
            }
        }
    }

    fn forget_refilled(&mut self, now: Instant) {
        let InviteRate { per_second, burst } = self.rate;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * per_second < f64::from(burst)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_rate_per_source() {
        let mut limiter = InviteLimiter::new(InviteRate {
            per_second: 5.0,
            burst: 10,
        });
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        for _ in 0..10 {
            assert_eq!(limiter.admit(a, t0), Admit::Allowed);
        }
        assert_eq!(limiter.admit(a, t0), Admit::Limited { dropped: 1 });
        assert_eq!(limiter.admit(a, t0), Admit::Limited { dropped: 2 });
        // Another source has its own bucket.
        assert_eq!(limiter.admit(ip("198.51.100.2"), t0), Admit::Allowed);
        // 200 ms at 5/s is one token.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(limiter.admit(a, t1), Admit::Allowed);
        assert_eq!(limiter.admit(a, t1), Admit::Limited { dropped: 1 });
        // A long pause refills the bucket to its size, not beyond.
        let t2 = t1 + Duration::from_secs(3_600);
        for _ in 0..10 {
            assert_eq!(limiter.admit(a, t2), Admit::Allowed);
        }
        assert!(matches!(limiter.admit(a, t2), Admit::Limited { .. }));
    }

    #[test]
    fn forged_sources_cannot_grow_the_table_without_bound() {
        let mut limiter = InviteLimiter::new(InviteRate {
            per_second: 1.0,
            burst: 1,
        });
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            let source = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            assert_eq!(limiter.admit(source, t0), Admit::Allowed);
        }
        assert_eq!(limiter.admit(ip("192.0.2.1"), t0), Admit::NoRoom);
        // Once their buckets have refilled, the old sources make room.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.admit(ip("192.0.2.1"), later), Admit::Allowed);
        assert_eq!(limiter.buckets.len(), 1);
    }
}
