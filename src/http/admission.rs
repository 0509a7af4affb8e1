//! Who may hold a connection slot of the partner listener: a pure state machine over
//! connection ids, source addresses and `now`; [`super::server`] does the I/O (closing
//! sockets, logging, metrics).
//!
//! A connection is *unfinished* from accept until its TLS handshake completes, then
//! *established*. The rules ([`Rules`], from the [`Limits`](super::Limits)):
//!
//! 1. Unfinished and established connections together hold at most `max_connections`
//!    slots.
//! 2. One [`Source`] (an IPv4 address, or an IPv6 /64) holds at most `per_source`
//!    unfinished handshakes: its next connection closes its oldest unfinished one.
//! 3. Unfinished handshakes from sources that are not *known* hold at most
//!    `max_connections − reserved`; the reserved slots are for established connections and
//!    for handshakes from known sources. A source is known for [`KNOWN_SOURCE_TTL`] after a
//!    connection from it completed a handshake with a client certificate that the TLS
//!    configuration accepted.
//! 4. A connection that does not fit closes the oldest unfinished handshake of the
//!    unknown source holding the most unfinished handshakes, to make room. When there is
//!    none (every slot it may use is established, or an unfinished handshake from a known
//!    source), it is refused.
//!
//! So a flood of connections that never finish a handshake, from any number of addresses,
//! cannot take a slot from an established connection, and a partner's new connection
//! displaces the flood's oldest handshake instead of waiting for the flood to stop: the
//! handshake deadline (5 s by default) bounds how long each of the flood's connections is
//! held, the rules above how many.
//!
//! [`RefusalTally`] counts the connections closed by these rules for the rate-limited
//! warning: one summary per interval, never one line per connection.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a source stays known after its last handshake with a client certificate.
pub(crate) const KNOWN_SOURCE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most sources remembered as known; the least recently seen is forgotten first.
const MAX_KNOWN_SOURCES: usize = 4096;
/// Most distinct sources counted per summary; the rest are in the totals only.
const MAX_TALLY_SOURCES: usize = 1024;
/// Sources named in one summary line, the most refused first.
const TOP_SOURCES: usize = 5;

/// Where a connection comes from, for the per-source limits: an IPv4 address (also when
/// it arrives IPv4-mapped on an IPv6 socket), or the /64 prefix of an IPv6 address (one
/// host commonly has a whole /64 to pick addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Source(IpAddr);

