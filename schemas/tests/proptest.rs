//! Properties of the gearmq-schemas codecs and signed envelopes.
//!
//! Every decoder here reads untrusted bytes off the broker or out of a file, so each
//! must turn anything odd into an error, never a panic; whatever it accepts must be
//! exactly what was encoded (one encoding per value); and a signed message altered in
//! any way must not open as something else.

use gearmq_schemas::actions::{PingArgs, PingResult};
use gearmq_schemas::codec;
use gearmq_schemas::credential::{self, Credential, Role};
use gearmq_schemas::envelope::{self, Body, Context, IssuerSigned, Signed};
use gearmq_schemas::request::{LabelMatch, MatchOp, Request, Targets, reply_queue_name};
use gearmq_schemas::{
    ActionName, CredentialVerifier, DEFAULT_MAX_MESSAGE_BYTES, Name, PublicKey, Reply, SigningKey,
    Status, TrustAnchors, VERSION, sha256,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::{Serialize, de::DeserializeOwned};
use std::sync::LazyLock;
use uuid::Uuid;

const MAX: usize = DEFAULT_MAX_MESSAGE_BYTES;
const T0: u64 = 1_767_225_600_000;

/// Keys and credentials of a small fleet, built once: issuer [1;32], host web1 [2;32],
/// operator ops [3;32] (the seeds of `schemas/vectors`).
struct Fleet {
    issuer: SigningKey,
    host: SigningKey,
    operator: SigningKey,
    host_credential: Vec<u8>,
    operator_credential: Vec<u8>,
    verifier: CredentialVerifier,
}

static FLEET: LazyLock<Fleet> = LazyLock::new(|| {
    let issuer = SigningKey::from_seed(&[1; 32]);
    let host = SigningKey::from_seed(&[2; 32]);
    let operator = SigningKey::from_seed(&[3; 32]);
    let mut hc = Credential::new(
        1,
        Name::new("web1").unwrap(),
        Role::Host,
        host.public_key(),
        T0,
        T0 + 365 * 86_400_000,
    );
    hc.labels.insert("role".into(), "web".into());
    let mut oc = Credential::new(
        2,
        Name::new("ops").unwrap(),
        Role::Operator,
        operator.public_key(),
        T0,
        T0 + 30 * 86_400_000,
    );
    oc.actions.push(ActionName::new("ping").unwrap());
    let host_credential = hc.issue(&issuer);
    let operator_credential = oc.issue(&issuer);
    let verifier = CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 64);
    Fleet {
        issuer,
        host,
        operator,
        host_credential,
        operator_credential,
        verifier,
    }
});

fn ping_request(targets: Targets) -> Request {
    let caller = Name::new("ops").unwrap();
    Request {
        kind: "request".into(),
        version: VERSION,
        id: Uuid::from_u128(0x019b76db_9260_7abc_8def_0123456789ab),
        reply_to: reply_queue_name(&caller, "0001"),
        caller,
        issued_at: T0 + 60_000,
        expires_at: T0 + 360_000,
        targets,
        action: ActionName::new("ping").unwrap(),
        args: codec::encode(&PingArgs {}),
        token: None,
    }
}

fn selector_request() -> Request {
    ping_request(Targets::Selector(vec![
        LabelMatch {
            key: "role".into(),
            op: MatchOp::Eq,
            value: "web".into(),
        },
        LabelMatch {
            key: "zone".into(),
            op: MatchOp::Regex,
            value: "eu-[0-9]+".into(),
        },
    ]))
}

fn ping_reply(request: &Request) -> Reply {
    let mut r = Reply::new(
        request.id,
        sha256(&codec::encode(request)),
        Name::new("web1").unwrap(),
        Status::Ok,
        T0 + 60_150,
        T0 + 60_152,
    );
    r.data = Some(serde_bytes::ByteBuf::from(codec::encode(&PingResult {
        agent_version: "0.1.0".into(),
        uptime_ms: 86_400_000,
    })));
    r
}

fn seal_request(r: &Request) -> Vec<u8> {
    Signed::seal(r, &FLEET.operator, &FLEET.operator_credential)
}

fn seal_reply(r: &Reply) -> Vec<u8> {
    Signed::seal(r, &FLEET.host, &FLEET.host_credential)
}

