//! The core ([`Handler::decide`]) with no broker: message bytes in, decisions out.
//! Every refusal path, the redelivery cases and token spending, on a real replay store,
//! audit log and unit records in a temp dir, with the no-op unit backend.

use super::*;
use crate::config::{Limits, SystemdSettings};
use crate::identity::HostIdentity;
use crate::revocation::Revocations;
use gearmq_schemas::actions::PingArgs;
use gearmq_schemas::audit::{AuditOptions, SinkOptions, frames, read_record};
use gearmq_schemas::credential::Role;
use gearmq_schemas::token::{Minter, SealingKey, Token};
use gearmq_schemas::{ActionName, Credential, Name, Request, SigningKey, Targets, TrustAnchors};

const HOUR: Millis = 3_600_000;

/// A signing identity: its seed, so the key can be made again, and its credential.
struct Signer {
    name: &'static str,
    seed: u8,
    credential: Vec<u8>,
}

impl Signer {
    fn key(&self) -> SigningKey {
        SigningKey::from_seed(&[self.seed; 32])
    }
}

struct World {
    dir: tempfile::TempDir,
    handler: Arc<Handler>,
    issuer: SigningKey,
    sealing: [u8; 32],
    ops: Signer,
}

fn credential(name: &str, role: Role, seed: u8, actions: &[&str]) -> Credential {
    let now = now_ms();
    let mut c = Credential::new(
        u64::from(seed),
        Name::new(name).unwrap(),
        role,
        SigningKey::from_seed(&[seed; 32]).public_key(),
        now - HOUR,
        now + 24 * HOUR,
    );
    c.actions = actions
        .iter()
        .map(|a| ActionName::new(*a).unwrap())
        .collect();
    c
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let issuer = SigningKey::from_seed(&[1; 32]);
    let sealing = SealingKey::derive(&[9; 32]);
    let mut host_cred = credential("web1", Role::Host, 2, &[]);
    host_cred.sealing_key = Some(serde_bytes::ByteArray::new(sealing.public()));
    let ops = Signer {
        name: "ops",
        seed: 3,
        credential: credential("ops", Role::Operator, 3, &["ping", "stats"]).issue(&issuer),
    };
    let identity = HostIdentity {
        name: Name::new("web1").unwrap(),
        key: SigningKey::from_seed(&[2; 32]),
        credential_bytes: host_cred.issue(&issuer),
        credential: host_cred,
        anchors: TrustAnchors::new(vec![issuer.public_key()]),
        sealing: Some(Arc::new(SealingKey::derive(&[9; 32]))),
    };
    let state = dir.path().join("state");
    let limits = Limits::default();
    let settings = SystemdSettings::user(dir.path().join("units"), None);
    let revocations = Arc::new(Revocations::none());
    let (store, _) =
        ReplayStore::open(&state, limits.max_stored_reply_bytes, now_ms() - HOUR).unwrap();
    let services = Services::for_host(&settings, &state, &limits, &identity, revocations.clone());
    let services = Arc::new(services);
    let audit = Arc::new(
        AuditSink::open(
            &state.join("audit.log"),
            SigningKey::from_seed(&[2; 32]),
            &identity.credential_bytes,
            AuditOptions::default(),
            SinkOptions::default(),
        )
        .unwrap(),
    );
    let handler = Arc::new(Handler::for_host(
        identity,
        store,
        services,
        audit,
        &limits,
        Fault::None,
    ));
    World {
        dir,
        handler,
        issuer,
        sealing: sealing.public(),
        ops,
    }
}

impl World {
    /// A request from `signer` to web1, valid for an hour.
    fn request(&self, signer: &Signer, action: &str) -> Request {
        let now = now_ms();
        let caller = Name::new(signer.name).unwrap();
        Request::new(
            caller.clone(),
            now,
            now + HOUR,
            Targets::hosts([Name::new("web1").unwrap()]),
            gearmq_schemas::request::reply_queue_name(&caller, "t"),
            ActionName::new(action).unwrap(),
            codec::encode(&PingArgs {}),
        )
    }

    fn sign(&self, signer: &Signer, request: &Request) -> Vec<u8> {
        Signed::seal(request, &signer.key(), &signer.credential)
    }

    fn operator(&self, name: &'static str, seed: u8, actions: &[&str]) -> Signer {
        Signer {
            name,
            seed,
            credential: credential(name, Role::Operator, seed, actions).issue(&self.issuer),
        }
    }

    fn stats(&self) -> crate::stats::StatsSnapshot {
        self.handler.stats().snapshot()
    }

