//! Closed-question decisions kept for `NP_MITZ_DECISION_TTL` (sans-IO: the
//! caller passes `now`).
//!
//! The key is the whole question but its message id: the patient, the
//! requester (organisation, URA, category, role, user) and the data
//! category, so a cached decision only ever answers the question Mitz
//! answered. Only real decisions are kept (`Permit`, `Deny`,
//! `NotApplicable`); a fault, a timeout or `Indeterminate` asks again next
//! time.
//!
//! Bounded: at most `max` entries; a full cache drops its oldest entry
//! (with one TTL for all, also the one that expires first). Expired entries
//! go when met and from the front of the insertion order on every insert.
//! [`DecisionCache::invalidate_patient`] drops a patient's entries when a
//! newer consent notification arrives; an answer to a question asked
//! before that is not stored ([`DecisionCache::epoch`]), so a decision Mitz
//! made before the change cannot outlive it.

use std::collections::{HashMap, VecDeque};

use super::reply::Decision;

/// Default bound on the entries kept.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Who asks, as far as it is in the question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Asker {
    /// The requesting organisation (bare OID).
    pub organisation: String,
    pub ura: Option<String>,
    /// `PROVIDER_CATEGORY`.
    pub category: String,
    pub role: Option<String>,
    pub user: Option<String>,
}

/// One question, without the patient (the outer key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub asker: Asker,
    pub data_category: String,
}

#[derive(Debug, Clone)]
struct Entry {
    decision: Decision,
    expires_at: i64,
    /// Insertion number, to tell a live entry from a stale one in `order`.
    seq: u64,
}

/// The cache. Not synchronised: keep it behind a `Mutex`.
#[derive(Debug)]
pub struct DecisionCache {
    ttl_secs: i64,
    max: usize,
    /// BSN → questions about that patient.
    patients: HashMap<String, HashMap<Key, Entry>>,
    /// Insertion order: (seq, BSN, key); entries replaced or dropped since
    /// are skipped when met.
    order: VecDeque<(u64, String, Key)>,
    len: usize,
    seq: u64,
    epoch: u64,
}

