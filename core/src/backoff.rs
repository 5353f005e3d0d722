//! Retry delays: exponential, capped, and jittered, so replicas that lost the same server
//! at the same instant do not all retry at the same instants again.

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `attempt` (0 for the first): `base · 2^attempt`, at most
/// `cap`, of which a random part up to a half is taken off ("equal jitter": never less
/// than half the exponential delay, so retries stay spaced, and spread over the other half).
pub fn jittered(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let full = base
        .saturating_mul(2u32.saturating_pow(attempt.min(30)))
        .min(cap);
    let half = full / 2;
    let spread = rand::rng().random_range(0..=half.as_micros().min(u64::MAX as u128) as u64);
    half + Duration::from_micros(spread)
}

/// The retry state of one loop: [`Backoff::next_delay`] after a failure, [`Backoff::reset`]
/// after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay to wait now, and one step further for the next failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.attempt, self.base, self.cap);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_are_spread_over_their_upper_half() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let full = (base * 2u32.pow(attempt.min(10))).min(cap);
            let delay = jittered(attempt, base, cap);
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
        }
        // spread: 200 draws of a 5 s window are not all alike
        let draws: std::collections::HashSet<_> =
            (0..200).map(|_| jittered(10, base, cap)).collect();
        assert!(draws.len() > 100, "{}", draws.len());
        let mut backoff = Backoff::new(base, cap);
        assert!(backoff.next_delay() <= base);
        assert!(backoff.next_delay() <= base * 2);
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}
