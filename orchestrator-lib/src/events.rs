//! Watching the fleet: the signed events hosts publish of themselves (PROTOCOL.md,
//! "Events"), verified like replies, and the presence view they give.
//!
//! [`crate::Orchestrator::events`] reads the `gearmq.events` stream from a point in
//! time (so a new watcher knows at once who was alive in the last intervals) and then
//! follows it, over reconnects, from the offset it stopped at. Each event is judged by
//! [`EventJudge`]: opened (size, envelope, credential chain, signature), signed by the
//! host it names with a host credential in its window and not revoked, published by
//! that host's broker user under that host's routing key, from a host of the
//! inventory, not stale, and taken once and in order per (host, boot). Anything else
//! is counted by reason and dropped. [`Presence`] turns what was taken into up / down /
//! stopped / never seen, and says "unknown since" for a time the watcher did not hear.

use gearmq_schemas::event::{Event, What, event_route};
use gearmq_schemas::time::Millis;
use gearmq_schemas::{Credential, Name, OpenError, Opened, Role};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// How many intervals without an event make a host down.
pub const DOWN_AFTER_INTERVALS: u64 = 3;
/// The alive interval assumed for a host that has not declared one (the agent's
/// default).
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Boot ids remembered per host after they were replaced (their events are replays).
const RETIRED_BOOTS: usize = 8;

/// Why an event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventRejection {
    /// It did not decode (size, envelope, body).
    Malformed,
    /// Not proven to come from the host it names: bad signature or credential, not a
    /// host credential, another host's name, outside its window, revoked, published
    /// by another broker user or under another host's routing key.
    Forged,
    /// Signed by a host the inventory does not hold.
    UnknownHost,
    /// Signed too long before the watch could have heard it, or in the future.
    Stale,
    /// Seen before or out of order: a sequence number not above the last one taken
    /// of its boot, or a boot id already replaced.
    Replayed,
}

impl EventRejection {
    /// The stable label (`forged`, `replayed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventRejection::Malformed => "malformed",
            EventRejection::Forged => "forged",
            EventRejection::UnknownHost => "unknown_host",
            EventRejection::Stale => "stale",
            EventRejection::Replayed => "replayed",
        }
    }
}

/// A dropped event: why, and what could be read of it.
#[derive(Debug, Clone)]
pub struct EventRejected {
    /// Why.
    pub reason: EventRejection,
    /// For logs.
    pub detail: String,
    /// The host it named, if it opened.
    pub host: Option<Name>,
}

/// An event that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// The host it is about (= its signer and its broker user).
    pub host: Name,
    /// The agent run's boot id.
    pub boot: [u8; 16],
    /// Its number within the boot.
    pub seq: u64,
    /// When the host signed it (ms since epoch, the host's clock).
    pub time: Millis,
    /// What happened.
    pub what: What,
    /// The signed event exactly as received (what the audit log records).
    pub bytes: Vec<u8>,
}

struct Track {
    boot: [u8; 16],
    seq: u64,
    time: Millis,
    retired: VecDeque<[u8; 16]>,
}

/// Judges events: the checks of PROTOCOL.md, "Events", in order.
pub struct EventJudge {
    inventory: BTreeSet<Name>,
    require_user_id: bool,
    skew_ms: u64,
    /// Events signed before this (less the skew) are stale: the watch cannot have
    /// heard them, only a replay can bring them.
    heard_from: Millis,
    tracks: HashMap<Name, Track>,
    counts: BTreeMap<EventRejection, u64>,
}

