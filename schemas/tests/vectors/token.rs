//! The delegation token test vector: `vectors/token-status.bin` and `vectors/token.json`.
//!
//! Operator `ops` (`credential-operator.bin`, `may_delegate`) lets host `web2` ask host
//! `web1` for `status` of unit `web`, once, between 2026-01-01T00:01:00Z and 00:06:00Z;
//! sealed to `web1`'s sealing key (RFC 7748 §6.1 Alice). HPKE draws an ephemeral key,
//! so the vector fixes it: the random bytes are SHA-256(seed ‖ counter) blocks from
//! the `ephemeral_seed` below. Rebuilding gives the file byte for byte; opening it with
//! Alice's private key gives the claims.
//!
//! `vectors/credential-web2.bin`, `vectors/request-token.bin` and
//! `vectors/token-request.json`: host `web2` presents that token in a `status` request
//! to `web1`, and the token's layers as `web1` opens them.
//!
//! After an intended change: `GEARMQ_REGEN_VECTORS=1 cargo test -p gearmq-schemas
//! --test vectors`, review the diff, run again without the variable.

use gearmq_schemas::actions::StatusArgs;
use gearmq_schemas::credential::{Credential, Role, verify_credential};
use gearmq_schemas::envelope::{Context, Signed, open};
use gearmq_schemas::request::{Request, Targets};
use gearmq_schemas::token::{
    self, Minted, MintedBy, Minter, MinterKind, Presented, SealingKey, Token,
};
use gearmq_schemas::{
    ActionName, CredentialVerifier, Name, SigningKey, TrustAnchors, VERSION, codec, sha256,
};
use hpke::Deserializable;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use uuid::Uuid;

const T0: u64 = 1_767_225_600_000;
const NOT_BEFORE: u64 = T0 + 60_000;
const NOT_AFTER: u64 = NOT_BEFORE + 300_000;
const TOKEN_ID: u128 = 0x019b76db_9260_7abc_8def_0123456789ac;
/// RFC 7748 §6.1: Alice's private key (her public key is web1's sealing key).
const ALICE_PRIVATE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
const EPHEMERAL_SEED: [u8; 32] = [5; 32];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn claims(operator: &SigningKey) -> Token {
    Token {
        kind: "token".into(),
        version: VERSION,
        id: Uuid::from_u128(TOKEN_ID),
        issuer: operator.public_key(),
        subject: Name::new("web2").unwrap(),
        audience: Name::new("web1").unwrap(),
        actions: vec![ActionName::new("status").unwrap()],
        units: vec!["web".into()],
        not_before: NOT_BEFORE,
        not_after: NOT_AFTER,
        uses: 1,
    }
}

fn alice() -> SealingKey {
    let sk: [u8; 32] = hex::decode(ALICE_PRIVATE).unwrap().try_into().unwrap();
    SealingKey::from_bytes(&sk).unwrap()
}