    /// The kinds of the agent's audit records so far.
    async fn audit_kinds(&self) -> Vec<&'static str> {
        let bytes = std::fs::read(self.dir.path().join("state/audit.log")).unwrap();
        frames(&bytes)
            .map(|f| read_record(f.unwrap().bytes).unwrap().record.entry.name())
            .collect()
    }
}

/// The reply a decision publishes, decoded (its signature is the host's: checked by the
/// end-to-end tests and the orchestrator).
fn reply(d: &Decision) -> Reply {
    let bytes = &d.reply.as_ref().expect("a reply").bytes;
    gearmq_schemas::audit::peek_signed::<Reply>(bytes, 1 << 20)
        .unwrap()
        .0
}

#[tokio::test]
async fn what_cannot_be_proven_is_dead_lettered_and_never_answered() {
    let w = world();
    let d = w.handler.decide(b"\x93not a request").await;
    assert_eq!((d.then, d.reply.is_none()), (Disposition::DeadLetter, true));
    let mut forged = w.sign(&w.ops, &w.request(&w.ops, "ping"));
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let d = w.handler.decide(&forged).await;
    assert_eq!((d.then, d.reply.is_none()), (Disposition::DeadLetter, true));
    let s = w.stats();
    assert_eq!(s.dead_lettered, 2);
    assert_eq!(s.refused.get("malformed"), Some(&1));
    assert_eq!(s.refused.get("bad_signature"), Some(&1));
}

#[tokio::test]
async fn a_request_for_other_hosts_is_acked_without_a_reply() {
    let w = world();
    let mut r = w.request(&w.ops, "ping");
    r.targets = Targets::hosts([Name::new("web2").unwrap()]);
    let d = w.handler.decide(&w.sign(&w.ops, &r)).await;
    assert_eq!((d.then, d.reply.is_none()), (Disposition::Ack, true));
    assert_eq!(w.stats().not_target, 1);
    assert_eq!(w.audit_kinds().await, ["genesis"]);
}

#[tokio::test]
async fn a_ping_is_answered_recorded_and_its_redelivery_gets_the_same_reply() {
    let w = world();
    let bytes = w.sign(&w.ops, &w.request(&w.ops, "ping"));
    let first = w.handler.decide(&bytes).await;
    assert_eq!(first.then, Disposition::Ack);
    assert_eq!(reply(&first).status, Status::Ok);
    assert_eq!(first.reply.as_ref().unwrap().reply_to, "gearmq.reply.ops.t");
    let again = w.handler.decide(&bytes).await;
    assert_eq!(
        again.reply.as_ref().unwrap().bytes,
        first.reply.as_ref().unwrap().bytes
    );
    let s = w.stats();
    assert_eq!((s.executed, s.resent, s.replay_entries), (1, 1, 1));
    assert_eq!(
        w.audit_kinds().await,
        ["genesis", "request_handled", "request_repeated"]
    );
}

#[tokio::test]
async fn an_id_reused_by_its_caller_is_a_replay_but_another_signers_id_is_not() {
    let w = world();
    let original = w.request(&w.ops, "ping");
    w.handler.decide(&w.sign(&w.ops, &original)).await;
    let mut reused = w.request(&w.ops, "ping");
    reused.id = original.id;
    reused.expires_at -= 1;
    let d = w.handler.decide(&w.sign(&w.ops, &reused)).await;
    assert_eq!(reply(&d).status, Status::Replayed);
    // Another operator's request with the same id is its own.
    let ops2 = w.operator("ops2", 4, &["ping"]);
    let mut theirs = w.request(&ops2, "ping");
    theirs.id = original.id;
    let d = w.handler.decide(&w.sign(&ops2, &theirs)).await;
    assert_eq!(reply(&d).status, Status::Ok, "{:?}", reply(&d).error);
}

#[tokio::test]
async fn a_signer_without_the_right_is_refused_before_the_store_holds_anything() {
    let w = world();
    let nobody = w.operator("nobody", 5, &[]);
    for _ in 0..50 {
        let d = w
            .handler
            .decide(&w.sign(&nobody, &w.request(&nobody, "ping")))
            .await;
        assert_eq!(reply(&d).status, Status::Unauthorized);
        assert_eq!(d.then, Disposition::Ack);
    }
    let s = w.stats();
    assert_eq!((s.replay_entries, s.replay_bytes), (0, 0));
    assert_eq!(s.refused.get("unauthorized"), Some(&50));
    // A host may not make requests of its own (without a token).
    let host2 = Signer {
        name: "web2",
        seed: 6,
        credential: credential("web2", Role::Host, 6, &[]).issue(&w.issuer),
    };
    let d = w
        .handler
        .decide(&w.sign(&host2, &w.request(&host2, "ping")))
        .await;
    assert_eq!(reply(&d).status, Status::Unauthorized);
}

