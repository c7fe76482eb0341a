//! The delegation token test vector: `vectors/token-status.bin` and `vectors/token.json`.
//!
//! Operator `ops` (`credential-operator.bin`, `may_delegate`) lets host `web2` ask host
//! `web1` for `status` of unit `web`, once, between 2026-01-01T00:01:00Z and 00:06:00Z;
//! sealed to `web1`'s sealing key (RFC 7748 §6.1 Alice). HPKE draws an ephemeral key,
//! so the vector fixes it: the random bytes are SHA-256(seed ‖ counter) blocks from
//! the `ephemeral_seed` below. Rebuilding gives the file byte for byte; opening it with
//! Alice's private key gives the claims.
//!
//! After an intended change: `GEARMQ_REGEN_VECTORS=1 cargo test -p gearmq-schemas
//! --test token_vector`, review the diff, run again without the variable.

use gearmq_schemas::credential::verify_credential;
use gearmq_schemas::token::{self, MintedBy, Minter, Presented, SealingKey, Token};
use gearmq_schemas::{
    ActionName, CredentialVerifier, Name, SigningKey, TrustAnchors, VERSION, codec, sha256,
};
use serde_json::json;
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
    let bin = dir().join("token-status.bin");
    let json_file = dir().join("token.json");
    if std::env::var_os("GEARMQ_REGEN_VECTORS").is_some() {
        std::fs::write(&bin, &built).unwrap();
        std::fs::write(&json_file, format!("{doc:#}\n")).unwrap();
    }
    let file = std::fs::read(&bin).unwrap();
    assert_eq!(
        file, built,
        "token-status.bin no longer rebuilds byte for byte"
    );
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(on_disk, doc, "token.json is stale");

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
