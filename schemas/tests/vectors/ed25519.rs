//! `vectors/ed25519.json`: signatures gearmq must refuse, including ones *ring* 0.17
//! accepts on its own, and whole messages built on them.
//!
//! *ring* checks `S < L`, decodes the key (accepting non-canonical encodings and small
//! order points), and compares `R` byte for byte with the encoding of `[S]B − [h]A`. So,
//! alone, it accepts a signature with `R` of small order from a key holder, and
//! signatures anyone can make under a small-order key: with `A` of order `n` and `h ≡ 0
//! (mod n)`, `R` = the identity and `S` = 0 verify. gearmq refuses both
//! (`PublicKey::verify`, and credentials refuse weak keys at decode). The forgeries are
//! made here with plain arithmetic modulo `L` and checked against *ring* itself.

use super::{
    MAX, check_json, issuer_key, operator_credential, operator_key, ping_request, read_vector,
    verifier,
};
use gearmq_schemas::credential::Credential;
use gearmq_schemas::envelope::{self, Context, Signed};
use gearmq_schemas::{PublicKey, Request, codec};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde_json::{Value, json};

/// The group order `L = 2^252 + 27742317777372353535851937790883648493`, little-endian
/// 64-bit limbs.
const L: [u64; 4] = [
    0x5812_631a_5cf5_d3ed,
    0x14de_f9de_a2f7_9cd6,
    0,
    0x1000_0000_0000_0000,
];

/// `x` (little-endian bytes, any length) modulo `L`, by binary long division.
fn mod_l(x: &[u8]) -> [u64; 4] {
    let mut r = [0u64; 5];
    for byte in x.iter().rev() {
        for bit in (0..8).rev() {
            // r = 2r + bit
            let mut carry = u64::from(byte >> bit & 1);
            for limb in r.iter_mut() {
                let next = *limb >> 63;
                *limb = *limb << 1 | carry;
                carry = next;
            }
            if !less_than_l(&r) {
                sub_l(&mut r);
            }
        }
    }
    [r[0], r[1], r[2], r[3]]
}

fn less_than_l(r: &[u64; 5]) -> bool {
    if r[4] != 0 {
        return false;
    }
    for i in (0..4).rev() {
        if r[i] != L[i] {
            return r[i] < L[i];
        }
    }
    false
}

fn sub_l(r: &mut [u64; 5]) {
    let mut borrow = 0u64;
    for i in 0..5 {
        let l = if i < 4 { L[i] } else { 0 };
        let (d, b1) = r[i].overflowing_sub(l);
        let (d, b2) = d.overflowing_sub(borrow);
        r[i] = d;
        borrow = u64::from(b1 || b2);
    }
}

fn to_bytes(x: &[u64]) -> Vec<u8> {
    x.iter().flat_map(|l| l.to_le_bytes()).collect()
}

/// `a · b mod L` for little-endian 32-byte integers.
fn mul_mod_l(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let limbs = |x: &[u8; 32]| -> [u64; 4] {
        std::array::from_fn(|i| u64::from_le_bytes(x[8 * i..8 * i + 8].try_into().unwrap()))
    };
    let (a, b) = (limbs(a), limbs(b));
    let mut wide = [0u64; 8];
    for i in 0..4 {
        let mut carry = 0u128;
        for j in 0..4 {
            let t = u128::from(a[i]) * u128::from(b[j]) + u128::from(wide[i + j]) + carry;
            wide[i + j] = t as u64;
            carry = t >> 64;
        }
        wide[i + 4] = carry as u64;
    }
    to_bytes(&mod_l(&to_bytes(&wide))).try_into().unwrap()
}

/// `x + L` (x < L, so it fits in 32 bytes).
fn plus_l(x: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    let l = to_bytes(&L);
    for i in 0..32 {
        let t = u16::from(x[i]) + u16::from(l[i]) + carry;
        out[i] = t as u8;
        carry = t >> 8;
    }
    out
}

/// `SHA-512(R ‖ A ‖ M) mod L`, little-endian.
fn challenge(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(r);
    ctx.update(a);
    ctx.update(m);
    to_bytes(&mod_l(ctx.finish().as_ref())).try_into().unwrap()
}

/// The secret scalar of the RFC 8032 key with this seed (SHA-512, first half, clamped).
fn secret_scalar(seed: &[u8; 32]) -> [u8; 32] {
    let h = ring::digest::digest(&ring::digest::SHA512, seed);
    let mut a: [u8; 32] = h.as_ref()[..32].try_into().unwrap();
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    a
}

/// A signature with a chosen `R` by the holder of `seed`: `S = h·a mod L`, which makes
/// `[S]B − [h]A` the identity. It verifies (cofactorless) only if `R` encodes the
/// identity canonically.
fn sign_with_r(seed: &[u8; 32], public: &[u8; 32], r: [u8; 32], m: &[u8]) -> [u8; 64] {
    let s = mul_mod_l(&challenge(&r, public, m), &secret_scalar(seed));
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r);
    sig[32..].copy_from_slice(&s);
    sig
}

fn y(low: u8) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = low;
    b
}