impl EventJudge {
    /// A judge for the hosts of `inventory`, hearing events signed from `heard_from`
    /// on. `require_user_id`: the broker sets the validated `user_id`, which must then
    /// be the host.
    pub fn new(
        inventory: BTreeSet<Name>,
        require_user_id: bool,
        skew_ms: u64,
        heard_from: Millis,
    ) -> Self {
        EventJudge {
            inventory,
            require_user_id,
            skew_ms,
            heard_from,
            tracks: HashMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Rejections so far, by reason.
    pub fn counts(&self) -> &BTreeMap<EventRejection, u64> {
        &self.counts
    }

    /// Judges one delivered event: `opened` is the result of opening its bytes,
    /// `revoked` says whether a credential is revoked, `user_id` and `routing_key` come
    /// from the delivery, `now` is this process's clock. Accepted events advance the
    /// host's (boot, seq).
    pub fn judge(
        &mut self,
        opened: Result<Opened<Event>, OpenError>,
        revoked: &dyn Fn(&Credential) -> bool,
        user_id: Option<&str>,
        routing_key: &str,
        now: Millis,
    ) -> Result<Opened<Event>, EventRejected> {
        let verdict = self.check(opened, revoked, user_id, routing_key, now);
        if let Err(r) = &verdict {
            *self.counts.entry(r.reason).or_default() += 1;
        }
        verdict
    }

    fn check(
        &mut self,
        opened: Result<Opened<Event>, OpenError>,
        revoked: &dyn Fn(&Credential) -> bool,
        user_id: Option<&str>,
        routing_key: &str,
        now: Millis,
    ) -> Result<Opened<Event>, EventRejected> {
        let opened = opened.map_err(|e| EventRejected {
            reason: match e {
                OpenError::Envelope(_) | OpenError::Body(_) => EventRejection::Malformed,
                OpenError::Credential(_) | OpenError::BadSignature { .. } => EventRejection::Forged,
            },
            detail: e.to_string(),
            host: None,
        })?;
        let ev = opened.body();
        let signer = opened.signer();
        let reject = |reason, detail: String| EventRejected {
            reason,
            detail,
            host: Some(ev.host.clone()),
        };
        let forged = |detail| reject(EventRejection::Forged, detail);
        if signer.role != Role::Host {
            return Err(forged(format!(
                "signed by {} credential {}",
                signer.role, signer.name
            )));
        }
        if ev.host != signer.name {
            return Err(forged(format!(
                "names host {} but is signed by {}",
                ev.host, signer.name
            )));
        }
        if let Err(e) = signer.check_window(now, self.skew_ms) {
            return Err(forged(e.to_string()));
        }
        if revoked(signer) {
            return Err(forged(format!(
                "credential of {} (serial {}) is revoked",
                signer.name, signer.serial
            )));
        }
        if self.require_user_id && user_id != Some(ev.host.as_str()) {
            return Err(forged(format!(
                "event of {} published as broker user {}",
                ev.host,
                user_id.unwrap_or("(none)")
            )));
        }
        let route = event_route(&ev.host, &ev.what);
        if routing_key != route {
            return Err(forged(format!(
                "event {route} published with routing key {routing_key:?}"
            )));
        }
        if !self.inventory.contains(&ev.host) {
            return Err(reject(
                EventRejection::UnknownHost,
                format!("host {} is not in the inventory", ev.host),
            ));
        }
        if ev.time > now.saturating_add(self.skew_ms) {
            return Err(reject(
                EventRejection::Stale,
                format!("signed {} ms in the future", ev.time - now),
            ));
        }
        if ev.time.saturating_add(self.skew_ms) < self.heard_from {
            return Err(reject(
                EventRejection::Stale,
                format!(
                    "signed {} ms before this watch could hear it",
                    self.heard_from - ev.time
                ),
            ));
        }
        let boot = *ev.boot;
        match self.tracks.get_mut(&ev.host) {
            None => {
                self.tracks.insert(
                    ev.host.clone(),
                    Track {
                        boot,
                        seq: ev.seq,
                        time: ev.time,
                        retired: VecDeque::new(),
                    },
                );
            }
            Some(t) if t.boot == boot => {
                if ev.seq <= t.seq {
                    return Err(reject(
                        EventRejection::Replayed,
                        format!(
                            "event {} of boot {} after event {}: seen before or out of order",
                            ev.seq,
                            hex::encode(&boot[..4]),
                            t.seq
                        ),
                    ));
                }
                t.seq = ev.seq;
                t.time = t.time.max(ev.time);
            }
            Some(t) => {
                if t.retired.contains(&boot) {
                    return Err(reject(
                        EventRejection::Replayed,
                        format!("boot {} was already replaced", hex::encode(&boot[..4])),
                    ));
                }
                if ev.time.saturating_add(self.skew_ms) < t.time {
                    return Err(reject(
                        EventRejection::Replayed,
                        format!(
                            "a new boot {} signed before the last event of boot {}",
                            hex::encode(&boot[..4]),
                            hex::encode(&t.boot[..4])
                        ),
                    ));
                }
                if t.retired.len() == RETIRED_BOOTS {
                    t.retired.pop_front();
                }
                t.retired.push_back(t.boot);
                t.boot = boot;
                t.seq = ev.seq;
                t.time = ev.time;
            }
        }
        Ok(opened)
    }
}

/// A host's presence as a watch sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceState {
    /// An event within the last [`DOWN_AFTER_INTERVALS`] intervals.
    Up,
    /// Heard before, silent for [`DOWN_AFTER_INTERVALS`] intervals while the watch
    /// listened.
    Down,
    /// Its last event was `stopping`: shut down cleanly.
    Stopped,
    /// Never heard while the watch listened long enough to hear it.
    NeverSeen,
    /// The watch did not listen long enough, or not at all for a while (the broker
    /// was unreachable, the stream lost events): nothing is invented for that time.
    Unknown,
}

impl PresenceState {
    /// The state as a word (`up`, `never_seen`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceState::Up => "up",
            PresenceState::Down => "down",
            PresenceState::Stopped => "stopped",
            PresenceState::NeverSeen => "never_seen",
            PresenceState::Unknown => "unknown",
        }
    }

    /// Whether the host is not known to be up and running (down, stopped, never seen).
    pub fn is_down(self) -> bool {
        matches!(
            self,
            PresenceState::Down | PresenceState::Stopped | PresenceState::NeverSeen
        )
    }
}