#[tokio::test]
async fn an_expired_request_is_refused_and_each_copy_gets_the_same_refusal() {
    let w = world();
    let mut r = w.request(&w.ops, "ping");
    r.issued_at -= 2 * HOUR;
    r.expires_at = r.issued_at + HOUR;
    let bytes = w.sign(&w.ops, &r);
    let first = w.handler.decide(&bytes).await;
    assert_eq!(reply(&first).status, Status::Expired);
    for _ in 0..3 {
        let d = w.handler.decide(&bytes).await;
        assert_eq!(
            d.reply.as_ref().unwrap().bytes,
            first.reply.as_ref().unwrap().bytes
        );
    }
    assert_eq!(w.stats().audited_repeats, 3);
    assert_eq!(w.stats().replay_entries, 0);
}

#[tokio::test]
async fn bad_arguments_and_unknown_actions_are_answered_not_run() {
    let w = world();
    let mut r = w.request(&w.ops, "ping");
    r.args = vec![0xc1];
    let d = w.handler.decide(&w.sign(&w.ops, &r)).await;
    assert_eq!(reply(&d).status, Status::InvalidData);
    let ops_all = w.operator("root", 7, &["frobnicate"]);
    let d = w
        .handler
        .decide(&w.sign(&ops_all, &w.request(&ops_all, "frobnicate")))
        .await;
    assert_eq!(reply(&d).status, Status::UnknownAction);
    assert_eq!(w.stats().executed, 0);
}

#[tokio::test]
async fn a_delegation_token_is_spent_once_per_request_and_a_redelivery_spends_nothing() {
    let w = world();
    let host2 = Signer {
        name: "web2",
        seed: 6,
        credential: credential("web2", Role::Host, 6, &[]).issue(&w.issuer),
    };
    let now = now_ms();
    let claims = Token::new(
        w.issuer.public_key(),
        Name::new("web2").unwrap(),
        Name::new("web1").unwrap(),
        vec![ActionName::new("ping").unwrap()],
        Vec::new(),
        now - 1000,
        now + 60_000,
        1,
    );
    let token =
        gearmq_schemas::token::seal(&claims, Minter::Issuer(&w.issuer), &w.sealing).unwrap();
    let delegated = |w: &World| {
        let mut r = w.request(&host2, "ping");
        r.token = Some(serde_bytes::ByteBuf::from(token.clone()));
        w.sign(&host2, &r)
    };
    let first = delegated(&w);
    let d = w.handler.decide(&first).await;
    assert_eq!(reply(&d).status, Status::Ok, "{:?}", reply(&d).error);
    // The same bytes again: the stored reply, no use spent.
    let again = w.handler.decide(&first).await;
    assert_eq!(again.reply.unwrap().bytes, d.reply.unwrap().bytes);
    // A new request with the used-up token is refused.
    let d = w.handler.decide(&delegated(&w)).await;
    assert_eq!(reply(&d).status, Status::Unauthorized);
    assert!(reply(&d).error.unwrap().contains("token"));
    assert_eq!(w.stats().refused.get("token"), Some(&1));
}

#[tokio::test]
async fn a_copy_of_a_request_being_handled_waits_and_gets_its_stored_reply() {
    let w = world();
    let r = w.request(&w.ops, "ping");
    let bytes = w.sign(&w.ops, &r);
    // Hold the reservation as a first copy still running would.
    let key = RequestKey::new("ops", r.id);
    let digest = gearmq_schemas::sha256(&Signed::decode(&bytes, 1 << 20).unwrap().body);
    let held = match w.handler.store.begin(&key, &digest, r.issued_at, now_ms()) {
        Begin::Fresh(res) => res,
        other => panic!("{other:?}"),
    };
    let handler = w.handler.clone();
    let copy = bytes.clone();
    let waiting = tokio::spawn(async move { handler.decide(&copy).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the copy waits for the first");
    // The first finishes: the copy gets its stored reply.
    let stored = b"stored reply".to_vec();
    tokio::task::spawn_blocking(move || {
        held.record(now_ms() + HOUR, "gearmq.reply.ops.t".into(), stored)
    })
    .await
    .unwrap()
    .1
    .unwrap();
    let d = waiting.await.unwrap();
    assert_eq!(d.reply.unwrap().bytes, b"stored reply");
}