/// `p − 19 + low`: `low, ff × 30, 7f`.
fn above_p(low: u8) -> [u8; 32] {
    let mut b = [0xff; 32];
    b[0] = low;
    b[31] = 0x7f;
    b
}

fn hex32(h: &str) -> [u8; 32] {
    hex::decode(h).unwrap().try_into().unwrap()
}

fn negative(mut b: [u8; 32]) -> [u8; 32] {
    b[31] |= 0x80;
    b
}

const Y8A: &str = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05";
const Y8B: &str = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a";
/// The identity, canonically: y = 1, x = 0.
fn identity() -> [u8; 32] {
    y(1)
}

/// A forgery under a small-order key `a` of order dividing `order`: a message in
/// context `request` whose challenge is a multiple of `order`, with `R` = the identity
/// and `S` = 0.
fn forge(a: &[u8; 32], order: u8) -> (Vec<u8>, [u8; 64]) {
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&identity());
    for n in 0u32.. {
        let body = format!("forged message {n}").into_bytes();
        let m = [Context::Request.tag(), &body[..]].concat();
        if challenge(&identity(), a, &m)[0].is_multiple_of(order) {
            return (body, sig);
        }
    }
    unreachable!()
}

struct Case {
    what: String,
    key: [u8; 32],
    body: Vec<u8>,
    sig: [u8; 64],
    ring: bool,
    rule: &'static str,
}

fn cases() -> Vec<Case> {
    let op = operator_key();
    let seed = super::OPERATOR_SEED;
    let a = *op.public_key().as_bytes();
    let body = codec::encode(&ping_request());
    let m = [Context::Request.tag(), &body[..]].concat();
    let good = op.sign(Context::Request, &body);
    let mut s_plus_l = good;
    let s: [u8; 32] = good[32..].try_into().unwrap();
    s_plus_l[32..].copy_from_slice(&plus_l(&s));

    let mut cases = vec![
        Case {
            what: "ops signs the ping request body (the control: accepted)".into(),
            key: a,
            body: body.clone(),
            sig: good,
            ring: true,
            rule: "accepted",
        },
        Case {
            what: "the same signature with S + L".into(),
            key: a,
            body: body.clone(),
            sig: s_plus_l,
            ring: false,
            rule: "S ≥ L",
        },
        Case {
            what: "ops signs with R = the identity (01 00…00), S = h·a mod L".into(),
            key: a,
            body: body.clone(),
            sig: sign_with_r(&seed, &a, identity(), &m),
            ring: true,
            rule: "R of small order",
        },
        Case {
            what: "ops signs with R = the identity with the sign bit set (01 00…80), S = h·a mod L"
                .into(),
            key: a,
            body: body.clone(),
            sig: sign_with_r(&seed, &a, negative(identity()), &m),
            ring: false,
            rule: "R of small order (and not the canonical encoding of [S]B − [h]A)",
        },
        Case {
            what: "ops signs with R = p + 1 (ee ff…7f, a non-canonical identity), S = h·a mod L"
                .into(),
            key: a,
            body: body.clone(),
            sig: sign_with_r(&seed, &a, above_p(0xee), &m),
            ring: false,
            rule: "R of small order (and not the canonical encoding of [S]B − [h]A)",
        },
    ];
    for (what, key, order) in [
        ("key y = 1, the identity (order 1)", identity(), 1),
        (
            "key y = 1 with the sign bit set (x = 0 \"negative\": RFC 8032 decoding refuses it, ring does not)",
            negative(identity()),
            1,
        ),
        ("key y = p + 1 (non-canonical identity)", above_p(0xee), 1),
        ("key y = p − 1 (order 2)", above_p(0xec), 2),
        ("key y = 0 (order 4)", y(0), 4),
        ("key y = p (non-canonical 0, order 4)", above_p(0xed), 4),
        ("key y = 26e8…fc05 (order 8)", hex32(Y8A), 8),
        ("key y = c717…037a (order 8)", hex32(Y8B), 8),
        (
            "key y = c717…037a with the sign bit set (order 8)",
            negative(hex32(Y8B)),
            8,
        ),
    ] {
        let (body, sig) = forge(&key, order);
        cases.push(Case {
            what: format!("anyone's forgery under {what}: R = the identity, S = 0"),
            key,
            body,
            sig,
            ring: true,
            rule: "weak key",
        });
    }
    let (body, sig) = forge(&y(2), 1);
    cases.push(Case {
        what: "key y = 2: canonical and not of small order, but no point (x² has no root)".into(),
        key: y(2),
        body,
        sig,
        ring: false,
        rule: "key is no point",
    });
    cases
}