impl Source {
    /// The source of a peer address.
    pub(crate) fn of(addr: SocketAddr) -> Source {
        match addr.ip() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !u128::from(u64::MAX),
                ))),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The numbers the rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Slots in all (`NP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Slots unfinished handshakes from unknown sources may not take; below
    /// `max_connections`.
    pub reserved: usize,
    /// Unfinished handshakes one source may hold; at least 1.
    pub per_source: usize,
}

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve it, after closing these unfinished handshakes (id and source) to make room.
    /// They are already off the books: their workers find out when they next report.
    Admit { evict: Vec<(u64, Source)> },
    /// Close it at once: every slot it may use is held by a connection it cannot displace.
    Refuse,
}

/// The slots of the partner listener.
#[derive(Debug)]
pub(crate) struct Admission {
    rules: Rules,
    /// Unfinished handshakes by connection id; ids grow with accept order, so the first
    /// entry is the oldest.
    pending: BTreeMap<u64, Handshake>,
    /// Unfinished handshakes per source (no zero entries).
    by_source: HashMap<Source, usize>,
    /// How many of `pending` are from sources that were not known at accept.
    unknown_pending: usize,
    /// Connections past their handshake.
    established: HashSet<u64>,
    /// Sources known as partners, with the time of their last handshake with a client
    /// certificate.
    known: HashMap<Source, Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Handshake {
    source: Source,
    /// The source was known when the connection was accepted.
    known: bool,
}

impl Admission {
    /// Empty books under `rules`.
    pub(crate) fn new(rules: Rules) -> Admission {
        Admission {
            rules,
            pending: BTreeMap::new(),
            by_source: HashMap::new(),
            unknown_pending: 0,
            established: HashSet::new(),
            known: HashMap::new(),
        }
    }

    /// Slots held: unfinished handshakes plus established connections.
    pub(crate) fn held(&self) -> usize {
        self.pending.len() + self.established.len()
    }

    /// Unfinished handshakes.
    #[cfg(test)]
    pub(crate) fn unfinished(&self) -> usize {
        self.pending.len()
    }

    /// Decides on connection `id` (larger than every id before it) from `source`, and
    /// books it when admitted.
    pub(crate) fn admit(&mut self, id: u64, source: Source, now: Instant) -> Decision {
        let known = self.is_known(source, now);
        let mut evict: Vec<u64> = Vec::new();
        // Rule 2: a source at its cap gives up its oldest unfinished handshake.
        if self.by_source.get(&source).copied().unwrap_or(0) >= self.rules.per_source {
            if let Some((&oldest, _)) = self.pending.iter().find(|(_, h)| h.source == source) {
                evict.push(oldest);
            }
        }
        // Rules 1, 3 and 4: make room by displacing the busiest unknown source's oldest.
        if !self.fits(known, &evict) {
            match self.victim(&evict) {
                Some(victim) => evict.push(victim),
                None => return Decision::Refuse,
            }
            if !self.fits(known, &evict) {
                return Decision::Refuse;
            }
        }
        let evicted = evict
            .into_iter()
            .filter_map(|victim| self.forget_pending(victim).map(|h| (victim, h.source)))
            .collect();
        self.pending.insert(id, Handshake { source, known });
        *self.by_source.entry(source).or_insert(0) += 1;
        if !known {
            self.unknown_pending += 1;
        }
        Decision::Admit { evict: evicted }
    }

    /// Connection `id` completed its handshake, with a client certificate when
    /// `certificate`. False when it is no longer booked (displaced meanwhile): the caller
    /// closes it.
    pub(crate) fn established(&mut self, id: u64, certificate: bool, now: Instant) -> bool {
        let Some(handshake) = self.forget_pending(id) else {
            return false;
        };
        self.established.insert(id);
        if certificate {
            self.remember(handshake.source, now);
        }
        true
    }

    /// Connection `id` ended, in whatever state. False when it was no longer booked
    /// (displaced before it ended).
    pub(crate) fn release(&mut self, id: u64) -> bool {
        self.forget_pending(id).is_some() || self.established.remove(&id)
    }

    /// Whether a new connection fits once the handshakes in `evict` are gone.
    fn fits(&self, known: bool, evict: &[u64]) -> bool {
        let gone = evict.len();
        let gone_unknown = evict
            .iter()
            .filter(|id| self.pending.get(id).is_some_and(|h| !h.known))
            .count();
        let held = self.held() - gone;
        let unknown = self.unknown_pending - gone_unknown;
        let share = self
            .rules
            .max_connections
            .saturating_sub(self.rules.reserved);
        held < self.rules.max_connections && (known || unknown < share)
    }

    /// The oldest unfinished handshake from an unknown source, of the source holding the
    /// most unfinished handshakes; not one of `evict`.
    fn victim(&self, evict: &[u64]) -> Option<u64> {
        let count = |source: &Source| {
            let booked = self.by_source.get(source).copied().unwrap_or(0);
            let going = evict
                .iter()
                .filter(|id| self.pending.get(id).is_some_and(|h| h.source == *source))
                .count();
            booked - going
        };
        self.pending
            .iter()
            .filter(|(id, h)| !h.known && !evict.contains(id))
            .max_by_key(|(id, h)| (count(&h.source), Reverse(**id)))
            .map(|(id, _)| *id)
    }

    fn forget_pending(&mut self, id: u64) -> Option<Handshake> {
        let handshake = self.pending.remove(&id)?;
        if let Some(n) = self.by_source.get_mut(&handshake.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&handshake.source);
            }
        }
        if !handshake.known {
            self.unknown_pending -= 1;
        }
        Some(handshake)
    }

    fn is_known(&self, source: Source, now: Instant) -> bool {
        self.known
            .get(&source)
            .is_some_and(|seen| now.saturating_duration_since(*seen) < KNOWN_SOURCE_TTL)
    }

    fn remember(&mut self, source: Source, now: Instant) {
        if self.known.len() >= MAX_KNOWN_SOURCES && !self.known.contains_key(&source) {
            self.known
                .retain(|_, seen| now.saturating_duration_since(*seen) < KNOWN_SOURCE_TTL);
            if self.known.len() >= MAX_KNOWN_SOURCES {
                let stalest = self.known.iter().min_by_key(|(_, seen)| **seen);
                if let Some((&stalest, _)) = stalest {
                    self.known.remove(&stalest);
                }
            }
        }
        self.known.insert(source, now);
    }
}

/// How a connection was closed by the admission rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Closed at accept.
    Refused,
    /// An unfinished handshake closed to make room for a newer connection.
    Evicted,
}

/// Counts of closed connections since the last summary, per source, and when the next
/// summary may be written: the first at once, then at most one per interval.
#[derive(Debug)]
pub(crate) struct RefusalTally {
    interval: Duration,
    last_report: Option<Instant>,
    /// When the first connection counted in the coming summary was closed.
    since: Option<Instant>,
    refused: u64,
    evicted: u64,
    /// Per source; sources beyond [`MAX_TALLY_SOURCES`] are in the totals only.
    by_source: HashMap<Source, u64>,
}

/// One summary: what was closed during `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub refused: u64,
    pub evicted: u64,
    /// Distinct sources counted (those beyond the tally's bound not included).
    pub sources: usize,
    /// The most refused sources, most first (ties by address), with their counts.
    pub top: Vec<(Source, u64)>,
    /// From the first closed connection of this summary to the summary.
    pub window: Duration,
}

