use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::*;

const LONG: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_secs(1);

/// Counts its calls and answers by the token's name: `bad*` is refused, `down*` unavailable,
/// `short*` expires in [`SHORT`], `expired*` a second ago, anything else in an hour. Each
/// call first takes a permit of `gate`, so a test can hold calls in flight.
struct Fake {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl Fake {
    fn open() -> Arc<Self> {
        Self::with_permits(Semaphore::MAX_PERMITS)
    }

    fn gated() -> Arc<Self> {
        Self::with_permits(0)
    }

    fn with_permits(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(permits),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.gate.add_permits(1000);
    }
}

impl Authenticator for Fake {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _permit = self.gate.acquire().await;
        let now = SystemTime::now();
        let expires = if token.starts_with("bad") {
            return Err(AuthnError::Refused("bad".into()));
        } else if token.starts_with("down") {
            return Err(AuthnError::Unavailable("down".into()));
        } else if token.starts_with("short") {
            now + SHORT
        } else if token.starts_with("expired") {
            now - Duration::from_secs(1)
        } else {
            now + LONG
        };
        Ok(Caller {
            namespace: "ns".into(),
            service_account: token.into(),
            expires: Some(expires),
        })
    }
}

fn cached(fake: &Arc<Fake>, config: CacheConfig) -> Arc<CachedAuthenticator<Arc<Fake>>> {
    Arc::new(CachedAuthenticator::new(Arc::clone(fake), config))
}

fn flights(cache: &CachedAuthenticator<Arc<Fake>>) -> usize {
    cache.lock().flights.len()
}

#[tokio::test]
async fn a_success_is_reused_and_a_failure_is_not() {
    let fake = Fake::open();
    let cache = cached(&fake, CacheConfig::default());
    let first = cache.authenticate("alice").await.expect("ok");
    let again = cache.authenticate("alice").await.expect("ok");
    assert_eq!(first, again);
    assert_eq!(first.service_account, "alice");
    assert_eq!(fake.calls(), 1);

    for token in ["bad", "down"] {
        let before = fake.calls();
        let one = cache.authenticate(token).await.expect_err("refused");
        let two = cache.authenticate(token).await.expect_err("refused");
        assert_eq!(one, two);
        assert_eq!(
            fake.calls(),
            before + 2,
            "{token}: failures are asked again"
        );
    }
    assert_eq!(cache.len(), 1);
    assert_eq!(flights(&cache), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_with_one_token_make_one_call() {
    let fake = Fake::gated();
    let cache = cached(&fake, CacheConfig::default());
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let cache = Arc::clone(&cache);
        tasks.spawn(async move { cache.authenticate("alice").await });
    }
    // Every task runs up to its wait while this one sleeps (one thread, nothing else ready).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.calls(), 1, "one call while 20 requests wait");
    assert_eq!(
        cache.lock().flights.get(&token_key("alice")).map(|f| f.1),
        Some(20)
    );
    fake.release();
    let results = tasks.join_all().await;
    assert_eq!(results.len(), 20);
    for result in results {
        assert_eq!(result.expect("ok").service_account, "alice");
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(flights(&cache), 0, "the finished flight is gone");
    assert_eq!(cache.len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_request_takes_over_a_cancelled_check() {
    let fake = Fake::gated();
    let cache = cached(&fake, CacheConfig::default());
    let leader = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.authenticate("alice").await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follower = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.authenticate("alice").await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fake.calls(), 1);
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fake.calls(), 2, "the follower checks the token itself");
    fake.release();
    assert!(follower.await.expect("joined").is_ok());
    assert_eq!(flights(&cache), 0);

    // A check nobody waits for any more leaves nothing behind.
    let gated = Fake::gated();
    let cache = cached(&gated, CacheConfig::default());
    let lone = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move { cache.authenticate("bob").await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(flights(&cache), 1);
    lone.abort();
    assert!(lone.await.is_err());
    assert_eq!(flights(&cache), 0);
}

#[tokio::test]
async fn an_entry_lives_until_the_token_expires_or_max_age_passes() {
    let fake = Fake::open();
    let cache = cached(&fake, CacheConfig::default());
    cache.authenticate("short-lived").await.expect("ok");
    cache.authenticate("short-lived").await.expect("ok");
    assert_eq!(fake.calls(), 1, "cached while the token is valid");
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    cache.authenticate("short-lived").await.expect("ok");
    assert_eq!(fake.calls(), 2, "asked again once the token expired");

    // Valid for the apiserver but expired by our clock: never reused.
    cache.authenticate("expired").await.expect("ok");
    cache.authenticate("expired").await.expect("ok");
    assert_eq!(fake.calls(), 4);

    let fake = Fake::open();
    let config = CacheConfig {
        max_age: SHORT,
        ..CacheConfig::default()
    };
    let cache = cached(&fake, config);
    cache.authenticate("alice").await.expect("ok");
    cache.authenticate("alice").await.expect("ok");
    assert_eq!(fake.calls(), 1);
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    cache.authenticate("alice").await.expect("ok");
    assert_eq!(
        fake.calls(),
        2,
        "an hour-long token is reused for max_age only"
    );
}

#[tokio::test]
async fn a_full_cache_drops_expired_entries_first_then_the_oldest() {
    let fake = Fake::open();
    let config = CacheConfig {
        max_entries: 3,
        ..CacheConfig::default()
    };
    let cache = cached(&fake, config);
    // Oldest first: b, then the short-lived one, then c.
    for token in ["b", "short", "c"] {
        cache.authenticate(token).await.expect("ok");
    }
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    cache.authenticate("d").await.expect("ok");
    assert_eq!(cache.len(), 3);
    let calls = fake.calls();
    for token in ["b", "c", "d"] {
        cache.authenticate(token).await.expect("ok");
    }
    assert_eq!(
        fake.calls(),
        calls,
        "the expired entry went, not the oldest"
    );

    cache.authenticate("e").await.expect("ok");
    let calls = fake.calls();
    for token in ["c", "d", "e"] {
        cache.authenticate(token).await.expect("ok");
    }
    assert_eq!(fake.calls(), calls, "c, d and e stayed");
    cache.authenticate("b").await.expect("ok");
    assert_eq!(fake.calls(), calls + 1, "b, the oldest, was dropped for e");
    assert_eq!(cache.len(), 3);

    let none = cached(
        &fake,
        CacheConfig {
            max_entries: 0,
            ..CacheConfig::default()
        },
    );
    none.authenticate("x").await.expect("ok");
    assert!(none.is_empty());
}

#[test]
fn keys_are_sha256_digests_of_tokens() {
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let hex: String = token_key("abc")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, expected);
}