/// Whole messages to open as requests: refused at the step named.
fn messages() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let op = operator_key();
    let a = *op.public_key().as_bytes();
    let cred = read_vector("credential-operator.bin");
    let body = codec::encode(&ping_request());
    let m = [Context::Request.tag(), &body[..]].concat();
    let with_sig = |signer: &[u8], sig: [u8; 64], body: &[u8]| {
        codec::encode(&Signed {
            body: body.to_vec(),
            signer: signer.to_vec(),
            sig: serde_bytes::ByteArray::new(sig),
        })
    };
    let good = op.sign(Context::Request, &body);
    let mut s_plus_l = good;
    let s: [u8; 32] = good[32..].try_into().unwrap();
    s_plus_l[32..].copy_from_slice(&plus_l(&s));

    // A credential for ops holding a weak key, as an issuer could sign by mistake.
    let weak_cred = |key: [u8; 32]| {
        Credential {
            public_key: PublicKey::from_bytes(key),
            ..operator_credential()
        }
        .issue(&issuer_key())
    };
    // Under the identity as key, R = the identity and S = 0 verify for any message.
    let mut anyones = [0u8; 64];
    anyones[..32].copy_from_slice(&identity());
    vec![
        (
            "request-ping.bin with the signature's S replaced by S + L",
            "signature",
            with_sig(&cred, s_plus_l, &body),
        ),
        (
            "the ping request signed by ops with R = the identity, S = h·a mod L (ring alone accepts it)",
            "signature",
            with_sig(
                &cred,
                sign_with_r(&super::OPERATOR_SEED, &a, identity(), &m),
                &body,
            ),
        ),
        (
            "the ping request with R = the identity and S = 0, signer: ops's credential re-issued with the identity as its key (ring alone accepts it)",
            "credential/body/malformed",
            with_sig(&weak_cred(identity()), anyones, &body),
        ),
        (
            "the ping request signed by ops, signer: ops's credential re-issued with the key f0 ff…7f (y = p + 3: on the curve, not canonical)",
            "credential/body/malformed",
            with_sig(&weak_cred(above_p(0xf0)), good, &body),
        ),
    ]
}

fn ring_accepts(key: &[u8; 32], m: &[u8], sig: &[u8; 64]) -> bool {
    UnparsedPublicKey::new(&ED25519, key).verify(m, sig).is_ok()
}

fn listing() -> Value {
    json!({
        "about": "Ed25519 cases (schemas/PROTOCOL.md, Signing), built by schemas/tests/vectors/ed25519.rs. signatures: a key, a message (context tag request || body) and a signature; ring_0_17: what ring 0.17's Ed25519 verification alone answers; gearmq: what a gearmq receiver must answer, and the rule that decides. messages: whole messages to open as a request with the issuer of vectors.json trusted, and the step that refuses them.",
        "p": "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed",
        "l": "1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed",
        "small_order_y": [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            Y8A,
            Y8B,
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ],
        "signatures": cases().into_iter().map(|c| json!({
            "what": c.what,
            "public_key": hex::encode(c.key),
            "context": "gearmq/v1/request",
            "body_hex": hex::encode(&c.body),
            "signature": hex::encode(c.sig),
            "ring_0_17": if c.ring { "accepts" } else { "refuses" },
            "gearmq": if c.rule == "accepted" { "accepts" } else { "refuses" },
            "rule": c.rule,
        })).collect::<Vec<_>>(),
        "messages": messages().into_iter().map(|(what, refused_at, bytes)| json!({
            "what": what,
            "refused_at": refused_at,
            "hex": hex::encode(bytes),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn ed25519_vectors_hold_for_ring_and_for_gearmq() {
    check_json("ed25519.json", &listing());
    let listing: Value = serde_json::from_slice(&read_vector("ed25519.json")).unwrap();
    for case in listing["signatures"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let key = hex32(case["public_key"].as_str().unwrap());
        let body = hex::decode(case["body_hex"].as_str().unwrap()).unwrap();
        let sig: [u8; 64] = hex::decode(case["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let m = [Context::Request.tag(), &body[..]].concat();
        assert_eq!(
            ring_accepts(&key, &m, &sig),
            case["ring_0_17"] == "accepts",
            "ring: {what}"
        );
        let gearmq = PublicKey::from_bytes(key).verify(Context::Request, &body, &sig);
        assert_eq!(
            gearmq.is_ok(),
            case["gearmq"] == "accepts",
            "gearmq: {what}"
        );
    }
    for case in listing["messages"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let err = envelope::open::<Request>(&bytes, MAX, &verifier())
            .err()
            .unwrap_or_else(|| panic!("{what}: opened, but must be refused"));
        assert_eq!(err.label(), case["refused_at"].as_str().unwrap(), "{what}");
    }
}

#[test]
fn arithmetic_modulo_l_is_right_at_its_edges() {
    assert_eq!(mod_l(&to_bytes(&L)), [0; 4]);
    let mut l5 = to_bytes(&L);
    l5[0] += 5;
    assert_eq!(mod_l(&l5), [5, 0, 0, 0]);
    // (L + 1) / 2 is the inverse of 2.
    let half: [u8; 32] = to_bytes(&[
        0x2c09_318d_2e7a_e9f7,
        0x0a6f_7cef_517b_ce6b,
        0,
        0x0800_0000_0000_0000,
    ])
    .try_into()
    .unwrap();
    assert_eq!(mul_mod_l(&y(2), &half), y(1));
    assert_eq!(plus_l(&y(0)).to_vec(), to_bytes(&L));
}