impl Summary {
    /// The fields of the log line after the event name, e.g.
    /// `refused=0 evicted=240 sources=1 top=127.0.0.1*240 window_s=10`.
    pub(crate) fn fields(&self) -> String {
        let top: Vec<String> = self.top.iter().map(|(s, n)| format!("{s}*{n}")).collect();
        format!(
            "refused={} evicted={} sources={} top={} window_s={}",
            self.refused,
            self.evicted,
            self.sources,
            if top.is_empty() {
                "-".to_string()
            } else {
                top.join(",")
            },
            self.window.as_millis().div_ceil(1000)
        )
    }
}

impl RefusalTally {
    /// A tally that reports at most once per `interval`.
    pub(crate) fn new(interval: Duration) -> RefusalTally {
        RefusalTally {
            interval,
            last_report: None,
            since: None,
            refused: 0,
            evicted: 0,
            by_source: HashMap::new(),
        }
    }

    /// Counts one closed connection.
    pub(crate) fn record(&mut self, source: Source, closed: Closed, now: Instant) {
        match closed {
            Closed::Refused => self.refused += 1,
            Closed::Evicted => self.evicted += 1,
        }
        self.since.get_or_insert(now);
        if self.by_source.len() < MAX_TALLY_SOURCES || self.by_source.contains_key(&source) {
            *self.by_source.entry(source).or_insert(0) += 1;
        }
    }

    /// When the next summary is due; `None` while nothing was counted.
    pub(crate) fn due(&self) -> Option<Instant> {
        let since = self.since?;
        Some(match self.last_report {
            Some(last) => (last + self.interval).max(since),
            None => since,
        })
    }

    /// The summary when one is due at `now` (or whenever something was counted, with
    /// `force`), and a fresh count.
    pub(crate) fn take(&mut self, now: Instant, force: bool) -> Option<Summary> {
        let due = self.due()?;
        if !force && now < due {
            return None;
        }
        let mut top: Vec<(Source, u64)> = self.by_source.drain().collect();
        let sources = top.len();
        top.sort_by_key(|(source, n)| (Reverse(*n), *source));
        top.truncate(TOP_SOURCES);
        let summary = Summary {
            refused: self.refused,
            evicted: self.evicted,
            sources,
            top,
            window: now.saturating_duration_since(self.since.unwrap_or(now)),
        };
        self.refused = 0;
        self.evicted = 0;
        self.since = None;
        self.last_report = Some(now);
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(SocketAddr::new(s.parse().unwrap(), 443))
    }