/// Signed messages and credentials that open, for mutation.
fn valid_messages() -> Vec<Vec<u8>> {
    let ping = ping_request(Targets::Hosts(vec![Name::new("web1").unwrap()]));
    vec![
        seal_request(&ping),
        seal_request(&selector_request()),
        seal_request(&ping_request(Targets::All)),
        seal_reply(&ping_reply(&ping)),
        FLEET.host_credential.clone(),
        FLEET.operator_credential.clone(),
    ]
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn name() -> impl Strategy<Value = Name> {
    "[a-z0-9][a-z0-9-]{0,62}".prop_map(|s| Name::new(s).unwrap())
}

fn action() -> impl Strategy<Value = ActionName> {
    "[a-z][a-z0-9_]{0,31}".prop_map(|s| ActionName::new(s).unwrap())
}

fn label_key() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_.-]{0,62}"
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[a-z0-9-]{0,16}",
        // The longest value allowed.
        "[a-z]{128}",
    ]
}

/// A (start, end) pair with start <= end, anywhere in u64.
fn window() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>()).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn label_match() -> impl Strategy<Value = LabelMatch> {
    let regex = prop_oneof![
        label_value().prop_map(|v| regex::escape(&v)),
        Just("eu-[0-9]+".to_string()),
        Just(".*".to_string()),
        Just("web|db|cache".to_string()),
        Just("[a-z]{2}-(east|west)-[0-9]".to_string()),
    ];
    prop_oneof![
        (label_key(), label_value()).prop_map(|(key, value)| LabelMatch {
            key,
            op: MatchOp::Eq,
            value
        }),
        (label_key(), label_value()).prop_map(|(key, value)| LabelMatch {
            key,
            op: MatchOp::Ne,
            value
        }),
        (label_key(), regex).prop_map(|(key, value)| LabelMatch {
            key,
            op: MatchOp::Regex,
            value
        }),
    ]
}

fn targets() -> impl Strategy<Value = Targets> {
    prop_oneof![
        vec(name(), 1..8).prop_map(Targets::hosts),
        Just(Targets::All),
        vec(label_match(), 1..=16).prop_map(Targets::Selector),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        any::<u128>(),
        name(),
        window(),
        targets(),
        "[a-z0-9-]{1,63}",
        action(),
        bytes(64),
        option::of(bytes(64)),
    )
        .prop_map(
            |(id, caller, (issued_at, expires_at), targets, instance, action, args, token)| {
                Request {
                    kind: "request".into(),
                    version: VERSION,
                    id: Uuid::from_u128(id),
                    reply_to: reply_queue_name(&caller, &instance),
                    caller,
                    issued_at,
                    expires_at,
                    targets,
                    action,
                    args,
                    token: token.map(serde_bytes::ByteBuf::from),
                }
            },
        )
}

fn status() -> impl Strategy<Value = Status> {
    proptest::sample::select(Status::ALL.to_vec())
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        any::<u128>(),
        any::<[u8; 32]>(),
        name(),
        any::<u32>(),
        any::<bool>(),
        status(),
        option::of(bytes(128)),
        option::of("\\PC{0,64}"),
        window(),
    )
        .prop_map(
            |(id, digest, host, seq, is_final, status, data, error, (started, finished))| Reply {
                kind: "reply".into(),
                version: VERSION,
                request_id: Uuid::from_u128(id),
                request_digest: serde_bytes::ByteArray::new(digest),
                host,
                seq,
                is_final,
                status,
                data: data.map(serde_bytes::ByteBuf::from),
                error,
                started_at: started,
                finished_at: finished,
            },
        )
}

fn credential() -> impl Strategy<Value = Credential> {
    (
        any::<u64>(),
        name(),
        prop_oneof![Just(Role::Host), Just(Role::Operator)],
        any::<[u8; 32]>(),
        window(),
        btree_map(label_key(), label_value(), 0..8),
        vec(action(), 0..8),
        any::<bool>(),
        option::of(any::<[u8; 32]>()),
    )
        .prop_map(
            |(serial, name, role, key, (nb, na), labels, actions, may_delegate, sealing)| {
                Credential {
                    kind: "credential".into(),
                    version: VERSION,
                    serial,
                    name,
                    role,
                    public_key: PublicKey::from_bytes(key),
                    not_before: nb,
                    not_after: na,
                    labels,
                    actions,
                    may_delegate,
                    sealing_key: sealing.map(serde_bytes::ByteArray::new),
                }
            },
        )
}

