//! Abuse limits of the auth routes: per-client-IP token buckets (in memory, per replica) and
//! per-account failure backoff shared by every replica through the store. Time is a
//! parameter everywhere, so tests control it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{Bucket, Record, Store, StoreError, hash_key_token};
use serde::{Deserialize, Serialize};

/// Keys kept per limiter before stale ones are swept.
const SWEEP_AT: usize = 50_000;

/// `rate` requests per `period`, with bursts up to `rate`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub rate: u32,
    pub period: Duration,
}

impl Quota {
    pub const fn per_minute(rate: u32) -> Quota {
        Quota {
            rate,
            period: Duration::from_secs(60),
        }
    }

    /// Parses `20/m`, `5/s`, `100/h`.
    pub fn parse(text: &str) -> Result<Quota, String> {
        let (rate, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a quota like 20/m"))?;
        let rate: u32 = rate
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a quota like 20/m"))?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(format!("{text:?}: the unit is s, m or h")),
        };
        if rate == 0 {
            return Err(format!("{text:?}: the rate must be at least 1"));
        }
        Ok(Quota { rate, period })
    }
}

/// A keyed token bucket: each key holds up to `rate` tokens, refilled continuously.
pub struct KeyedLimiter {
    quota: Quota,
    buckets: Mutex<HashMap<IpAddr, (f64, i64)>>,
}