/// One host's line of the presence view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPresence {
    /// The host.
    pub host: Name,
    /// Its state now.
    pub state: PresenceState,
    /// For [`PresenceState::Unknown`]: since when nothing is known.
    pub unknown_since: Option<Millis>,
    /// When its last event was signed (its clock).
    pub last_seen: Option<Millis>,
    /// Its last event (`alive`, `unit`, …).
    pub last_event: Option<&'static str>,
    /// The agent version it last declared.
    pub agent_version: Option<String>,
    /// The alive interval it last declared (ms).
    pub interval_ms: Option<u64>,
    /// Its current boot id.
    pub boot: Option<[u8; 16]>,
    /// How many agent starts (new boot ids) the watch saw after the first.
    pub restarts_seen: u64,
}

/// What an accepted event told the presence view ([`Presence::record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Something the view did not hold: the host's first event, a new boot, an `alive`
    /// after `stopping` or after a silence past the down limit, or any event other
    /// than `alive`.
    News,
    /// An `alive` of the same boot from a host that was up: it only says so again.
    StillUp,
    /// Signed before the latest event of the same boot the view holds: not taken.
    Older,
}

#[derive(Debug, Clone, Default)]
struct Seen {
    last_seen: Millis,
    last_event: &'static str,
    agent_version: Option<String>,
    interval_ms: Option<u64>,
    boot: [u8; 16],
    stopped: bool,
    restarts_seen: u64,
}

/// How long a host that declared `interval_ms` (or none: the default) may be silent
/// and still be up.
fn silent_limit(interval_ms: Option<u64>) -> u64 {
    interval_ms
        .unwrap_or(DEFAULT_INTERVAL_MS)
        .saturating_mul(DOWN_AFTER_INTERVALS)
}

/// The presence view of the inventory, from the events taken and the times the watch
/// was listening.
#[derive(Debug, Clone)]
pub struct Presence {
    hosts: BTreeSet<Name>,
    seen: HashMap<Name, Seen>,
    /// The watch has heard everything from this time on (its history's start, or the
    /// end of the last gap).
    heard_from: Millis,
    /// Where the last gap began (the history's start for a watch that never had one).
    unknown_since: Millis,
    /// Set while the watch is not listening (the broker is unreachable).
    deaf_since: Option<Millis>,
}

impl Presence {
    /// A view of `hosts` for a watch that hears everything signed from `heard_from` on.
    pub fn new(hosts: BTreeSet<Name>, heard_from: Millis) -> Self {
        Presence {
            hosts,
            seen: HashMap::new(),
            heard_from,
            unknown_since: heard_from,
            deaf_since: None,
        }
    }

    /// From when on the watch has heard everything.
    pub fn heard_from(&self) -> Millis {
        self.heard_from
    }

