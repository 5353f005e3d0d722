//! Verified access tokens, remembered so a client sending the same token again does not
//! pay for the signature check again (one ES256 verification costs about 3.5 times the
//! rest of the request path: 454 µs against 125 µs, docs/benchmarks.md).
//!
//! - Keyed by the SHA-256 of the token: a hit needs the exact token that was verified, and
//!   the cache holds no token.
//! - Only successes are cached (failures would let anyone fill it), with the last second
//!   the verification holds: the token's expiry, or its key's retirement if sooner.
//! - Tied to the `jwks` revision that verified it: any new key set empties the cache, so a
//!   withdrawn key stops verifying at once.
//! - Nothing about the principal is cached: `disabled` and `tokens_valid_after` are read
//!   from the live principal mirror on every request, so a changed principal document
//!   takes effect on the next request.
//! - Bounded: two generations of at most `capacity` entries; when the current one is
//!   full it becomes the previous one and the oldest generation is dropped (an
//!   approximation of LRU without per-hit bookkeeping: a hit in the previous generation
//!   moves the entry to the current one).

use foldhash::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use gateway_core::token::AccessClaims;
use sha2::{Digest, Sha256};

type Key = [u8; 32];

struct Entry {
    claims: Arc<AccessClaims>,
    until: i64,
}

#[derive(Default)]
struct Generations {
    keys_revision: u64,
    current: HashMap<Key, Entry>,
    previous: HashMap<Key, Entry>,
}

pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Generations>,
    /// `gateway_token_cache_total{result}`, registered once (taken from the recorder
    /// installed when the cache is made).
    hits: metrics::Counter,
    misses: metrics::Counter,
}

fn key_of(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// `capacity` entries per generation; 0 disables the cache.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            inner: Mutex::default(),
            hits: metrics::counter!("gateway_token_cache_total", "result" => "hit"),
            misses: metrics::counter!("gateway_token_cache_total", "result" => "miss"),
        }
    }

    /// The claims of `token` if it was verified under `keys_revision` and still holds at
    /// `now`.
    pub fn get(&self, token: &str, keys_revision: u64, now: i64) -> Option<Arc<AccessClaims>> {
        if self.capacity == 0 {
            return None;
        }
        let key = key_of(token);
        let mut inner = self.inner.lock();
        if inner.keys_revision != keys_revision {
            return None;
        }
        let claims = match inner.current.get(&key) {
            Some(entry) if now <= entry.until => Some(Arc::clone(&entry.claims)),
            Some(_) => {
                inner.current.remove(&key);
                None
            }
            None => match inner.previous.remove(&key) {
                Some(entry) if now <= entry.until => {
                    let claims = Arc::clone(&entry.claims);
                    Self::insert_entry(&mut inner, self.capacity, key, entry);
                    Some(claims)
                }
                _ => None,
            },
        };
        match claims {
            Some(_) => self.hits.increment(1),
            None => self.misses.increment(1),
        }
        claims
    }

    /// Remembers a verified token until `until` (unix seconds).
    pub fn insert(&self, token: &str, keys_revision: u64, claims: Arc<AccessClaims>, until: i64) {
        if self.capacity == 0 {
            return;
        }
        let key = key_of(token);
        let mut inner = self.inner.lock();
        if inner.keys_revision != keys_revision {
            // a new key set: nothing verified under the old one is kept
            inner.keys_revision = keys_revision;
            inner.current.clear();
            inner.previous.clear();
        }
        Self::insert_entry(&mut inner, self.capacity, key, Entry { claims, until });
    }

    fn insert_entry(inner: &mut Generations, capacity: usize, key: Key, entry: Entry) {
        if inner.current.len() >= capacity {
            inner.previous = std::mem::take(&mut inner.current);
        }
        inner.current.insert(key, entry);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let inner = self.inner.lock();
        inner.current.len() + inner.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Arc<AccessClaims> {
        Arc::new(AccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: sub.into(),
            sid: None,
            iat: 0,
            nbf: 0,
            exp: 100,
            jti: "j".into(),
            typ: "access".into(),
        })
    }

    #[test]
    fn hits_need_the_same_token_the_same_key_set_and_time_left() {
        let cache = TokenCache::new(10);
        cache.insert("token-a", 7, claims("usr_a"), 130);
        assert_eq!(cache.get("token-a", 7, 50).unwrap().sub, "usr_a");
        assert_eq!(cache.get("token-a", 7, 130).unwrap().sub, "usr_a");
        assert!(cache.get("token-b", 7, 50).is_none());
        assert!(cache.get("token-a", 7, 131).is_none(), "past its time");
        assert!(
            cache.get("token-a", 7, 50).is_none(),
            "expired entries are dropped"
        );
        cache.insert("token-a", 7, claims("usr_a"), 130);
        assert!(cache.get("token-a", 8, 50).is_none(), "another key set");
        // the first insert under a new key set empties the cache
        cache.insert("token-c", 8, claims("usr_c"), 130);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("token-a", 7, 50).is_none());
        assert!(cache.get("token-c", 8, 50).is_some());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let cache = TokenCache::new(100);
        cache.insert("hot", 1, claims("usr_hot"), 1000);
        for i in 0..1000 {
            cache.insert(&format!("token-{i}"), 1, claims("usr_x"), 1000);
            assert!(cache.len() <= 200);
            // a token in use survives generation changes
            assert!(cache.get("hot", 1, 0).is_some(), "lost at {i}");
        }
        assert!(cache.get("token-0", 1, 0).is_none(), "old entries go");
        assert!(cache.get("token-999", 1, 0).is_some());
    }

    #[test]
    fn a_zero_capacity_disables_it() {
        let cache = TokenCache::new(0);
        cache.insert("t", 1, claims("usr_a"), 1000);
        assert!(cache.get("t", 1, 0).is_none());
        assert!(cache.is_empty());
    }
}