#[test]
fn token_vector_rebuilds_and_opens() {
    let issuer = SigningKey::from_seed(&[1; 32]);
    let operator = SigningKey::from_seed(&[3; 32]);
    let op_cred = std::fs::read(dir().join("credential-operator.bin")).unwrap();
    let op = verify_credential(&op_cred, &[issuer.public_key()]).unwrap();
    assert!(op.may_delegate, "the vector operator may delegate");
    let recipient = alice();
    assert_eq!(hex::encode(recipient.public()), ALICE_PUBLIC);
    let c = claims(&operator);
    let built = token::seal_for_vectors(
        &c,
        Minter::Operator {
            key: &operator,
            credential: &op_cred,
        },
        &recipient.public(),
        &EPHEMERAL_SEED,
    )
    .unwrap();

    let (sealed, header) = token::peek(&built).unwrap();
    let doc = json!({
        "about": "A sealed delegation token: see schemas/PROTOCOL.md, Delegation tokens. Opening needs the recipient's private key; the claims are inside the ciphertext.",
        "file": "token-status.bin",
        "hex": hex::encode(&built),
        "sha256": hex::encode(sha256(&built)),
        "length": built.len(),
        "hpke": {
            "mode": "base",
            "kem": "DHKEM(X25519, HKDF-SHA256) 0x0020",
            "kdf": "HKDF-SHA256 0x0001",
            "aead": "ChaCha20Poly1305 0x0003",
            "info": String::from_utf8_lossy(token::HPKE_INFO),
            "aad": "the header bytes",
            "recipient_private_key": ALICE_PRIVATE,
            "recipient_public_key": ALICE_PUBLIC,
            "ephemeral_rng": "SHA-256(ephemeral_seed || counter as u64 big-endian), counter from 0",
            "ephemeral_seed": hex::encode(EPHEMERAL_SEED),
            "enc": hex::encode(sealed.enc.as_slice()),
        },
        "header_hex": hex::encode(&sealed.header),
        "header": {
            "kind": header.kind,
            "version": header.version,
            "suite": header.suite,
            "audience": header.audience.as_str(),
            "recipient": hex::encode(header.recipient.as_slice()),
        },
        "claims": {
            "kind": c.kind,
            "version": c.version,
            "id": c.id.to_string(),
            "issuer": c.issuer.to_hex(),
            "subject": c.subject.as_str(),
            "audience": c.audience.as_str(),
            "actions": ["status"],
            "units": ["web"],
            "not_before": NOT_BEFORE,
            "not_after": NOT_AFTER,
            "uses": 1,
            "hex": hex::encode(codec::encode(&c)),
        },
        "minted_by": "operator ops (credential-operator.bin), Signed envelope in context gearmq/v1/token",
    });
    super::check_file("token-status.bin", &built);
    super::check_json("token.json", &doc);
    let file = std::fs::read(dir().join("token-status.bin")).unwrap();

    // Open as web1 would, and judge it for web2's status request on unit web.
    let verifier = CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 4);
    let u = token::open(&file, &Name::new("web1").unwrap(), &recipient, &verifier).unwrap();
    assert_eq!(u.claims, c);
    assert!(matches!(&u.minted_by, MintedBy::Operator(op) if op.name.as_str() == "ops"));
    let web2 = Name::new("web2").unwrap();
    let status = ActionName::new("status").unwrap();
    u.check(&Presented {
        signer: &web2,
        action: &status,
        unit: Some("web"),
        now: NOT_BEFORE + 1,
        skew_ms: 30_000,
        max_ttl_ms: 3_600_000,
    })
    .unwrap();
}

/// 2026-01-01T00:02:00Z: when web2 signed its delegated request.
const TOKEN_REQUEST_ISSUED_AT: u64 = T0 + 120_000;
const TOKEN_REQUEST_EXPIRES_AT: u64 = TOKEN_REQUEST_ISSUED_AT + 60_000;
/// UUIDv7 whose 48-bit timestamp is `TOKEN_REQUEST_ISSUED_AT`.
const TOKEN_REQUEST_ID: u128 = 0x019b76dc_7cc0_7abc_8def_0123456789ad;
const WEB2_SEED: [u8; 32] = [4; 32];
const WEB2_SERIAL: u64 = 3;

