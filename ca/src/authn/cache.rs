//! A bounded cache of successful authentications in front of an [`Authenticator`], with
//! single-flight: however many requests carry the same uncached token at once, the inner
//! authenticator (a TokenReview, a round trip to the apiserver) sees one call.
//!
//! Keys are SHA-256 digests of tokens, so the cache never holds a token and a key cannot be
//! steered to collide with another caller's. An entry lives until the token expires or
//! `max_age` has passed, whichever is first: `max_age` bounds how long a revoked token (its
//! pod deleted, its ServiceAccount removed) stays accepted.
//!
//! Failures are not cached. A refused token is cheap to refuse again and a flood of bad tokens
//! differs token by token, so a negative cache would not spare the apiserver; it would only
//! keep refusing a token that turns valid (a ServiceAccount created a moment later) or one
//! whose check failed because the apiserver was briefly down. Requests that joined the same
//! in-flight check do share its failure: they asked at the same moment.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Authenticator, AuthnError, Caller};

/// How long a successful authentication is reused at most.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// How many authentications are kept at most (~300 bytes each).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// The bounds of a [`CachedAuthenticator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_age: Duration,
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_MAX_AGE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

type Key = [u8; 32];
type Flight = Arc<OnceCell<Result<Caller, AuthnError>>>;

/// `inner` behind a cache of its successes; see the module documentation.
pub struct CachedAuthenticator<A> {
    inner: A,
    config: CacheConfig,
    state: Mutex<State>,
}

impl<A> std::fmt::Debug for CachedAuthenticator<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAuthenticator")
            .field("config", &self.config)
            .field("entries", &self.lock().entries.len())
            .finish_non_exhaustive()
    }
}

impl<A> CachedAuthenticator<A> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<A: Authenticator> CachedAuthenticator<A> {
    pub fn new(inner: A, config: CacheConfig) -> Self {
        Self {
            inner,
            config,
            state: Mutex::new(State::default()),
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// How many authentications are cached now (expired ones may still be counted until
    /// they are next looked at or evicted).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, key: Key, caller: &Caller) {
        let now = Instant::now();
        let mut lifetime = self.config.max_age;
        if let Some(expires) = caller.expires {
            match expires.duration_since(SystemTime::now()) {
                Ok(left) => lifetime = lifetime.min(left),
                // Already expired by our clock: valid for the apiserver, but not reusable.
                Err(_) => return,
            }
        }
        if lifetime.is_zero() {
            return;
        }
        self.lock().insert(
            key,
            caller.clone(),
            now + lifetime,
            now,
            self.config.max_entries,
        );
    }
}

impl<A: Authenticator> Authenticator for CachedAuthenticator<A> {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        let key = token_key(token);
        let guard = {
            let mut state = self.lock();
            if let Some(caller) = state.get(&key, Instant::now()) {
                return Ok(caller);
            }
            let (flight, members) = state.flights.entry(key).or_default();
            *members += 1;
            FlightGuard {
                state: &self.state,
                key,
                flight: Arc::clone(flight),
            }
        };
        // Only one initialiser runs at a time; if the one running is cancelled (its request
        // went away), a waiting request runs its own, so nobody waits on an abandoned call.
        guard
            .flight
            .get_or_init(|| async {
                let result = self.inner.authenticate(token).await;
                if let Ok(caller) = &result {
                    self.remember(key, caller);
                }
                result
            })
            .await
            .clone()
    }
}

/// A request's membership of an in-flight check; the last member to leave (done or
/// cancelled) removes the flight.
struct FlightGuard<'a> {
    state: &'a Mutex<State>,
    key: Key,
    flight: Flight,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((flight, members)) = state.flights.get_mut(&self.key)
            && Arc::ptr_eq(flight, &self.flight)
        {
            *members -= 1;
            if *members == 0 {
                state.flights.remove(&self.key);
            }
        }
    }
}

/// The cache key of a token: its SHA-256 digest.
fn token_key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    caller: Caller,
    until: Instant,
    seq: u64,
}

/// Entries with two indexes: by expiry (to drop expired ones first) and by insertion (to
/// drop the oldest when none has expired).
#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    by_expiry: BTreeMap<(Instant, u64), Key>,
    by_age: BTreeMap<u64, Key>,
    next_seq: u64,
    /// Checks in progress, with how many requests wait on each.
    flights: HashMap<Key, (Flight, usize)>,
}

impl State {
    fn get(&mut self, key: &Key, now: Instant) -> Option<Caller> {
        let entry = self.entries.get(key)?;
        if entry.until > now {
            return Some(entry.caller.clone());
        }
        self.remove(key);
        None
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_expiry.remove(&(entry.until, entry.seq));
            self.by_age.remove(&entry.seq);
        }
    }

    fn insert(&mut self, key: Key, caller: Caller, until: Instant, now: Instant, max: usize) {
        self.remove(&key);
        while let Some((&(expiry, _), &old)) = self.by_expiry.first_key_value()
            && expiry <= now
        {
            self.remove(&old);
        }
        while self.entries.len() >= max {
            let Some((_, &oldest)) = self.by_age.first_key_value() else {
                break;
            };
            self.remove(&oldest);
        }
        if max == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((until, seq), key);
        self.by_age.insert(seq, key);
        self.entries.insert(key, Entry { caller, until, seq });
    }
}

#[cfg(test)]
mod tests;
