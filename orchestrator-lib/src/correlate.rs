//! Accepting or rejecting replies: docs/DESIGN.md, Request lifecycle step 4.
//!
//! Pure logic with no I/O, so every rule is unit-tested here. A reply becomes a result
//! only if it passes every check; otherwise it is a [`Rejection`] with its reason.

use gearmq_schemas::envelope::{OpenError, Opened, open};
use gearmq_schemas::revocation::Revocations;
use gearmq_schemas::{CredentialVerifier, Name, Reply, Role};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Why a reply was not taken. Security rejections and duplicates are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// Not provably from the host it names: bad signature, untrusted, expired or wrong
    /// role credential, `host` not the signer, `user_id` not the host.
    Forged,
    /// From a host that was not a target of the request.
    UnexpectedHost,
    /// For a request this orchestrator never sent (or forgot).
    UnknownRequest,
    /// For a request that already finished, within the retention window.
    Late,
    /// A second final reply from a host already answered, or a streamed reply whose
    /// `seq` is not above the last one taken from that host (a copy redelivered, or
    /// republished after a reconnect).
    Duplicate,
    /// Bound to different request bytes than were sent.
    DigestMismatch,
    /// Does not decode.
    Malformed,
}

impl Rejection {
    /// The reason's stable name (`forged`, `unexpected_host`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Forged => "forged",
            Rejection::UnexpectedHost => "unexpected_host",
            Rejection::UnknownRequest => "unknown_request",
            Rejection::Late => "late",
            Rejection::Duplicate => "duplicate",
            Rejection::DigestMismatch => "digest_mismatch",
            Rejection::Malformed => "malformed",
        }
    }

    /// Whether this is a security rejection (everything but duplicates and late
    /// stragglers of accepted work).
    pub fn is_security(self) -> bool {
        !matches!(self, Rejection::Duplicate | Rejection::Late)
    }
}

/// A rejected reply, with what could be learned about it.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The reason.
    pub reason: Rejection,
    /// A sentence for logs.
    pub detail: String,
    /// The request it claimed to answer, when the body could be read.
    pub request_id: Option<Uuid>,
    /// The host it claimed to be from, when the body could be read.
    pub host: Option<Name>,
}

/// An accepted reply for a pending call.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The call it belongs to.
    pub request_id: Uuid,
    /// The verified reply.
    pub reply: Opened<Reply>,
}

/// The verdict on one delivery.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Take it.
    Accepted(Accepted),
    /// Count it and log it, never show it as a result.
    Rejected(Rejected),
}

struct Pending {
    digest: [u8; 32],
    targets: BTreeSet<Name>,
    finals: HashSet<Name>,
    /// The `seq` of the last reply taken from each host: a later one must be higher.
    last_seq: HashMap<Name, u32>,
    rejected: BTreeMap<Rejection, u64>,
}

/// Opens a reply: size, envelope, credential chain, signature, body.
pub fn open_reply(
    bytes: &[u8],
    max_message_bytes: usize,
    verifier: &CredentialVerifier,
) -> Result<Opened<Reply>, OpenError> {
    open::<Reply>(bytes, max_message_bytes, verifier)
}

/// The table of pending calls and recently finished ones.
pub struct Correlator {
    revocations: Revocations,
    pending: HashMap<Uuid, Pending>,
    finished: HashSet<Uuid>,
    finished_order: VecDeque<(Instant, Uuid)>,
    retention: Duration,
    require_user_id: bool,
    skew_ms: u64,
}

impl Correlator {
    /// An empty table.
    pub fn new(retention: Duration, require_user_id: bool, skew: Duration) -> Self {
        Correlator {
            revocations: Revocations::new(),
            pending: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            retention,
            require_user_id,
            skew_ms: gearmq_schemas::time::duration_ms(skew),
        }
    }

    /// Replaces the revocation list held (only by a newer one).
    pub fn set_revocations(&mut self, r: Revocations) {
        self.revocations = r;
    }

    /// The revocation list held.
    pub fn revocations_mut(&mut self) -> &mut Revocations {
        &mut self.revocations
    }

    /// Registers a call before its request is published.
    pub fn register(&mut self, id: Uuid, digest: [u8; 32], targets: BTreeSet<Name>) {
        self.pending.insert(
            id,
            Pending {
                digest,
                targets,
                finals: HashSet::new(),
                last_seq: HashMap::new(),
                rejected: BTreeMap::new(),
            },
        );
    }