fn ping_result() -> impl Strategy<Value = PingResult> {
    ("\\PC{0,32}", any::<u64>()).prop_map(|(agent_version, uptime_ms)| PingResult {
        agent_version,
        uptime_ms,
    })
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Xor(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), 1..=255u8).prop_map(|(i, b)| Edit::Xor(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Remove),
        any::<Index>().prop_map(Edit::Truncate),
    ];
    vec(edit, 1..5)
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        match e {
            Edit::Insert(i, v) => {
                let at = i.index(b.len() + 1);
                b.insert(at, *v);
            }
            _ if b.is_empty() => {}
            Edit::Set(i, v) => {
                let at = i.index(b.len());
                b[at] = *v;
            }
            Edit::Xor(i, v) => {
                let at = i.index(b.len());
                b[at] ^= *v;
            }
            Edit::Remove(i) => {
                let at = i.index(b.len());
                b.remove(at);
            }
            Edit::Truncate(i) => {
                let at = i.index(b.len());
                b.truncate(at);
            }
        }
    }
    b
}

fn flip_bit(mut b: Vec<u8>, bit: usize) -> Vec<u8> {
    b[bit / 8] ^= 1 << (bit % 8);
    b
}

// ---------------------------------------------------------------------------------------
// Helpers that state the properties.

/// If `codec::decode` accepts `bytes` as a `T`, they are exactly `T`'s encoding.
fn accepted_is_canonical<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    if let Ok(v) = codec::decode::<T>("value", bytes, MAX) {
        prop_assert_eq!(codec::encode(&v), bytes);
    }
    Ok(())
}

/// Runs every decoder of untrusted bytes over `bytes`. Any panic fails the case; any
/// acceptance must be canonical.
fn feed_every_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
    let f = &*FLEET;
    let _ = Signed::decode(bytes, MAX);
    let _ = envelope::open::<Request>(bytes, MAX, &f.verifier);
    let _ = envelope::open::<Reply>(bytes, MAX, &f.verifier);
    let _ = credential::verify_credential(bytes, &[f.issuer.public_key()]);
    let _ = envelope::decode_body::<Request>(bytes, MAX);
    let _ = envelope::decode_body::<Reply>(bytes, MAX);
    let _ = envelope::decode_body::<Credential>(bytes, MAX);
    accepted_is_canonical::<Signed>(bytes)?;
    accepted_is_canonical::<IssuerSigned>(bytes)?;
    accepted_is_canonical::<Request>(bytes)?;
    accepted_is_canonical::<Reply>(bytes)?;
    accepted_is_canonical::<Credential>(bytes)?;
    accepted_is_canonical::<Targets>(bytes)?;
    accepted_is_canonical::<PingArgs>(bytes)?;
    accepted_is_canonical::<PingResult>(bytes)?;
    Ok(())
}

/// Signs arbitrary body bytes as a `B` and opens them: never a panic, and a body that
/// opens is exactly the bytes signed.
fn open_signed_body<B: Body>(
    body: Vec<u8>,
    key: &SigningKey,
    credential: &[u8],
) -> Result<(), TestCaseError> {
    let msg = Signed::seal_bytes(B::CONTEXT, body.clone(), key, credential);
    if let Ok(opened) = envelope::open::<B>(&msg, MAX, &FLEET.verifier) {
        prop_assert_eq!(opened.body_bytes(), &body[..]);
        prop_assert_eq!(codec::encode(opened.body()), body);
    }
    Ok(())
}