    /// Takes an accepted event, and says whether it told the view anything new.
    pub fn record(&mut self, ev: &Event) -> Taken {
        let s = self.seen.entry(ev.host.clone()).or_default();
        let first = s.last_event.is_empty();
        if ev.time < s.last_seen && *ev.boot == s.boot {
            return Taken::Older;
        }
        let was_up = !first
            && *ev.boot == s.boot
            && !s.stopped
            && ev.time.saturating_sub(s.last_seen) <= silent_limit(s.interval_ms);
        let taken = if was_up && matches!(ev.what, What::Alive { .. }) {
            Taken::StillUp
        } else {
            Taken::News
        };
        if !first && *ev.boot != s.boot {
            s.restarts_seen += 1;
        }
        s.boot = *ev.boot;
        s.last_seen = ev.time;
        s.last_event = ev.what.name();
        s.stopped = matches!(ev.what, What::Stopping {});
        if let Some(i) = ev.what.interval_ms() {
            s.interval_ms = Some(i);
        }
        if let Some(v) = ev.what.agent_version() {
            s.agent_version = Some(v.to_string());
        }
        taken
    }

    /// The watch stopped listening at `at` (the link broke).
    pub fn deaf(&mut self, at: Millis) {
        self.deaf_since.get_or_insert(at);
    }

    /// The watch listens again at `at`; `lost` says events of the deaf time may be
    /// missing (the stream no longer held them), so that time is unknown.
    pub fn listening(&mut self, at: Millis, lost: bool) {
        if let Some(since) = self.deaf_since.take()
            && lost
        {
            self.unknown_since = since;
            self.heard_from = at;
        }
    }

    /// The view at `now`, one line per host in name order.
    pub fn view(&self, now: Millis) -> Vec<HostPresence> {
        self.hosts.iter().map(|h| self.host(h, now)).collect()
    }