impl DecisionCache {
    /// Keeps decisions `ttl_secs` seconds (0: keeps nothing), at most `max`.
    pub fn new(ttl_secs: u64, max: usize) -> DecisionCache {
        DecisionCache {
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX),
            max,
            patients: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            seq: 0,
            epoch: 0,
        }
    }

    /// The decision for `key` about `patient`, if kept and not expired.
    pub fn get(&mut self, patient: &str, key: &Key, now: i64) -> Option<Decision> {
        let questions = self.patients.get_mut(patient)?;
        let entry = questions.get(key)?;
        if entry.expires_at > now {
            return Some(entry.decision);
        }
        questions.remove(key);
        if questions.is_empty() {
            self.patients.remove(patient);
        }
        self.len -= 1;
        None
    }

    /// Changes whenever a patient's decisions are dropped. Read it before
    /// asking Mitz and hand it to [`DecisionCache::put`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Keeps `decision` for `key` about `patient` from `now`, unless the
    /// cache was invalidated since `epoch` or the decision is not one to
    /// keep (`Indeterminate`).
    pub fn put(&mut self, patient: &str, key: Key, decision: Decision, now: i64, epoch: u64) {
        if self.ttl_secs == 0
            || self.max == 0
            || epoch != self.epoch
            || decision == Decision::Indeterminate
        {
            return;
        }
        self.drop_expired_front(now);
        let replacing = self
            .patients
            .get(patient)
            .is_some_and(|q| q.contains_key(&key));
        if !replacing {
            while self.len >= self.max {
                if !self.drop_front() {
                    break;
                }
            }
        }
        self.seq += 1;
        let entry = Entry {
            decision,
            expires_at: now.saturating_add(self.ttl_secs),
            seq: self.seq,
        };
        self.order
            .push_back((self.seq, patient.to_string(), key.clone()));
        if self
            .patients
            .entry(patient.to_string())
            .or_default()
            .insert(key, entry)
            .is_none()
        {
            self.len += 1;
        }
        self.compact();
    }

    /// Drops every decision about `patient` (a newer consent notification).
    pub fn invalidate_patient(&mut self, patient: &str) {
        self.epoch += 1;
        if let Some(questions) = self.patients.remove(patient) {
            self.len -= questions.len();
        }
    }

    /// Decisions kept (expired ones not yet met included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops entries from the front of the insertion order while they are
    /// stale or expired.
    fn drop_expired_front(&mut self, now: i64) {
        while let Some((seq, patient, key)) = self.order.front() {
            let live = self
                .patients
                .get(patient)
                .and_then(|q| q.get(key))
                .filter(|e| e.seq == *seq);
            match live {
                Some(e) if e.expires_at > now => break,
                _ => {
                    self.drop_front();
                }
            }
        }
    }

    /// Drops the oldest order entry, and its cache entry when still live.
    /// False when the order is empty.
    fn drop_front(&mut self) -> bool {
        let Some((seq, patient, key)) = self.order.pop_front() else {
            return false;
        };
        if let Some(questions) = self.patients.get_mut(&patient) {
            if questions.get(&key).is_some_and(|e| e.seq == seq) {
                questions.remove(&key);
                self.len -= 1;
            }
            if questions.is_empty() {
                self.patients.remove(&patient);
            }
        }
        true
    }

    /// Keeps the order list within twice the live entries (invalidations
    /// and replacements leave stale entries in it).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.len + 64 {
            return;
        }
        let patients = &self.patients;
        self.order.retain(|(seq, patient, key)| {
            patients
                .get(patient)
                .and_then(|q| q.get(key))
                .is_some_and(|e| e.seq == *seq)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(org: &str, category: &str) -> Key {
        Key {
            asker: Asker {
                organisation: org.to_string(),
                ura: None,
                category: "RPZAC104".to_string(),
                role: None,
                user: None,
            },
            data_category: category.to_string(),
        }
    }

    /// Invariants: `len` counts the entries, `order` holds every live one.
    fn check(c: &DecisionCache) {
        let live: usize = c.patients.values().map(HashMap::len).sum();
        assert_eq!(c.len, live);
        assert!(c.patients.values().all(|q| !q.is_empty()));
        for (p, q) in &c.patients {
            for (k, e) in q {
                assert!(
                    c.order
                        .iter()
                        .any(|(s, op, ok)| *s == e.seq && op == p && ok == k),
                    "live entry missing from the order"
                );
            }
        }
    }

    #[test]
    fn a_decision_is_kept_for_the_ttl_and_no_longer() {
        let mut c = DecisionCache::new(60, 10);
        let k = key("o1", "GGC002");
        assert_eq!(c.get("900203638", &k, 1000), None);
        c.put("900203638", k.clone(), Decision::Permit, 1000, c.epoch());
        assert_eq!(c.get("900203638", &k, 1000), Some(Decision::Permit));
        assert_eq!(c.get("900203638", &k, 1059), Some(Decision::Permit));
        assert_eq!(c.get("900203638", &k, 1060), None, "expired at now + ttl");
        assert!(c.is_empty(), "an expired entry goes when met");
        check(&c);
    }

    #[test]
    fn the_key_is_the_whole_question() {
        let mut c = DecisionCache::new(60, 10);
        let k = key("o1", "GGC002");
        c.put("900203638", k.clone(), Decision::Permit, 0, c.epoch());
        assert_eq!(c.get("900203651", &k, 1), None, "another patient");
        assert_eq!(c.get("900203638", &key("o2", "GGC002"), 1), None);
        assert_eq!(c.get("900203638", &key("o1", "GGC013"), 1), None);
        let mut other_role = k.clone();
        other_role.asker.role = Some("01.015".into());
        assert_eq!(c.get("900203638", &other_role, 1), None);
        let mut other_user = k.clone();
        other_user.asker.user = Some("000095254".into());
        assert_eq!(c.get("900203638", &other_user, 1), None);
        assert_eq!(c.get("900203638", &k, 1), Some(Decision::Permit));
    }

    #[test]
    fn only_real_decisions_are_kept() {
        let mut c = DecisionCache::new(60, 10);
        for (i, d) in [
            Decision::Permit,
            Decision::Deny,
            Decision::NotApplicable,
            Decision::Indeterminate,
        ]
        .into_iter()
        .enumerate()
        {
            let k = key("o1", &format!("GGC00{i}"));
            c.put("900203638", k.clone(), d, 0, c.epoch());
            let kept = c.get("900203638", &k, 1);
            if d == Decision::Indeterminate {
                assert_eq!(kept, None);
            } else {
                assert_eq!(kept, Some(d));
            }
        }
        let mut off = DecisionCache::new(0, 10);
        off.put("900203638", key("o1", "GGC002"), Decision::Permit, 0, 0);
        assert!(off.is_empty(), "a ttl of 0 keeps nothing");
    }

    #[test]
    fn invalidation_drops_the_patient_and_answers_asked_before_it() {
        let mut c = DecisionCache::new(60, 10);
        let k = key("o1", "GGC002");
        c.put("900203638", k.clone(), Decision::Deny, 0, c.epoch());
        c.put("900203651", k.clone(), Decision::Deny, 0, c.epoch());
        let before = c.epoch();
        c.invalidate_patient("900203638");
        assert_eq!(c.get("900203638", &k, 1), None);
        assert_eq!(
            c.get("900203651", &k, 1),
            Some(Decision::Deny),
            "others stay"
        );
        // An answer to a question asked before the invalidation is not kept.
        c.put("900203638", k.clone(), Decision::Deny, 2, before);
        assert_eq!(c.get("900203638", &k, 3), None);
        c.put("900203638", k.clone(), Decision::Permit, 2, c.epoch());
        assert_eq!(c.get("900203638", &k, 3), Some(Decision::Permit));
        c.invalidate_patient("999999990");
        assert_eq!(c.len(), 2);
        check(&c);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let mut c = DecisionCache::new(60, 3);
        for (i, p) in ["900203638", "900203651", "999999151", "999999990"]
            .into_iter()
            .enumerate()
        {
            c.put(
                p,
                key("o1", "GGC002"),
                Decision::Permit,
                i as i64,
                c.epoch(),
            );
            check(&c);
        }
        assert_eq!(c.len(), 3);
        let k = key("o1", "GGC002");
        assert_eq!(c.get("900203638", &k, 5), None, "the oldest went");
        for p in ["900203651", "999999151", "999999990"] {
            assert_eq!(c.get(p, &k, 5), Some(Decision::Permit), "{p}");
        }
        // Replacing an entry does not evict another.
        c.put("999999990", k.clone(), Decision::Deny, 6, c.epoch());
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("999999990", &k, 7), Some(Decision::Deny));
        check(&c);
    }

    #[test]
    fn expired_entries_leave_on_insert_and_the_order_stays_small() {
        let mut c = DecisionCache::new(10, 1000);
        for i in 0..100 {
            c.put(
                "900203638",
                key(&format!("o{i}"), "GGC002"),
                Decision::Permit,
                0,
                c.epoch(),
            );
        }
        assert_eq!(c.len(), 100);
        c.put(
            "900203651",
            key("o1", "GGC002"),
            Decision::Permit,
            10,
            c.epoch(),
        );
        assert_eq!(c.len(), 1, "everything expired at 10 left");
        check(&c);
        // Replacing the same entry over and over does not grow the order list.
        for t in 0..10_000 {
            c.put(
                "900203651",
                key("o1", "GGC002"),
                Decision::Permit,
                10 + t / 1000,
                c.epoch(),
            );
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() <= 2 + 64 + 1, "{}", c.order.len());
        // Invalidating over and over does not either.
        for _ in 0..1000 {
            c.invalidate_patient("900203651");
            c.put(
                "900203651",
                key("o1", "GGC002"),
                Decision::Permit,
                20,
                c.epoch(),
            );
        }
        assert!(c.order.len() <= 2 + 64 + 1, "{}", c.order.len());
        check(&c);
    }

    #[test]
    fn a_full_cache_under_churn_keeps_its_bound() {
        let mut c = DecisionCache::new(1_000_000, 50);
        for i in 0..5000u32 {
            let p = format!("{:09}", i % 97);
            c.put(
                &p,
                key(&format!("o{}", i % 13), "GGC002"),
                Decision::Deny,
                i64::from(i),
                c.epoch(),
            );
            if i % 7 == 0 {
                c.invalidate_patient(&format!("{:09}", i % 11));
            }
            assert!(c.len() <= 50);
            assert!(c.order.len() <= 2 * 50 + 64 + 1);
        }
        check(&c);
    }
}