/// Signs arbitrary body bytes as a credential and verifies them.
fn verify_signed_credential_body(body: Vec<u8>) -> Result<(), TestCaseError> {
    let issuer = &FLEET.issuer;
    let sig = issuer.sign(Context::Credential, &body);
    let bytes = codec::encode(&IssuerSigned {
        body: body.clone(),
        issuer: issuer.public_key(),
        sig: serde_bytes::ByteArray::new(sig),
    });
    if let Ok(c) = credential::verify_credential(&bytes, &[issuer.public_key()]) {
        prop_assert_eq!(codec::encode(&c), body);
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in bytes(1024)) {
        feed_every_decoder(&bytes)?;
    }

    #[test]
    fn random_msgpack_maps_never_panic_a_decoder(
        // A map header, then random bytes: gets past the first byte of every decoder.
        header in prop_oneof![Just(0x83u8), Just(0x8b), Just(0x8c), Just(0x81), Just(0xde)],
        rest in bytes(512),
    ) {
        let mut b = vec![header];
        b.extend(rest);
        feed_every_decoder(&b)?;
    }

    #[test]
    fn mutated_messages_never_panic_and_never_open(
        which in any::<Index>(),
        edits in edits(),
    ) {
        let messages = valid_messages();
        let original = &messages[which.index(messages.len())];
        let mutated = apply(original.clone(), &edits);
        feed_every_decoder(&mutated)?;
        if &mutated != original {
            prop_assert!(envelope::open::<Request>(&mutated, MAX, &FLEET.verifier).is_err());
            prop_assert!(envelope::open::<Reply>(&mutated, MAX, &FLEET.verifier).is_err());
            prop_assert!(
                credential::verify_credential(&mutated, &[FLEET.issuer.public_key()]).is_err()
            );
        }
    }

    #[test]
    fn signed_random_bodies_never_panic_and_open_only_canonically(body in bytes(512)) {
        let f = &*FLEET;
        open_signed_body::<Request>(body.clone(), &f.operator, &f.operator_credential)?;
        open_signed_body::<Reply>(body.clone(), &f.host, &f.host_credential)?;
        verify_signed_credential_body(body)?;
    }

    #[test]
    fn signed_mutated_bodies_never_panic_and_open_only_canonically(
        which in 0..4usize,
        edits in edits(),
    ) {
        // Re-signed after the change, so the body decoder (selectors, regexes, names,
        // validation) sees the mutation rather than the signature check.
        let f = &*FLEET;
        let ping = ping_request(Targets::Hosts(vec![Name::new("web1").unwrap()]));
        match which {
            0 => open_signed_body::<Request>(
                apply(codec::encode(&ping), &edits), &f.operator, &f.operator_credential)?,
            1 => open_signed_body::<Request>(
                apply(codec::encode(&selector_request()), &edits),
                &f.operator, &f.operator_credential)?,
            2 => open_signed_body::<Reply>(
                apply(codec::encode(&ping_reply(&ping)), &edits), &f.host, &f.host_credential)?,
            _ => {
                let env: IssuerSigned = codec::decode("c", &f.host_credential, MAX).unwrap();
                verify_signed_credential_body(apply(env.body, &edits))?
            }
        }
    }

    #[test]
    fn request_round_trips(r in request()) {
        let bytes = codec::encode(&r);
        prop_assert_eq!(&codec::decode::<Request>("request", &bytes, MAX).unwrap(), &r);
        prop_assert_eq!(&envelope::decode_body::<Request>(&bytes, MAX).unwrap(), &r);
        let msg = seal_request(&r);
        let opened = envelope::open::<Request>(&msg, MAX, &FLEET.verifier).unwrap();
        prop_assert_eq!(opened.body(), &r);
        prop_assert_eq!(opened.body_bytes(), &bytes[..]);
        prop_assert_eq!(opened.digest(), &sha256(&bytes));
        prop_assert_eq!(opened.signer().name.as_str(), "ops");
    }

    #[test]
    fn reply_round_trips(r in reply()) {
        let bytes = codec::encode(&r);
        prop_assert_eq!(&codec::decode::<Reply>("reply", &bytes, MAX).unwrap(), &r);
        prop_assert_eq!(&envelope::decode_body::<Reply>(&bytes, MAX).unwrap(), &r);
        let msg = seal_reply(&r);
        let opened = envelope::open::<Reply>(&msg, MAX, &FLEET.verifier).unwrap();
        prop_assert_eq!(opened.body(), &r);
        prop_assert_eq!(opened.body_bytes(), &bytes[..]);
    }

    #[test]
    fn credential_round_trips(c in credential()) {
        let bytes = codec::encode(&c);
        prop_assert_eq!(&codec::decode::<Credential>("credential", &bytes, MAX).unwrap(), &c);
        prop_assert_eq!(&envelope::decode_body::<Credential>(&bytes, MAX).unwrap(), &c);
        let issued = c.issue(&FLEET.issuer);
        prop_assert_eq!(
            credential::verify_credential(&issued, &[FLEET.issuer.public_key()]).unwrap(),
            c
        );
    }

    #[test]
    fn ping_result_round_trips(p in ping_result()) {
        let bytes = codec::encode(&p);
        prop_assert_eq!(codec::decode::<PingResult>("ping result", &bytes, MAX).unwrap(), p);
    }

    #[test]
    fn targets_round_trip(t in targets()) {
        let bytes = codec::encode(&t);
        prop_assert_eq!(codec::decode::<Targets>("targets", &bytes, MAX).unwrap(), t);
    }

    #[test]
    fn request_with_a_flipped_bit_never_opens_to_a_different_body(
        r in request(),
        bit in any::<Index>(),
    ) {
        let msg = seal_request(&r);
        let flipped = flip_bit(msg.clone(), bit.index(msg.len() * 8));
        if let Ok(opened) = envelope::open::<Request>(&flipped, MAX, &FLEET.verifier) {
            prop_assert_eq!(opened.body_bytes(), &codec::encode(&r)[..]);
        }
    }

    #[test]
    fn reply_with_a_flipped_bit_never_opens_to_a_different_body(
        r in reply(),
        bit in any::<Index>(),
    ) {
        let msg = seal_reply(&r);
        let flipped = flip_bit(msg.clone(), bit.index(msg.len() * 8));
        if let Ok(opened) = envelope::open::<Reply>(&flipped, MAX, &FLEET.verifier) {
            prop_assert_eq!(opened.body_bytes(), &codec::encode(&r)[..]);
        }
    }

    #[test]
    fn credential_with_a_flipped_bit_never_verifies_to_a_different_credential(
        c in credential(),
        bit in any::<Index>(),
    ) {
        let issued = c.issue(&FLEET.issuer);
        let flipped = flip_bit(issued.clone(), bit.index(issued.len() * 8));
        if let Ok(v) = credential::verify_credential(&flipped, &[FLEET.issuer.public_key()]) {
            prop_assert_eq!(v, c);
        }
    }

    #[test]
    fn truncated_request_fails_cleanly(r in request(), cut in any::<Index>()) {
        let msg = seal_request(&r);
        let short = &msg[..cut.index(msg.len())];
        prop_assert!(Signed::decode(short, MAX).is_err());
        prop_assert!(envelope::open::<Request>(short, MAX, &FLEET.verifier).is_err());
        // A truncated body fails too, even when the truncation itself is signed.
        let body = codec::encode(&r);
        let short_body = body[..cut.index(body.len())].to_vec();
        prop_assert!(envelope::decode_body::<Request>(&short_body, MAX).is_err());
        let resealed = Signed::seal_bytes(
            Context::Request, short_body, &FLEET.operator, &FLEET.operator_credential);
        prop_assert!(envelope::open::<Request>(&resealed, MAX, &FLEET.verifier).is_err());
    }

    #[test]
    fn truncated_reply_fails_cleanly(r in reply(), cut in any::<Index>()) {
        let msg = seal_reply(&r);
        let short = &msg[..cut.index(msg.len())];
        prop_assert!(envelope::open::<Reply>(short, MAX, &FLEET.verifier).is_err());
        let body = codec::encode(&r);
        prop_assert!(envelope::decode_body::<Reply>(&body[..cut.index(body.len())], MAX).is_err());
    }

    #[test]
    fn truncated_credential_fails_cleanly(c in credential(), cut in any::<Index>()) {
        let issued = c.issue(&FLEET.issuer);
        let short = &issued[..cut.index(issued.len())];
        prop_assert!(credential::verify_credential(short, &[FLEET.issuer.public_key()]).is_err());
        let body = codec::encode(&c);
        prop_assert!(
            codec::decode::<Credential>("credential", &body[..cut.index(body.len())], MAX).is_err()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Exhaustive checks on fixed messages: every bit, every cut.

#[test]
fn every_single_bit_flip_of_a_valid_message_is_refused() {
    let f = &*FLEET;
    for msg in valid_messages() {
        for bit in 0..msg.len() * 8 {
            let flipped = flip_bit(msg.clone(), bit);
            assert!(
                envelope::open::<Request>(&flipped, MAX, &f.verifier).is_err(),
                "bit {bit} flipped still opens as a request"
            );
            assert!(
                envelope::open::<Reply>(&flipped, MAX, &f.verifier).is_err(),
                "bit {bit} flipped still opens as a reply"
            );
            assert!(
                credential::verify_credential(&flipped, &[f.issuer.public_key()]).is_err(),
                "bit {bit} flipped still verifies as a credential"
            );
        }
    }
}

#[test]
fn every_truncation_of_a_valid_message_is_refused() {
    let f = &*FLEET;
    for msg in valid_messages() {
        for cut in 0..msg.len() {
            let short = &msg[..cut];
            assert!(Signed::decode(short, MAX).is_err(), "cut at {cut}");
            assert!(envelope::open::<Request>(short, MAX, &f.verifier).is_err());
            assert!(envelope::open::<Reply>(short, MAX, &f.verifier).is_err());
            assert!(credential::verify_credential(short, &[f.issuer.public_key()]).is_err());
        }
    }
}

#[test]
fn huge_declared_lengths_are_refused_without_reading_them() {
    // Headers that announce 4 GiB of content inside a few bytes of input.
    let cases: Vec<Vec<u8>> = vec![
        // {"body": bin32 of 0xffffffff bytes}
        vec![
            0x83, 0xa4, b'b', b'o', b'd', b'y', 0xc6, 0xff, 0xff, 0xff, 0xff,
        ],
        // {"body": str32 of 0xffffffff bytes}
        vec![
            0x83, 0xa4, b'b', b'o', b'd', b'y', 0xdb, 0xff, 0xff, 0xff, 0xff,
        ],
        // {"hosts": array32 of 0xffffffff names}
        vec![
            0x81, 0xa5, b'h', b'o', b's', b't', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
        ],
        // map32 of 0xffffffff entries
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        // array32 of 0xffffffff entries
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
    ];
    for bytes in cases {
        feed_every_decoder(&bytes).unwrap();
        assert!(Signed::decode(&bytes, MAX).is_err());
        assert!(codec::decode::<Targets>("targets", &bytes, MAX).is_err());
        assert!(codec::decode::<Request>("request", &bytes, MAX).is_err());
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    for unit in [
        &[0x91u8][..],
        &[0x81, 0xa1, b'a'][..],
        &[0x81, 0xa5, b'h', b'o', b's', b't', b's'],
    ] {
        let bytes: Vec<u8> = unit.iter().copied().cycle().take(200_000).collect();
        feed_every_decoder(&bytes).unwrap();
    }
}

#[test]
fn oversize_messages_are_refused_before_decoding() {
    let ping = ping_request(Targets::Hosts(vec![Name::new("web1").unwrap()]));
    let msg = seal_request(&ping);
    assert!(matches!(
        envelope::open::<Request>(&msg, msg.len() - 1, &FLEET.verifier),
        Err(envelope::OpenError::Envelope(
            gearmq_schemas::DecodeError::TooLarge { .. }
        ))
    ));
    assert!(envelope::open::<Request>(&msg, msg.len(), &FLEET.verifier).is_ok());
}

#[test]
fn context_tags_are_ascii_and_prefix_free() {
    // `tag ‖ body` is unambiguous only if no tag is a prefix of another.
    let all = [
        Context::Credential,
        Context::Request,
        Context::Reply,
        Context::Token,
        Context::Revocation,
        Context::Audit,
        Context::EnrollRequest,
        Context::EnrollReply,
        Context::Event,
    ];
    for a in all {
        assert!(a.tag().is_ascii());
        assert_eq!(a.tag(), format!("gearmq/v1/{}", a.kind()).as_bytes());
        for b in all {
            if a != b {
                assert!(!b.tag().starts_with(a.tag()), "{a:?} prefixes {b:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The verification equation. PROTOCOL.md ("Signing") fixes the cofactorless equation
// and which keys and `R` are refused; verifiers are known to disagree exactly on
// signatures with small-order (torsion) parts in the key or in `R`, and a batch verifier
// (cofactored) would accept some the rules refuse. These craft such signatures and check
// what gearmq answers against the rules written out with curve25519-dalek's arithmetic,
// independently of ring.

mod equation {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::{EdwardsPoint, Scalar};

    /// A signature by secret scalar `a` (the key `[a]B + T_key`) with nonce `r`
    /// (`R = [r]B + T_r`), over `tag ‖ body`: `S = r + h·a`.
    pub(super) fn craft(
        a: Scalar,
        t_key: usize,
        r: Scalar,
        t_r: usize,
        body: &[u8],
    ) -> ([u8; 32], [u8; 64]) {
        let key = (B * a + EIGHT_TORSION[t_key]).compress().to_bytes();
        let big_r = (B * r + EIGHT_TORSION[t_r]).compress().to_bytes();
        let h = challenge(&big_r, &key, body);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice((r + h * a).as_bytes());
        (key, sig)
    }

    /// `h = SHA-512(R ‖ A ‖ tag ‖ body) mod L`.
    pub(super) fn challenge(big_r: &[u8; 32], key: &[u8; 32], body: &[u8]) -> Scalar {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(big_r);
        ctx.update(key);
        ctx.update(Context::Request.tag());
        ctx.update(body);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(ctx.finish().as_ref());
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    /// PROTOCOL.md's five rules, written out.
    pub(super) fn by_the_rules(key: &[u8; 32], sig: &[u8; 64], body: &[u8]) -> bool {
        let big_r: [u8; 32] = sig[..32].try_into().unwrap_or_default();
        let s: [u8; 32] = sig[32..].try_into().unwrap_or_default();
        // 1: S < L.
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else {
            return false;
        };
        // 3: A decodes; 2: and is neither a non-canonical encoding nor of small order
        // (the only points whose encoding with x = 0 and the sign bit set decodes).
        let Some(a) = CompressedEdwardsY(*key).decompress() else {
            return false;
        };
        if a.is_small_order() || a.compress().to_bytes() != *key {
            return false;
        }
        // 4: R is not of small order (a non-canonical R fails 5: the encoding compared
        // there is canonical).
        if CompressedEdwardsY(big_r)
            .decompress()
            .is_some_and(|p| p.is_small_order())
        {
            return false;
        }
        // 5: the cofactorless equation, R compared by its bytes.
        let h = challenge(&big_r, key, body);
        (B * s - a * h).compress().to_bytes() == big_r
    }

    pub(super) fn by_gearmq(key: &[u8; 32], sig: &[u8; 64], body: &[u8]) -> bool {
        PublicKey::from_bytes(*key)
            .verify(Context::Request, body, sig)
            .is_ok()
    }

    /// Whether `[h]T_key + T_r`, the small-order part left over in `[S]B − [h]A − R`
    /// for a [`craft`]ed signature, is the identity.
    pub(super) fn cancels(h: Scalar, t_key: usize, t_r: usize) -> bool {
        (EIGHT_TORSION[t_key] * h + EIGHT_TORSION[t_r]) == EdwardsPoint::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn verification_follows_the_rules_with_small_order_parts(
        a in any::<[u8; 32]>(),
        r in any::<[u8; 32]>(),
        t_key in 0usize..8,
        t_r in 0usize..8,
        body in bytes(64),
        flip in option::of(0usize..512),
    ) {
        let (key, mut sig) = equation::craft(
            Scalar::from_bytes_mod_order(a),
            t_key,
            Scalar::from_bytes_mod_order(r),
            t_r,
            &body,
        );
        if let Some(bit) = flip {
            sig[bit / 8] ^= 1 << (bit % 8);
        }
        prop_assert_eq!(
            equation::by_gearmq(&key, &sig, &body),
            equation::by_the_rules(&key, &sig, &body)
        );
    }
}

use curve25519_dalek::Scalar;

/// The cases random ones reach only by chance. For every key of mixed order (`T_key` not
/// the identity): a signature whose small-order parts cancel, which is accepted, and one
/// whose parts do not — the cofactored equation (`[8][S]B = [8]R + [8][h]A`, what batch
/// verification checks) holds, the cofactorless one does not — which is refused.
#[test]
fn mixed_order_keys_are_judged_by_the_cofactorless_equation() {
    let a = Scalar::from_bytes_mod_order([9; 32]);
    let body = b"mixed order";
    for t_key in 1..8 {
        let (mut accepted, mut refused) = (false, false);
        for nonce in 1u64..200 {
            for t_r in 0..8 {
                let (key, sig) = equation::craft(a, t_key, Scalar::from(nonce), t_r, body);
                let big_r: [u8; 32] = sig[..32].try_into().unwrap();
                let h = equation::challenge(&big_r, &key, body);
                let ours = equation::by_gearmq(&key, &sig, body);
                let at = format!("T_key {t_key}, r {nonce}, T_r {t_r}");
                assert_eq!(ours, equation::by_the_rules(&key, &sig, body), "{at}");
                assert_eq!(ours, equation::cancels(h, t_key, t_r), "{at}");
                accepted |= ours;
                refused |= !ours;
            }
            if accepted && refused {
                break;
            }
        }
        assert!(
            accepted && refused,
            "T_key {t_key}: accepted {accepted}, refused {refused}"
        );
    }
}