    fn host(&self, host: &Name, now: Millis) -> HostPresence {
        let s = self.seen.get(host);
        let silent_limit = silent_limit(s.and_then(|s| s.interval_ms));
        let listened_long_enough =
            self.deaf_since.is_none() && now.saturating_sub(self.heard_from) >= silent_limit;
        let (state, unknown_since) = match s {
            Some(s) if s.stopped => (PresenceState::Stopped, None),
            Some(s) if now.saturating_sub(s.last_seen) <= silent_limit => (PresenceState::Up, None),
            _ if !listened_long_enough => (
                PresenceState::Unknown,
                Some(self.deaf_since.unwrap_or(self.unknown_since)),
            ),
            Some(_) => (PresenceState::Down, None),
            None => (PresenceState::NeverSeen, None),
        };
        HostPresence {
            host: host.clone(),
            state,
            unknown_since,
            last_seen: s.map(|s| s.last_seen),
            last_event: s.map(|s| s.last_event),
            agent_version: s.and_then(|s| s.agent_version.clone()),
            interval_ms: s.and_then(|s| s.interval_ms),
            boot: s.map(|s| s.boot),
            restarts_seen: s.map_or(0, |s| s.restarts_seen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::envelope::{Signed, open};
    use gearmq_schemas::{CredentialVerifier, SigningKey, TrustAnchors};

    struct World {
        issuer: SigningKey,
        verifier: CredentialVerifier,
    }

    impl World {
        fn new() -> Self {
            let issuer = SigningKey::from_seed(&[1; 32]);
            let verifier =
                CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 100);
            World { issuer, verifier }
        }

        fn identity(&self, name: &str, role: Role, seed: u8) -> (SigningKey, Vec<u8>) {
            let key = SigningKey::from_seed(&[seed; 32]);
            let c = Credential::new(
                u64::from(seed),
                Name::new(name).unwrap(),
                role,
                key.public_key(),
                0,
                u64::MAX,
            );
            (key, c.issue(&self.issuer))
        }

        fn signed(&self, signer: (&SigningKey, &[u8]), ev: &Event) -> Vec<u8> {
            Signed::seal(ev, signer.0, signer.1)
        }

        fn open(&self, bytes: &[u8]) -> Result<Opened<Event>, OpenError> {
            open::<Event>(bytes, 64 * 1024, &self.verifier)
        }
    }

    fn alive(host: &str, boot: u8, seq: u64, time: Millis) -> Event {
        Event::new(
            Name::new(host).unwrap(),
            [boot; 16],
            seq,
            time,
            What::Alive {
                agent_version: "0.1.0".into(),
                interval_ms: 1_000,
            },
        )
    }

    fn inventory() -> BTreeSet<Name> {
        ["web1", "web2"]
            .iter()
            .map(|n| Name::new(*n).unwrap())
            .collect()
    }

    const NOW: Millis = 1_800_000_000_000;

    #[test]
    fn each_check_rejects_with_its_reason_and_counts_it() {
        let w = World::new();
        let (k1, c1) = w.identity("web1", Role::Host, 2);
        let (k2, c2) = w.identity("web2", Role::Host, 3);
        let (ko, co) = w.identity("ops", Role::Operator, 4);
        let (k9, c9) = w.identity("web9", Role::Host, 5);
        let never = |_: &Credential| false;
        let mut j = EventJudge::new(inventory(), true, 5_000, NOW - 60_000);
        let mut judge = |bytes: &[u8], user: &str, key: &str| {
            j.judge(w.open(bytes), &never, Some(user), key, NOW)
                .map(|_| ())
                .map_err(|r| r.reason)
        };
        let good = w.signed((&k1, &c1), &alive("web1", 1, 0, NOW));
        assert_eq!(judge(&good, "web1", "web1.alive"), Ok(()));
        // The same bytes again, and an earlier seq.
        assert_eq!(
            judge(&good, "web1", "web1.alive"),
            Err(EventRejection::Replayed)
        );
        // web2 signs an event naming web1.
        let other = w.signed((&k2, &c2), &alive("web1", 1, 5, NOW));
        assert_eq!(
            judge(&other, "web2", "web1.alive"),
            Err(EventRejection::Forged)
        );
        // An operator signs one.
        let op = w.signed((&ko, &co), &alive("ops", 1, 0, NOW));
        assert_eq!(judge(&op, "ops", "ops.alive"), Err(EventRejection::Forged));
        // Right signer, wrong broker user or routing key.
        let e2 = w.signed((&k2, &c2), &alive("web2", 1, 0, NOW));
        assert_eq!(
            judge(&e2, "web1", "web2.alive"),
            Err(EventRejection::Forged)
        );
        assert_eq!(
            judge(&e2, "web2", "web1.alive"),
            Err(EventRejection::Forged)
        );
        assert_eq!(judge(&e2, "web2", "web2.alive"), Ok(()));
        // Not in the inventory; garbage; stale; future.
        let e9 = w.signed((&k9, &c9), &alive("web9", 1, 0, NOW));
        assert_eq!(
            judge(&e9, "web9", "web9.alive"),
            Err(EventRejection::UnknownHost)
        );
        assert_eq!(
            judge(b"\x92garbage", "web1", "web1.alive"),
            Err(EventRejection::Malformed)
        );
        let old = w.signed((&k1, &c1), &alive("web1", 1, 9, NOW - 600_000));
        assert_eq!(
            judge(&old, "web1", "web1.alive"),
            Err(EventRejection::Stale)
        );
        let future = w.signed((&k1, &c1), &alive("web1", 1, 10, NOW + 60_000));
        assert_eq!(
            judge(&future, "web1", "web1.alive"),
            Err(EventRejection::Stale)
        );
        // A new boot is taken; the old boot's events are replays from then on.
        let reboot = w.signed((&k1, &c1), &alive("web1", 2, 0, NOW));
        assert_eq!(judge(&reboot, "web1", "web1.alive"), Ok(()));
        let old_boot = w.signed((&k1, &c1), &alive("web1", 1, 50, NOW));
        assert_eq!(
            judge(&old_boot, "web1", "web1.alive"),
            Err(EventRejection::Replayed)
        );
        // A boot never seen but signed before the current boot's last event.
        let early = w.signed((&k1, &c1), &alive("web1", 3, 0, NOW - 30_000));
        assert_eq!(
            judge(&early, "web1", "web1.alive"),
            Err(EventRejection::Replayed)
        );
        let counts: BTreeMap<&str, u64> =
            j.counts().iter().map(|(r, n)| (r.as_str(), *n)).collect();
        assert_eq!(
            counts,
            BTreeMap::from([
                ("forged", 4),
                ("malformed", 1),
                ("replayed", 3),
                ("stale", 2),
                ("unknown_host", 1)
            ])
        );
    }

    #[test]
    fn a_revoked_host_is_forged() {
        let w = World::new();
        let (k1, c1) = w.identity("web1", Role::Host, 2);
        let mut j = EventJudge::new(inventory(), false, 5_000, NOW - 60_000);
        let bytes = w.signed((&k1, &c1), &alive("web1", 1, 0, NOW));
        let revoked = |c: &Credential| c.name.as_str() == "web1";
        let r = j
            .judge(w.open(&bytes), &revoked, None, "web1.alive", NOW)
            .unwrap_err();
        assert_eq!(r.reason, EventRejection::Forged);
        assert!(r.detail.contains("revoked"), "{}", r.detail);
    }

    #[test]
    fn presence_says_up_down_stopped_never_seen_and_unknown() {
        let start = NOW - 2_000;
        let mut p = Presence::new(inventory(), start);
        // Just started: nobody is known yet.
        let v = p.view(NOW);
        assert!(v.iter().all(|h| h.state == PresenceState::Unknown));
        assert_eq!(v[0].unknown_since, Some(start));
        assert_eq!(p.record(&alive("web1", 1, 0, NOW)), Taken::News);
        let v = p.view(NOW + 100);
        assert_eq!(v[0].state, PresenceState::Up);
        assert_eq!(v[0].agent_version.as_deref(), Some("0.1.0"));
        // Three of its 1-s intervals later web1 is down; web2, which declared no
        // interval, is judged by the default 10 s: not yet known.
        let v = p.view(NOW + 3_500);
        assert_eq!(v[0].state, PresenceState::Down);
        assert_eq!(v[1].state, PresenceState::Unknown);
        assert!(v[0].state.is_down() && !v[1].state.is_down());
        // While the watch is deaf nothing is invented.
        p.deaf(NOW + 4_000);
        let v = p.view(NOW + 9_000);
        assert_eq!(v[0].state, PresenceState::Unknown);
        assert_eq!(v[0].unknown_since, Some(NOW + 4_000));
        // Back, with the gap's events lost: unknown until it has listened long enough.
        p.listening(NOW + 9_000, true);
        assert_eq!(p.view(NOW + 9_500)[0].state, PresenceState::Unknown);
        assert_eq!(p.view(NOW + 12_500)[0].state, PresenceState::Down);
        assert_eq!(p.view(NOW + 38_000)[1].state, PresenceState::Unknown);
        assert_eq!(p.view(NOW + 39_500)[1].state, PresenceState::NeverSeen);
        // A new boot, then a clean stop.
        p.record(&alive("web1", 2, 0, NOW + 13_000));
        let mut stop = alive("web1", 2, 1, NOW + 13_100);
        stop.what = What::Stopping {};
        p.record(&stop);
        let v = p.view(NOW + 13_200);
        assert_eq!(v[0].state, PresenceState::Stopped);
        assert_eq!(v[0].restarts_seen, 1);
        assert_eq!(v[0].last_event, Some("stopping"));
    }

    #[test]
    fn only_an_alive_from_a_host_that_was_up_is_not_news() {
        let mut p = Presence::new(inventory(), NOW - 60_000);
        // web1 declares 1-s intervals: down after 3 s of silence.
        assert_eq!(p.record(&alive("web1", 1, 0, NOW)), Taken::News);
        assert_eq!(p.record(&alive("web1", 1, 1, NOW + 1_000)), Taken::StillUp);
        assert_eq!(p.record(&alive("web1", 1, 2, NOW + 4_000)), Taken::StillUp);
        // Older than what the view holds of that boot.
        assert_eq!(p.record(&alive("web1", 1, 1, NOW + 1_000)), Taken::Older);
        // Back after a silence past the down limit.
        assert_eq!(p.record(&alive("web1", 1, 3, NOW + 7_001)), Taken::News);
        // A new boot.
        assert_eq!(p.record(&alive("web1", 2, 0, NOW + 7_500)), Taken::News);
        // Anything but alive is news, and so is the alive after a stop.
        let mut stop = alive("web1", 2, 1, NOW + 7_600);
        stop.what = What::Stopping {};
        assert_eq!(p.record(&stop), Taken::News);
        assert_eq!(p.record(&alive("web1", 2, 2, NOW + 7_700)), Taken::News);
        assert_eq!(p.record(&alive("web1", 2, 3, NOW + 8_700)), Taken::StillUp);
    }
}
