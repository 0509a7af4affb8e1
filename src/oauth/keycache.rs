//! Partner key sets (JWKS) cached per `Cache-Control: max-age`.
//!
//! Sans-IO: the cache decides *when* to fetch; a [`Fetch`] implementation
//! does the fetching. Rules (spec §2.4): a cached set is used until
//! its max-age (default 1 h, at least 1 min, at most 24 h) runs out; on an
//! unknown `kid` the set is refetched once, at most every 30 s per partner; a
//! failed refetch keeps serving the last good set for up to 24 h past its
//! max-age, so a partner's hiccup does not lock its users out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default lifetime of a fetched key set.
pub const DEFAULT_MAX_AGE: i64 = 3_600;
/// Shortest lifetime we honour (protects partners from our refetching).
pub const MIN_MAX_AGE: i64 = 60;
/// Longest lifetime we honour.
pub const MAX_MAX_AGE: i64 = 86_400;
/// Minimum time between refetches forced by an unknown `kid`.
pub const UNKNOWN_KID_INTERVAL: i64 = 30;
/// How long a stale set is still used when refetching fails.
pub const STALE_GRACE: i64 = 86_400;

/// A fetched key set and its `Cache-Control: max-age`, if any.
pub struct Fetched<K> {
    pub keys: K,
    pub max_age: Option<i64>,
}

/// Fetches a partner's key set.
pub trait Fetch<K>: Send + Sync {
    fn fetch(&self, partner: &str) -> Result<Fetched<K>, String>;
}

struct Entry<K> {
    keys: Arc<K>,
    fetched_at: i64,
    max_age: i64,
    last_forced: Option<i64>,
}

/// Per-partner cache.
pub struct KeyCache<K> {
    fetcher: Box<dyn Fetch<K>>,
    entries: Mutex<HashMap<String, Entry<K>>>,
}

impl<K> KeyCache<K> {
    pub fn new(fetcher: Box<dyn Fetch<K>>) -> KeyCache<K> {
        KeyCache {
            fetcher,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The partner's current key set, fetched when missing or past max-age.
    pub fn keys(&self, partner: &str, now: i64) -> Result<Arc<K>, String> {
        {
            let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(partner) {
                if now < e.fetched_at + e.max_age {
                    return Ok(e.keys.clone());
                }
            }
        }
        self.refetch(partner, now, false)
    }

    /// After an unknown `kid`: a fresh set if one may be fetched now
    /// (`Ok(Some)`), or `Ok(None)` when the last forced refetch was under
    /// 30 s ago (the caller then refuses the assertion).
    pub fn refresh_for_unknown_kid(
        &self,
        partner: &str,
        now: i64,
    ) -> Result<Option<Arc<K>>, String> {
        {
            let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = map.get(partner).and_then(|e| e.last_forced) {
                if now < last + UNKNOWN_KID_INTERVAL {
                    return Ok(None);
                }
            }
        }
        self.refetch(partner, now, true).map(Some)
    }

    /// Drops the cached set of every partner (configuration reload).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn refetch(&self, partner: &str, now: i64, forced: bool) -> Result<Arc<K>, String> {
        // The lock is not held while fetching: a slow partner must not stall others.
        let result = self.fetcher.fetch(partner);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(fetched) => {
                let keys = Arc::new(fetched.keys);
                let last_forced = if forced {
                    Some(now)
                } else {
                    map.get(partner).and_then(|e| e.last_forced)
                };
                map.insert(
                    partner.to_string(),
                    Entry {
                        keys: keys.clone(),
                        fetched_at: now,
                        max_age: fetched
                            .max_age
                            .unwrap_or(DEFAULT_MAX_AGE)
                            .clamp(MIN_MAX_AGE, MAX_MAX_AGE),
                        last_forced,
                    },
                );
                Ok(keys)
            }
            Err(e) => match map.get_mut(partner) {
                Some(entry) if now < entry.fetched_at + entry.max_age + STALE_GRACE => {
                    if forced {
                        entry.last_forced = Some(now);
                    }
                    log::warn!(
                        "event=jwks.refresh_failed partner={partner} using=stale error={}",
                        crate::ops::logging::Q(&e)
                    );
                    Ok(entry.keys.clone())
                }
                _ => Err(e),
            },
        }
    }
}

/// `max-age` from a `Cache-Control` header; `no-store`/`no-cache` count as 0
/// (clamped up to the minimum by the cache).
pub fn max_age(cache_control: Option<&str>) -> Option<i64> {
    let header = cache_control?;
    let mut result = None;
    for directive in header.split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(0);
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            result = v.trim_matches('"').parse::<i64>().ok().filter(|n| *n >= 0);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Counter {
        calls: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
        max_age: Option<i64>,
    }

    impl Fetch<usize> for Counter {
        fn fetch(&self, _partner: &str) -> Result<Fetched<usize>, String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Fetched {
                keys: n,
                max_age: self.max_age,
            })
        }
    }

    fn cache(max_age: Option<i64>) -> (KeyCache<usize>, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let c = KeyCache::new(Box::new(Counter {
            calls: calls.clone(),
            fail: fail.clone(),
            max_age,
        }));
        (c, calls, fail)
    }

    #[test]
    fn cached_for_max_age_then_refetched() {
        let (c, calls, _) = cache(Some(600));
        assert_eq!(*c.keys("b", 0).unwrap(), 1);
        assert_eq!(*c.keys("b", 599).unwrap(), 1);
        assert_eq!(*c.keys("b", 600).unwrap(), 2);
        assert_eq!(*c.keys("other", 600).unwrap(), 3, "per partner");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn default_and_clamped_max_age() {
        let (c, _, _) = cache(None);
        c.keys("b", 0).unwrap();
        assert_eq!(*c.keys("b", DEFAULT_MAX_AGE - 1).unwrap(), 1);
        assert_eq!(*c.keys("b", DEFAULT_MAX_AGE).unwrap(), 2);
        let (c, _, _) = cache(Some(0));
        c.keys("b", 0).unwrap();
        assert_eq!(
            *c.keys("b", MIN_MAX_AGE - 1).unwrap(),
            1,
            "no hammering on max-age=0"
        );
    }

    #[test]
    fn unknown_kid_refetches_at_most_every_30_seconds() {
        let (c, calls, _) = cache(Some(3_600));
        c.keys("b", 0).unwrap();
        assert_eq!(
            c.refresh_for_unknown_kid("b", 10).unwrap().map(|k| *k),
            Some(2)
        );
        assert_eq!(c.refresh_for_unknown_kid("b", 39).unwrap(), None);
        assert_eq!(
            c.refresh_for_unknown_kid("b", 40).unwrap().map(|k| *k),
            Some(3)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn stale_keys_serve_while_the_partner_is_unreachable() {
        let (c, _, fail) = cache(Some(600));
        c.keys("b", 0).unwrap();
        fail.store(true, Ordering::SeqCst);
        assert_eq!(*c.keys("b", 700).unwrap(), 1);
        assert!(c.keys("b", 600 + STALE_GRACE).is_err());
        assert!(c.keys("never-fetched", 0).is_err());
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(max_age(Some("public, max-age=7200")), Some(7_200));
        assert_eq!(max_age(Some("max-age=\"60\"")), Some(60));
        assert_eq!(max_age(Some("no-store")), Some(0));
        assert_eq!(max_age(Some("max-age=-5")), None);
        assert_eq!(max_age(Some("private")), None);
        assert_eq!(max_age(None), None);
    }
}