fn web2_credential() -> Credential {
    Credential {
        kind: "credential".into(),
        version: VERSION,
        serial: WEB2_SERIAL,
        name: Name::new("web2").unwrap(),
        role: Role::Host,
        public_key: SigningKey::from_seed(&WEB2_SEED).public_key(),
        not_before: T0,
        not_after: T0 + 365 * super::DAY_MS,
        labels: [("role", "web"), ("zone", "eu-2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        actions: vec![],
        may_delegate: false,
        sealing_key: None,
    }
}

fn token_request(token: &[u8]) -> Request {
    Request {
        kind: "request".into(),
        version: VERSION,
        id: Uuid::from_u128(TOKEN_REQUEST_ID),
        caller: Name::new("web2").unwrap(),
        issued_at: TOKEN_REQUEST_ISSUED_AT,
        expires_at: TOKEN_REQUEST_EXPIRES_AT,
        targets: Targets::Hosts(vec![Name::new("web1").unwrap()]),
        reply_to: "gearmq.reply.web2.0001".into(),
        action: ActionName::new("status").unwrap(),
        args: codec::encode(&StatusArgs {
            unit: Some("web".into()),
        }),
        token: Some(serde_bytes::ByteBuf::from(token.to_vec())),
    }
}

/// The request web2 signs to ask web1 for `status` of unit `web` under the token, and
/// the layers inside the token as web1 opens them.
#[test]
fn token_request_vector_rebuilds_and_passes_the_agent_checks() {
    let issuer = SigningKey::from_seed(&[1; 32]);
    let operator = SigningKey::from_seed(&[3; 32]);
    let web2 = SigningKey::from_seed(&WEB2_SEED);
    let token_bytes = std::fs::read(dir().join("token-status.bin")).unwrap();
    let op_cred = std::fs::read(dir().join("credential-operator.bin")).unwrap();

    let web2_cred = web2_credential().issue(&issuer);
    let request = Signed::seal(&token_request(&token_bytes), &web2, &web2_cred);
    super::check_file("credential-web2.bin", &web2_cred);
    super::check_file("request-token.bin", &request);

    // The layers: HPKE's ephemeral key is DeriveKeyPair(the first 32-byte block), the
    // plaintext is the encoded Minted, whose `signed` is ops' Signed envelope.
    let (sealed, _) = token::peek(&token_bytes).unwrap();
    let mut block0 = EPHEMERAL_SEED.to_vec();
    block0.extend_from_slice(&0u64.to_be_bytes());
    let ikm = sha256(&block0);
    assert_eq!(
        SealingKey::derive(&ikm).public(),
        sealed.enc.into_array(),
        "enc is the public key of DeriveKeyPair(SHA-256(seed || 0u64))"
    );
    type Kem = hpke::kem::X25519HkdfSha256;
    let alice_sk: [u8; 32] = hex::decode(ALICE_PRIVATE).unwrap().try_into().unwrap();
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&alice_sk).unwrap();
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(sealed.enc.as_slice()).unwrap();
    let plaintext =
        hpke::single_shot_open::<hpke::aead::ChaCha20Poly1305, hpke::kdf::HkdfSha256, Kem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            token::HPKE_INFO,
            &sealed.ciphertext,
            &sealed.header,
        )
        .unwrap();
    let signed = Signed::seal(&claims(&operator), &operator, &op_cred);
    let minted = codec::encode(&Minted {
        by: MinterKind::Operator,
        signed: signed.clone(),
    });
    assert_eq!(
        plaintext, minted,
        "the sealed plaintext is the encoded Minted"
    );

    let doc = json!({
        "about": "A delegated request: host web2 asks web1 for status of unit web under token-status.bin (schemas/PROTOCOL.md, Delegation tokens), and the layers of that token as web1 opens them. Built by schemas/tests/vectors/token.rs. Judged at now_ms by web1 with the agent defaults (clock skew 30 s, request lifetime cap 1 h, token TTL cap 1 h): accepted.",
        "now_ms": super::NOW,
        "credential": super::issuer_signed_json("credential-web2.bin", &web2_cred, &web2_credential()),
        "request": super::signed_json(
            "request-token.bin",
            &request,
            Context::Request,
            "credential-web2.bin",
            super::key_json("host web2", &WEB2_SEED),
            json!({
                "kind": "request",
                "version": VERSION,
                "id": Uuid::from_u128(TOKEN_REQUEST_ID).to_string(),
                "caller": "web2",
                "issued_at": TOKEN_REQUEST_ISSUED_AT,
                "expires_at": TOKEN_REQUEST_EXPIRES_AT,
                "targets": {"hosts": ["web1"]},
                "reply_to": "gearmq.reply.web2.0001",
                "action": "status",
                "args": {"unit": "web"},
                "args_hex": hex::encode(codec::encode(&StatusArgs { unit: Some("web".into()) })),
                "token": "token-status.bin",
            }),
        ),
        "token_layers": {
            "ephemeral_ikm": hex::encode(ikm),
            "enc": hex::encode(sealed.enc.as_slice()),
            "plaintext_hex": hex::encode(&minted),
            "plaintext": "Minted {by: \"operator\", signed: the Signed envelope below}",
            "signed_hex": hex::encode(&signed),
            "signed": "Signed {body: the claims (token.json claims.hex), signer: credential-operator.bin, sig over gearmq/v1/token || claims}",
        },
    });
    super::check_json("token-request.json", &doc);

    // As web1 at now: the request opens, is signed by a host as its caller, targets web1;
    // the token opens with web1's sealing key and allows this very request.
    let verifier = CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 4);
    let opened = open::<Request>(
        &super::read_vector("request-token.bin"),
        super::MAX,
        &verifier,
    )
    .unwrap();
    let r = opened.body();
    assert_eq!(r, &token_request(&token_bytes));
    assert_eq!(opened.signer().role, Role::Host);
    assert_eq!(opened.signer().name, r.caller);
    let web1 = Name::new("web1").unwrap();
    assert!(r.targets.includes(&web1, &BTreeMap::new()));
    assert!(
        opened.signer().check_window(super::NOW, 0).is_ok(),
        "web2's credential is valid at now"
    );
    assert!(r.issued_at <= super::NOW && super::NOW <= r.expires_at);
    // A host caller's actions are the token's: its own credential lists none.
    assert!(!opened.signer().allows(&r.action));
    let u = token::open(r.token.as_ref().unwrap(), &web1, &alice(), &verifier).unwrap();
    let args: StatusArgs = codec::decode("status args", &r.args, 64 * 1024).unwrap();
    u.check(&Presented {
        signer: &opened.signer().name,
        action: &r.action,
        unit: args.unit.as_deref(),
        now: super::NOW,
        skew_ms: 30_000,
        max_ttl_ms: 3_600_000,
    })
    .unwrap();
}