    /// Ends a call: its id is remembered as finished for the retention window. Returns
    /// the rejections attributed to it.
    pub fn finish(&mut self, id: Uuid, now: Instant) -> BTreeMap<Rejection, u64> {
        self.expire(now);
        let rejected = self
            .pending
            .remove(&id)
            .map(|p| p.rejected)
            .unwrap_or_default();
        if self.finished.insert(id) {
            self.finished_order.push_back((now, id));
        }
        rejected
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, id)) = self.finished_order.front().copied() {
            if now.duration_since(t) < self.retention {
                break;
            }
            self.finished_order.pop_front();
            self.finished.remove(&id);
        }
    }

    /// Judges one delivered reply: `opened` is the result of [`open_reply`] on the bytes
    /// as received (done outside any lock: it is the expensive part), `user_id` the
    /// AMQP property.
    pub fn judge(
        &mut self,
        opened: Result<Opened<Reply>, OpenError>,
        user_id: Option<&str>,
        now_ms: u64,
        now: Instant,
    ) -> Verdict {
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                let reason = match e {
                    OpenError::Envelope(_) | OpenError::Body(_) => Rejection::Malformed,
                    OpenError::Credential(_) | OpenError::BadSignature { .. } => Rejection::Forged,
                };
                return Verdict::Rejected(Rejected {
                    reason,
                    detail: e.to_string(),
                    request_id: None,
                    host: None,
                });
            }
        };
        let reply = opened.body();
        let signer = opened.signer();
        let reject = |this: &mut Self, reason: Rejection, detail: String| {
            if let Some(p) = this.pending.get_mut(&reply.request_id) {
                *p.rejected.entry(reason).or_default() += 1;
            }
            Verdict::Rejected(Rejected {
                reason,
                detail,
                request_id: Some(reply.request_id),
                host: Some(reply.host.clone()),
            })
        };
        if signer.role != Role::Host {
            let d = format!("signed by {} credential {}", signer.role, signer.name);
            return reject(self, Rejection::Forged, d);
        }
        if reply.host != signer.name {
            let d = format!("names host {} but is signed by {}", reply.host, signer.name);
            return reject(self, Rejection::Forged, d);
        }
        if let Err(e) = signer.check_window(now_ms, self.skew_ms) {
            return reject(self, Rejection::Forged, e.to_string());
        }
        if self.revocations.revokes(signer) {
            let d = format!(
                "credential of {} (serial {}) is revoked",
                signer.name, signer.serial
            );
            return reject(self, Rejection::Forged, d);
        }
        if self.require_user_id && user_id != Some(reply.host.as_str()) {
            let d = format!(
                "host {} published as broker user {}",
                reply.host,
                user_id.unwrap_or("(none)")
            );
            return reject(self, Rejection::Forged, d);
        }
        self.expire(now);
        let Some(p) = self.pending.get_mut(&reply.request_id) else {
            let reason = if self.finished.contains(&reply.request_id) {
                Rejection::Late
            } else {
                Rejection::UnknownRequest
            };
            let d = format!("request {} is not pending", reply.request_id);
            return reject(self, reason, d);
        };
        if !p.targets.contains(&reply.host) {
            let d = format!("host {} was not a target", reply.host);
            return reject(self, Rejection::UnexpectedHost, d);
        }
        if p.digest != *reply.request_digest {
            let d = format!("host {} answered different request bytes", reply.host);
            return reject(self, Rejection::DigestMismatch, d);
        }
        if p.finals.contains(&reply.host) {
            let d = format!("host {} already answered", reply.host);
            return reject(self, Rejection::Duplicate, d);
        }
        if let Some(&last) = p.last_seq.get(&reply.host)
            && reply.seq <= last
        {
            let d = format!(
                "host {} sent reply {} after reply {last}: seen before or out of order",
                reply.host, reply.seq
            );
            return reject(self, Rejection::Duplicate, d);
        }
        p.last_seq.insert(reply.host.clone(), reply.seq);
        if reply.is_final {
            p.finals.insert(reply.host.clone());
        }
        Verdict::Accepted(Accepted {
            request_id: reply.request_id,
            reply: opened,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::envelope::Signed;
    use gearmq_schemas::{Credential, SigningKey, Status, TrustAnchors};

    struct World {
        issuer: SigningKey,
        verifier: CredentialVerifier,
    }

    impl World {
        fn new() -> Self {
            let issuer = SigningKey::from_seed(&[1; 32]);
            let verifier =
                CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 64);
            World { issuer, verifier }
        }

        fn identity(&self, name: &str, role: Role, seed: u8) -> (SigningKey, Vec<u8>) {
            let k = SigningKey::from_seed(&[seed; 32]);
            let c = Credential::new(
                u64::from(seed),
                Name::new(name).unwrap(),
                role,
                k.public_key(),
                0,
                u64::MAX,
            );
            let bytes = c.issue(&self.issuer);
            (k, bytes)
        }
    }

    fn reply(id: Uuid, digest: [u8; 32], host: &str) -> Reply {
        Reply::new(id, digest, Name::new(host).unwrap(), Status::Ok, 1, 2)
    }

    fn targets(names: &[&str]) -> BTreeSet<Name> {
        names.iter().map(|n| Name::new(*n).unwrap()).collect()
    }

    fn corr(require_user_id: bool) -> Correlator {
        Correlator::new(
            Duration::from_secs(60),
            require_user_id,
            Duration::from_secs(30),
        )
    }

    fn rejected(v: Verdict) -> Rejection {
        match v {
            Verdict::Rejected(r) => r.reason,
            Verdict::Accepted(_) => panic!("accepted"),
        }
    }

    #[test]
    fn genuine_reply_is_accepted_once() {
        let w = World::new();
        let (ka, ca) = w.identity("a", Role::Host, 2);
        let mut c = corr(true);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &ka, &ca);
        let now = Instant::now();
        assert!(matches!(
            c.judge(open_reply(&bytes, 1 << 20, &w.verifier), Some("a"), 10, now),
            Verdict::Accepted(_)
        ));
        assert_eq!(
            rejected(c.judge(open_reply(&bytes, 1 << 20, &w.verifier), Some("a"), 10, now)),
            Rejection::Duplicate
        );
        let counts = c.finish(id, now);
        assert_eq!(counts.get(&Rejection::Duplicate), Some(&1));
        assert_eq!(
            rejected(c.judge(open_reply(&bytes, 1 << 20, &w.verifier), Some("a"), 10, now)),
            Rejection::Late
        );
    }

    #[test]
    fn streamed_replies_are_taken_in_strictly_increasing_seq_only() {
        let w = World::new();
        let (ka, ca) = w.identity("a", Role::Host, 2);
        let mut c = corr(true);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let part = |seq: u32, is_final: bool| {
            let mut r = reply(id, [7; 32], "a");
            r.seq = seq;
            r.is_final = is_final;
            Signed::seal(&r, &ka, &ca)
        };
        let now = Instant::now();
        let mut judge =
            |bytes: &[u8]| c.judge(open_reply(bytes, 1 << 20, &w.verifier), Some("a"), 10, now);
        assert!(matches!(judge(&part(0, false)), Verdict::Accepted(_)));
        // The same partial again (a redelivery, a republish after a reconnect).
        assert_eq!(rejected(judge(&part(0, false))), Rejection::Duplicate);
        assert!(matches!(judge(&part(2, false)), Verdict::Accepted(_)));
        // An older one arriving late.
        assert_eq!(rejected(judge(&part(1, false))), Rejection::Duplicate);
        // The final reply must come after the partials too.
        assert_eq!(rejected(judge(&part(2, true))), Rejection::Duplicate);
        assert!(matches!(judge(&part(3, true)), Verdict::Accepted(_)));
        assert_eq!(rejected(judge(&part(4, false))), Rejection::Duplicate);
        assert_eq!(c.finish(id, now).get(&Rejection::Duplicate), Some(&4));
    }

    #[test]
    fn reply_signed_by_other_host_naming_target_is_forged() {
        let w = World::new();
        let (kb, cb) = w.identity("b", Role::Host, 3);
        let mut c = corr(false);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a", "b"]));
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &kb, &cb);
        assert_eq!(
            rejected(c.judge(
                open_reply(&bytes, 1 << 20, &w.verifier),
                None,
                10,
                Instant::now()
            )),
            Rejection::Forged
        );
    }

    #[test]
    fn user_id_must_match_when_required() {
        let w = World::new();
        let (ka, ca) = w.identity("a", Role::Host, 2);
        let id = Uuid::now_v7();
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &ka, &ca);
        for uid in [None, Some("b")] {
            let mut c = corr(true);
            c.register(id, [7; 32], targets(&["a"]));
            assert_eq!(
                rejected(c.judge(
                    open_reply(&bytes, 1 << 20, &w.verifier),
                    uid,
                    10,
                    Instant::now()
                )),
                Rejection::Forged
            );
        }
    }

    #[test]
    fn operator_signed_reply_is_forged() {
        let w = World::new();
        let (ko, co) = w.identity("a", Role::Operator, 4);
        let mut c = corr(false);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &ko, &co);
        assert_eq!(
            rejected(c.judge(
                open_reply(&bytes, 1 << 20, &w.verifier),
                None,
                10,
                Instant::now()
            )),
            Rejection::Forged
        );
    }

    #[test]
    fn untrusted_issuer_is_forged_and_garbage_is_malformed() {
        let w = World::new();
        let other = World {
            issuer: SigningKey::from_seed(&[9; 32]),
            verifier: CredentialVerifier::new(TrustAnchors::default(), 1),
        };
        let (ka, ca) = other.identity("a", Role::Host, 2);
        let mut c = corr(false);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &ka, &ca);
        let now = Instant::now();
        assert_eq!(
            rejected(c.judge(open_reply(&bytes, 1 << 20, &w.verifier), None, 10, now)),
            Rejection::Forged
        );
        assert_eq!(
            rejected(c.judge(
                open_reply(b"\x00garbage", 1 << 20, &w.verifier),
                None,
                10,
                now
            )),
            Rejection::Malformed
        );
    }

    #[test]
    fn unknown_unexpected_and_mismatched_are_told_apart() {
        let w = World::new();
        let (ka, ca) = w.identity("a", Role::Host, 2);
        let (kc, cc) = w.identity("c", Role::Host, 5);
        let mut c = corr(false);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let now = Instant::now();
        let other = Signed::seal(&reply(Uuid::now_v7(), [7; 32], "a"), &ka, &ca);
        assert_eq!(
            rejected(c.judge(open_reply(&other, 1 << 20, &w.verifier), None, 10, now)),
            Rejection::UnknownRequest
        );
        let from_c = Signed::seal(&reply(id, [7; 32], "c"), &kc, &cc);
        assert_eq!(
            rejected(c.judge(open_reply(&from_c, 1 << 20, &w.verifier), None, 10, now)),
            Rejection::UnexpectedHost
        );
        let wrong = Signed::seal(&reply(id, [8; 32], "a"), &ka, &ca);
        assert_eq!(
            rejected(c.judge(open_reply(&wrong, 1 << 20, &w.verifier), None, 10, now)),
            Rejection::DigestMismatch
        );
    }

    #[test]
    fn expired_host_credential_is_forged() {
        let w = World::new();
        let k = SigningKey::from_seed(&[6; 32]);
        let cred = Credential::new(6, Name::new("a").unwrap(), Role::Host, k.public_key(), 0, 5);
        let cb = cred.issue(&w.issuer);
        let mut c = corr(false);
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &k, &cb);
        assert_eq!(
            rejected(c.judge(
                open_reply(&bytes, 1 << 20, &w.verifier),
                None,
                1_000_000,
                Instant::now()
            )),
            Rejection::Forged
        );
    }

    #[test]
    fn reply_from_revoked_host_is_forged() {
        use gearmq_schemas::revocation::RevocationList;
        let w = World::new();
        let (ka, ca) = w.identity("a", Role::Host, 2);
        let mut c = corr(false);
        let list = RevocationList::empty(0).with(&[2], &[], 1).issue(&w.issuer);
        c.revocations_mut()
            .update(&list, &[w.issuer.public_key()])
            .unwrap();
        let id = Uuid::now_v7();
        c.register(id, [7; 32], targets(&["a"]));
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &ka, &ca);
        let v = c.judge(
            open_reply(&bytes, 1 << 20, &w.verifier),
            None,
            10,
            Instant::now(),
        );
        assert_eq!(rejected(v), Rejection::Forged);
    }

    #[test]
    fn finished_ids_are_forgotten_after_retention() {
        let w = World::new();
        let (ka, ca) = w.identity("a", Role::Host, 2);
        let mut c = Correlator::new(Duration::from_millis(10), false, Duration::ZERO);
        let id = Uuid::now_v7();
        let t0 = Instant::now();
        c.register(id, [7; 32], targets(&["a"]));
        c.finish(id, t0);
        let bytes = Signed::seal(&reply(id, [7; 32], "a"), &ka, &ca);
        let later = t0 + Duration::from_millis(20);
        assert_eq!(
            rejected(c.judge(open_reply(&bytes, 1 << 20, &w.verifier), None, 10, later)),
            Rejection::UnknownRequest
        );
    }
}