    fn rules(max_connections: usize, reserved: usize, per_source: usize) -> Rules {
        Rules {
            max_connections,
            reserved,
            per_source,
        }
    }

    fn admitted(d: Decision) -> Vec<u64> {
        match d {
            Decision::Admit { evict } => evict.into_iter().map(|(id, _)| id).collect(),
            Decision::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn sources_group_ipv6_by_64_and_unmap_ipv4() {
        assert_eq!(src("2001:db8:1:2:aaaa::1"), src("2001:db8:1:2:bbbb::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.7"), src("192.0.2.7"));
        assert_eq!(src("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(src("192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn one_source_holds_at_most_its_cap_and_its_oldest_goes_first() {
        let now = Instant::now();
        let mut a = Admission::new(rules(64, 16, 3));
        let flood = src("192.0.2.1");
        for id in 0..3 {
            assert_eq!(admitted(a.admit(id, flood, now)), Vec::<u64>::new());
        }
        assert_eq!(admitted(a.admit(3, flood, now)), vec![0]);
        assert_eq!(admitted(a.admit(4, flood, now)), vec![1]);
        assert_eq!(a.unfinished(), 3);
        // Another source is not affected.
        assert_eq!(
            admitted(a.admit(5, src("192.0.2.2"), now)),
            Vec::<u64>::new()
        );
        // A displaced connection is off the books: it cannot become established.
        assert!(!a.established(0, true, now));
        assert!(!a.release(1));
        assert!(a.established(2, true, now));
        assert!(a.release(2));
        assert_eq!(a.held(), 3);
    }

    #[test]
    fn unknown_sources_cannot_take_the_reserve() {
        let now = Instant::now();
        // 8 slots, 2 reserved: 6 for handshakes from unknown sources.
        let mut a = Admission::new(rules(8, 2, 16));
        for id in 0..6 {
            admitted(a.admit(id, src(&format!("198.51.100.{id}")), now));
        }
        // The seventh unknown source displaces the oldest of the busiest source (all hold
        // one: the oldest overall).
        assert_eq!(admitted(a.admit(6, src("198.51.100.6"), now)), vec![0]);
        assert_eq!(a.held(), 6);
        // A known partner's handshake uses the reserve without displacing anyone.
        let partner = src("203.0.113.9");
        a.remember(partner, now);
        assert_eq!(admitted(a.admit(7, partner, now)), Vec::<u64>::new());
        assert_eq!(admitted(a.admit(8, partner, now)), Vec::<u64>::new());
        assert_eq!(a.held(), 8);
        // Full: the next partner connection displaces a flood handshake, never a partner's.
        assert_eq!(admitted(a.admit(9, partner, now)), vec![1]);
        assert!(a.established(7, true, now) && a.established(8, true, now));
    }

    #[test]
    fn the_busiest_unknown_source_is_displaced_first() {
        let now = Instant::now();
        let mut a = Admission::new(rules(6, 1, 16));
        let quiet = src("192.0.2.1");
        let busy = src("192.0.2.2");
        admitted(a.admit(0, quiet, now));
        for id in 1..5 {
            admitted(a.admit(id, busy, now));
        }
        // Share of 5 full: the busy source's oldest goes, not the older quiet one.
        assert_eq!(admitted(a.admit(5, src("192.0.2.3"), now)), vec![1]);
        assert_eq!(admitted(a.admit(6, src("192.0.2.4"), now)), vec![2]);
    }

    #[test]
    fn established_connections_are_never_displaced() {
        let now = Instant::now();
        let mut a = Admission::new(rules(4, 1, 16));
        let partner = src("203.0.113.9");
        for id in 0..4 {
            admitted(a.admit(id, partner, now));
            assert!(a.established(id, true, now));
        }
        assert_eq!(a.admit(4, partner, now), Decision::Refuse);
        assert_eq!(a.admit(5, src("192.0.2.1"), now), Decision::Refuse);
        assert!(a.release(0));
        // A freed slot goes to whoever comes next.
        assert_eq!(
            admitted(a.admit(6, src("192.0.2.1"), now)),
            Vec::<u64>::new()
        );
        assert_eq!(a.held(), 4);
    }

    #[test]
    fn handshakes_of_known_sources_are_not_displaced_by_unknown_ones() {
        let now = Instant::now();
        let mut a = Admission::new(rules(4, 2, 16));
        let partner = src("203.0.113.9");
        a.remember(partner, now);
        for id in 0..4 {
            admitted(a.admit(id, partner, now));
        }
        assert_eq!(a.admit(4, src("192.0.2.1"), now), Decision::Refuse);
        assert_eq!(a.admit(5, partner, now), Decision::Refuse);
    }

    #[test]
    fn a_source_is_known_only_after_a_certificate_and_for_a_day() {
        let now = Instant::now();
        let mut a = Admission::new(rules(4, 2, 16));
        let s = src("203.0.113.9");
        admitted(a.admit(0, s, now));
        assert!(a.established(0, false, now));
        assert!(!a.is_known(s, now));
        admitted(a.admit(1, s, now));
        assert!(a.established(1, true, now));
        assert!(a.is_known(s, now + KNOWN_SOURCE_TTL - Duration::from_secs(1)));
        assert!(!a.is_known(s, now + KNOWN_SOURCE_TTL));
    }

    #[test]
    fn known_sources_are_bounded() {
        let now = Instant::now();
        let mut a = Admission::new(rules(4, 2, 16));
        for i in 0..(MAX_KNOWN_SOURCES as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            a.remember(
                Source(IpAddr::V4(ip)),
                now + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(a.known.len(), MAX_KNOWN_SOURCES);
        assert!(!a.is_known(src("10.0.0.0"), now + Duration::from_secs(60)));
        assert!(a.is_known(src("10.0.16.9"), now + Duration::from_secs(60)));
    }

    #[test]
    fn tally_reports_at_once_then_once_per_interval() {
        let t0 = Instant::now();
        let mut t = RefusalTally::new(Duration::from_secs(10));
        assert_eq!(t.due(), None);
        assert_eq!(t.take(t0, true), None);
        let flood = src("192.0.2.1");
        t.record(flood, Closed::Evicted, t0);
        let first = t.take(t0, false).unwrap();
        assert_eq!((first.refused, first.evicted, first.sources), (0, 1, 1));
        // 40 s of a flood of 1000 connections a second: one summary per interval.
        let mut summaries = vec![first];
        for ms in 1..40_000u64 {
            let now = t0 + Duration::from_millis(ms);
            t.record(flood, Closed::Evicted, now);
            if ms % 3 == 0 {
                t.record(src("2001:db8::1"), Closed::Refused, now);
            }
            summaries.extend(t.take(now, false));
        }
        summaries.extend(t.take(t0 + Duration::from_secs(41), true));
        assert_eq!(summaries.len(), 5, "{summaries:?}");
        let evicted: u64 = summaries.iter().map(|s| s.evicted).sum();
        let refused: u64 = summaries.iter().map(|s| s.refused).sum();
        assert_eq!((evicted, refused), (40_000, 13_333));
        let text: String = summaries.iter().map(|s| s.fields() + "\n").collect();
        assert!(text.len() < 1024, "{text}");
        assert_eq!(
            summaries[1].fields(),
            "refused=3333 evicted=10000 sources=2 top=192.0.2.1*10000,2001:db8::/64*3333 window_s=10"
        );
        assert_eq!(t.due(), None);
    }

    #[test]
    fn tally_names_the_most_refused_sources_only() {
        let now = Instant::now();
        let mut t = RefusalTally::new(Duration::from_secs(10));
        for i in 0..(MAX_TALLY_SOURCES as u32 + 5) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            for _ in 0..=(i % 7) {
                t.record(Source(IpAddr::V4(ip)), Closed::Refused, now);
            }
        }
        let s = t.take(now, false).unwrap();
        assert_eq!(s.sources, MAX_TALLY_SOURCES);
        assert_eq!(s.top.len(), TOP_SOURCES);
        assert_eq!(s.top[0], (src("10.0.0.6"), 7));
        assert_eq!(s.top[1], (src("10.0.0.13"), 7));
    }
}