impl KeyedLimiter {
    pub fn new(quota: Quota) -> KeyedLimiter {
        KeyedLimiter {
            quota,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now_ms`; `Err(wait)` when empty.
    pub fn check(&self, key: IpAddr, now_ms: i64) -> Result<(), Duration> {
        let capacity = f64::from(self.quota.rate);
        let per_ms = capacity / self.quota.period.as_millis() as f64;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= SWEEP_AT {
            // drop keys that have refilled completely: they carry no state
            let full_after = self.quota.period.as_millis() as i64;
            buckets.retain(|_, (_, at)| now_ms - *at < full_after);
        }
        let (tokens, at) = buckets.entry(key).or_insert((capacity, now_ms));
        let refilled = (*tokens + (now_ms - *at).max(0) as f64 * per_ms).min(capacity);
        *at = now_ms;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_millis(
                ((1.0 - refilled) / per_ms).ceil() as u64
            ))
        }
    }
}

/// Counts one refusal by an abuse limit: `gateway_rate_limited_total{limit, reason}`.
pub fn count_limited(limit: &str, reason: Reason) {
    metrics::counter!(
        "gateway_rate_limited_total",
        "limit" => limit.to_string(),
        "reason" => reason.as_str()
    )
    .increment(1);
}

/// 429 with `retry-after` (whole seconds, at least 1).
pub fn too_many(wait: Duration, reason: Reason) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(ErrorCode::RateLimited, "too many attempts; try again later")
        .with_reason(reason)
        .with_retry_after(seconds.max(1))
}

/// Per-IP limiters of the auth routes.
pub struct IpLimits {
    pub signup: KeyedLimiter,
    pub signin: KeyedLimiter,
    pub forgot: KeyedLimiter,
    pub reset: KeyedLimiter,
    pub mfa: KeyedLimiter,
    pub token: KeyedLimiter,
    /// Google sign-in starts and callbacks (each start stores a pending record).
    pub oidc: KeyedLimiter,
}

/// Per-IP quotas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IpQuotas {
    pub signup: Quota,
    pub signin: Quota,
    pub forgot: Quota,
    pub reset: Quota,
    pub mfa: Quota,
    pub token: Quota,
    pub oidc: Quota,
}

impl IpLimits {
    pub fn new(q: IpQuotas) -> IpLimits {
        IpLimits {
            signup: KeyedLimiter::new(q.signup),
            signin: KeyedLimiter::new(q.signin),
            forgot: KeyedLimiter::new(q.forgot),
            reset: KeyedLimiter::new(q.reset),
            mfa: KeyedLimiter::new(q.mfa),
            token: KeyedLimiter::new(q.token),
            oidc: KeyedLimiter::new(q.oidc),
        }
    }
}

/// Failure backoff of one account (or one login name, known or not), in the `tokens`
/// bucket so every replica sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Backoff {
    failures: u32,
    /// Unix milliseconds (records of whole seconds, from before, read as unlocked).
    #[serde(default)]
    last_failure_ms: i64,
    #[serde(default)]
    locked_until_ms: i64,
}

impl Record for Backoff {
    const KIND: &'static str = "backoff";
    const VERSION: u32 = 1;
}

/// Settings of the per-account backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffSettings {
    /// Failures allowed before the account is slowed down.
    pub free_failures: u32,
    /// The first lock; each further failure doubles it.
    pub first_lock: Duration,
    /// Longest lock after repeated failures.
    pub max_lock: Duration,
    /// Failures older than this are forgotten.
    pub forget_after: Duration,
}

/// Shared per-account backoff.
#[derive(Clone)]
pub struct AccountBackoff {
    pub store: Store,
    pub settings: BackoffSettings,
}

fn backoff_key(scope: &str, subject: &str) -> String {
    format!("backoff.{scope}.{}", hash_key_token(subject.as_bytes()))
}

impl AccountBackoff {
    /// `Err(429)` while `subject` is locked (checked before any password work). Times are
    /// Unix milliseconds: a lock of 1 s lasts 1 s, not whatever is left of the second.
    pub async fn check(&self, scope: &str, subject: &str, now_ms: i64) -> Result<(), ApiError> {
        let Some(entry) = self
            .store
            .kv(Bucket::Tokens)
            .get(&backoff_key(scope, subject))
            .await?
        else {
            return Ok(());
        };
        let backoff = Backoff::from_bytes(&entry.value).unwrap_or_default();
        if backoff.locked_until_ms > now_ms {
            count_limited(scope, Reason::AccountLocked);
            return Err(too_many(
                Duration::from_millis((backoff.locked_until_ms - now_ms) as u64),
                Reason::AccountLocked,
            ));
        }
        Ok(())
    }

    /// Counts a failure; past the free failures the subject is locked for an exponentially
    /// growing time (`first_lock`, doubled at each failure, up to `max_lock`).
    pub async fn failed(&self, scope: &str, subject: &str, now_ms: i64) -> Result<(), ApiError> {
        let kv = self.store.kv(Bucket::Tokens);
        let key = backoff_key(scope, subject);
        for _ in 0..8 {
            let current = kv.get(&key).await?;
            let mut backoff = current
                .as_ref()
                .and_then(|e| Backoff::from_bytes(&e.value).ok())
                .unwrap_or_default();
            if now_ms - backoff.last_failure_ms > self.settings.forget_after.as_millis() as i64 {
                backoff = Backoff::default();
            }
            backoff.failures += 1;
            backoff.last_failure_ms = now_ms;
            if backoff.failures > self.settings.free_failures {
                let exponent = (backoff.failures - self.settings.free_failures - 1).min(20);
                let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                let lock_ms = millis(self.settings.first_lock)
                    .max(1)
                    .saturating_mul(1i64 << exponent)
                    .min(millis(self.settings.max_lock));
                backoff.locked_until_ms = now_ms.saturating_add(lock_ms);
            }
            let bytes = backoff
                .to_bytes()
                .map_err(|err| ApiError::internal("backoff record", &err))?;
            let written = match &current {
                Some(entry) => kv.update(&key, bytes, entry.revision).await.map(|_| ()),
                None => kv.create(&key, bytes).await.map(|_| ()),
            };
            match written {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Forgets the failures after a success.
    pub async fn succeeded(&self, scope: &str, subject: &str) -> Result<(), ApiError> {
        self.store
            .kv(Bucket::Tokens)
            .delete(&backoff_key(scope, subject), None)
            .await?;
        Ok(())
    }

    /// Counts one use against a per-subject budget of `budget` per `window` (e.g. reset
    /// mails per address per hour); `false` when spent. Spending is silent for the caller.
    pub async fn spend(
        &self,
        scope: &str,
        subject: &str,
        budget: u32,
        window: Duration,
        now: i64,
    ) -> Result<bool, ApiError> {
        let kv = self.store.kv(Bucket::Tokens);
        let key = backoff_key(scope, subject);
        for _ in 0..8 {
            let current = kv.get(&key).await?;
            let mut used = current
                .as_ref()
                .and_then(|e| Backoff::from_bytes(&e.value).ok())
                .unwrap_or_default();
            // the window starts at the first use (kept in `last_failure_ms`)
            let now_ms = now.saturating_mul(1000);
            if now_ms - used.last_failure_ms >= window.as_millis() as i64 {
                used = Backoff {
                    failures: 0,
                    last_failure_ms: now_ms,
                    locked_until_ms: 0,
                };
            }
            if used.failures >= budget {
                return Ok(false);
            }
            used.failures += 1;
            let bytes = used
                .to_bytes()
                .map_err(|err| ApiError::internal("budget record", &err))?;
            let written = match &current {
                Some(entry) => kv.update(&key, bytes, entry.revision).await.map(|_| ()),
                None => kv.create(&key, bytes).await.map(|_| ()),
            };
            match written {
                Ok(()) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn buckets_allow_bursts_then_refill_with_time() {
        let limiter = KeyedLimiter::new(Quota::per_minute(3));
        let t0 = 1_000_000;
        for _ in 0..3 {
            assert!(limiter.check(ip(1), t0).is_ok());
        }
        let wait = limiter.check(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // another client is unaffected
        assert!(limiter.check(ip(2), t0).is_ok());
        // one token is back after 20 s
        assert!(limiter.check(ip(1), t0 + 20_000).is_ok());
        assert!(limiter.check(ip(1), t0 + 20_000).is_err());
    }

    #[test]
    fn quotas_parse() {
        assert_eq!(Quota::parse("20/m").unwrap(), Quota::per_minute(20));
        assert_eq!(Quota::parse("5/s").unwrap().period, Duration::from_secs(1));
        for bad in ["", "20", "0/m", "x/m", "5/d"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let err = too_many(Duration::from_millis(1500), Reason::RateLimited);
        assert_eq!(err.retry_after, Some(2));
        assert_eq!(
            too_many(Duration::ZERO, Reason::RateLimited).retry_after,
            Some(1)
        );
    }

    /// A backoff on its own embedded store (kept while the directory lives): one free
    /// failure, then `first_lock` doubled up to `max_lock`.
    async fn backoff_on_disk(
        first_lock: Duration,
        max_lock: Duration,
    ) -> (tempfile::TempDir, AccountBackoff) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&gateway_store::StoreConfig::Embedded {
            path: dir.path().join("state.redb"),
        })
        .await
        .unwrap();
        let settings = BackoffSettings {
            first_lock,
            free_failures: 1,
            max_lock,
            forget_after: Duration::from_secs(600),
        };
        (dir, AccountBackoff { store, settings })
    }

    #[tokio::test]
    async fn a_one_second_lock_lasts_a_second_across_a_second_boundary() {
        let (_dir, backoff) =
            backoff_on_disk(Duration::from_secs(1), Duration::from_secs(60)).await;
        // the locking failure lands 1 ms before a second's boundary: whole seconds made
        // this lock end at the boundary, 1 ms later (a test failed at random on it)
        let t = 1_000_000_999;
        backoff.failed("signin", "ghost", t - 5).await.unwrap();
        assert!(
            backoff.check("signin", "ghost", t).await.is_ok(),
            "one free failure"
        );
        backoff.failed("signin", "ghost", t).await.unwrap();
        for later in [1, 2, 500, 999] {
            let refused = backoff
                .check("signin", "ghost", t + later)
                .await
                .unwrap_err();
            assert_eq!(refused.reason, Some(Reason::AccountLocked), "+{later} ms");
        }
        assert!(backoff.check("signin", "ghost", t + 1_000).await.is_ok());
        // the next failure doubles the lock
        backoff.failed("signin", "ghost", t + 1_000).await.unwrap();
        assert!(backoff.check("signin", "ghost", t + 2_999).await.is_err());
        assert!(backoff.check("signin", "ghost", t + 3_000).await.is_ok());
    }

    #[tokio::test]
    async fn the_first_lock_is_configured_and_doubles_up_to_the_longest() {
        let (_dir, backoff) = backoff_on_disk(Duration::from_secs(5), Duration::from_secs(8)).await;
        let t = 2_000_000_000;
        backoff.failed("signin", "a", t).await.unwrap();
        backoff.failed("signin", "a", t).await.unwrap();
        assert!(backoff.check("signin", "a", t + 4_999).await.is_err());
        assert!(backoff.check("signin", "a", t + 5_000).await.is_ok());
        // doubled, but never past the longest lock
        backoff.failed("signin", "a", t + 5_000).await.unwrap();
        assert!(backoff.check("signin", "a", t + 12_999).await.is_err());
        assert!(backoff.check("signin", "a", t + 13_000).await.is_ok());
        // locks past any clock (a configuration of centuries) saturate instead of
        // overflowing into the past
        let longest = Duration::from_secs(u64::MAX);
        let (_dir, forever) = backoff_on_disk(longest, longest).await;
        forever.failed("signin", "b", t).await.unwrap();
        forever.failed("signin", "b", t).await.unwrap();
        assert!(
            forever
                .check("signin", "b", t + 1_000_000_000)
                .await
                .is_err()
        );
    }
}
