//! `vectors/decode.json`: bodies, each with the label its decoding gives (PROTOCOL.md,
//! "Decoding and its labels"), at the edges between the labels — a missing field, a
//! value of the wrong type, a key that is not a string, the rank of two faults in one
//! input, the order of kind, version and body rules — and bodies that decode although
//! one might expect otherwise ("Settled details": ids, repeated actions, …).
//!
//! Bodies only, unsigned: the label is the decoder's, whatever envelope carried it.

use super::{MAX, check_json, host_credential, ping_reply, ping_request};
use gearmq_schemas::actions::{MAX_ARGS_BYTES, PingArgs};
use gearmq_schemas::envelope::decode_body;
use gearmq_schemas::request::Targets;
use gearmq_schemas::{Credential, Reply, Request, codec};
use serde_json::{Value, json};

/// One MessagePack value, encoded canonically.
fn enc<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    codec::encode(&v)
}

fn bin(b: &[u8]) -> Vec<u8> {
    enc(serde_bytes::Bytes::new(b))
}

/// A map of `entries` (key bytes, value bytes) with the shortest header.
fn map(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let n = entries.len();
    let mut out = if n < 16 {
        vec![0x80 | n as u8]
    } else {
        vec![0xde, (n >> 8) as u8, n as u8]
    };
    for (k, v) in entries {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// The ping request's body as (key, value) entries, in the canonical order.
fn request_entries() -> Vec<(Vec<u8>, Vec<u8>)> {
    let r = ping_request();
    let entries = vec![
        (enc("kind"), enc(&r.kind)),
        (enc("version"), enc(&r.version)),
        (enc("id"), enc(&r.id)),
        (enc("caller"), enc(&r.caller)),
        (enc("issued_at"), enc(&r.issued_at)),
        (enc("expires_at"), enc(&r.expires_at)),
        (enc("targets"), enc(&r.targets)),
        (enc("reply_to"), enc(&r.reply_to)),
        (enc("action"), enc(&r.action)),
        (enc("args"), bin(&r.args)),
        (enc("token"), vec![0xc0]),
    ];
    assert_eq!(
        map(&entries),
        codec::encode(&r),
        "the entries rebuild the body"
    );
    entries
}

fn with(entries: &[(Vec<u8>, Vec<u8>)], key: &str, value: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = entries.to_vec();
    let at = out.iter().position(|(k, _)| *k == enc(key)).unwrap();
    out[at].1 = value;
    out
}

fn without(entries: &[(Vec<u8>, Vec<u8>)], key: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries
        .iter()
        .filter(|(k, _)| *k != enc(key))
        .cloned()
        .collect()
}

fn rekey(entries: &[(Vec<u8>, Vec<u8>)], key: &str, new_key: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = entries.to_vec();
    let at = out.iter().position(|(k, _)| *k == enc(key)).unwrap();
    out[at].0 = new_key;
    out
}

struct Case {
    what: &'static str,
    ty: &'static str,
    limit: usize,
    bytes: Vec<u8>,
    label: &'static str,
}

fn cases() -> Vec<Case> {
    let req = request_entries();
    let body = map(&req);
    let r = |what, bytes, label| Case {
        what,
        ty: "request",
        limit: MAX,
        bytes,
        label,
    };
    let mut swapped = req.clone();
    swapped.swap(2, 3);
    let mut trailing_extra = map(&[req.clone(), vec![(enc("extra"), vec![0xc0])]].concat());
    trailing_extra.push(0xc0);
    let long_version_extra = map(&[
        with(&req, "version", vec![0xcd, 0x00, 0x01]),
        vec![(enc("extra"), vec![0xc0])],
    ]
    .concat());
    let mut extra_swapped = [swapped.clone(), vec![(enc("extra"), vec![0xc0])]].concat();
    extra_swapped.swap(0, 1);
    let positional_short = {
        // An array of the first ten field values: one short of the eleven fields.
        let mut out = vec![0x9a];
        for (_, v) in &req[..10] {
            out.extend_from_slice(v);
        }
        out
    };
    let mut truncated = body.clone();
    truncated.pop();

    let mut cases = vec![
        r(
            "the ping request body, last byte cut off",
            truncated,
            "malformed",
        ),
        r(
            "the format byte c1 (never used) as the value of `token`",
            map(&with(&req, "token", vec![0xc1])),
            "malformed",
        ),
        r(
            "one byte c0 after the body",
            [body.clone(), vec![0xc0]].concat(),
            "trailing_bytes",
        ),
        r(
            "an unknown field \"extra\" and one byte after the body: trailing bytes rank first",
            trailing_extra,
            "trailing_bytes",
        ),
        r(
            "`version` as int8 (d0 01): a signed format gearmq never writes",
            map(&with(&req, "version", vec![0xd0, 0x01])),
            "malformed",
        ),
        r(
            "`version` as the negative fixint -1 (ff)",
            map(&with(&req, "version", vec![0xff])),
            "malformed",
        ),
        r(
            "`version` as float64 1.0",
            map(&with(&req, "version", enc(&1.0f64))),
            "malformed",
        ),
        r(
            "the key \"kind\" replaced by the integer 0 (not a string key)",
            map(&rekey(&req, "kind", vec![0x00])),
            "malformed",
        ),
        r(
            "the key \"kind\" written as bin, not str",
            map(&rekey(&req, "kind", bin(b"kind"))),
            "malformed",
        ),
        r(
            "`caller` as a str that is not UTF-8 (a3 6f 70 ff)",
            map(&with(&req, "caller", vec![0xa3, b'o', b'p', 0xff])),
            "malformed",
        ),
        r(
            "`token` twice, both nil",
            map(&[req.clone(), vec![(enc("token"), vec![0xc0])]].concat()),
            "malformed",
        ),
        r(
            "`version` as uint16 00 01 and an unknown field: a long header ranks before the fields",
            long_version_extra,
            "not_canonical",
        ),
        r(
            "the required field `action` missing",
            map(&without(&req, "action")),
            "malformed",
        ),
        r(
            "`version` as the string \"1\"",
            map(&with(&req, "version", enc("1"))),
            "malformed",
        ),
        r(
            "`version` 65536 (uint32): too large for a u16",
            map(&with(&req, "version", enc(&65_536u32))),
            "malformed",
        ),
        r(
            "`caller` as bin holding \"ops\" (a str field)",
            map(&with(&req, "caller", bin(b"ops"))),
            "malformed",
        ),
        r(
            "`args` as the str \"x\" (a bin field)",
            map(&with(&req, "args", enc("x"))),
            "malformed",
        ),
        r(
            "`args` as an array of one integer 128 (a bin field)",
            map(&with(&req, "args", vec![0x91, 0xcc, 0x80])),
            "malformed",
        ),
        r(
            "`id` as its 36-character text form (a bin field)",
            map(&with(&req, "id", enc(&ping_request().id.to_string()))),
            "malformed",
        ),
        r(
            "`id` as a bin of 15 bytes",
            map(&with(&req, "id", bin(&[1; 15]))),
            "malformed",
        ),
        r(
            "`targets` as {\"all\": nil} instead of the bare string \"all\"",
            map(&with(&req, "targets", map(&[(enc("all"), vec![0xc0])]))),
            "malformed",
        ),
        r(
            "`targets` as {\"everyone\": nil}: no such variant",
            map(&with(
                &req,
                "targets",
                map(&[(enc("everyone"), vec![0xc0])]),
            )),
            "malformed",
        ),
        r(
            "`caller` \"Ops\": breaks the name rule (a type rule)",
            map(&with(&req, "caller", enc("Ops"))),
            "malformed",
        ),
        r(
            "an unknown field \"extra\" and fields out of order: the fields rank before the layout",
            map(&extra_swapped),
            "malformed",
        ),
        r(
            "an array of ten values for the eleven fields",
            positional_short,
            "malformed",
        ),
        r(
            "fields `id` and `caller` swapped",
            map(&swapped),
            "not_canonical",
        ),
        r(
            "`token` left out and `kind`, `version` swapped",
            {
                let mut e = without(&req, "token");
                e.swap(0, 1);
                map(&e)
            },
            "not_canonical",
        ),
        r(
            "`kind` \"reply\"",
            map(&with(&req, "kind", enc("reply"))),
            "wrong_kind",
        ),
        r(
            "`version` 2",
            map(&with(&req, "version", enc(&2u16))),
            "unsupported_version",
        ),
        r(
            "`kind` \"reply\" and `version` 2: kind ranks first",
            map(&with(
                &with(&req, "kind", enc("reply")),
                "version",
                enc(&2u16),
            )),
            "wrong_kind",
        ),
        r(
            "`caller` \"Ops\" and `kind` \"reply\": type rules rank before the kind",
            map(&with(
                &with(&req, "caller", enc("Ops")),
                "kind",
                enc("reply"),
            )),
            "malformed",
        ),
        r(
            "`expires_at` before `issued_at` (a body rule)",
            map(&with(&req, "expires_at", enc(&1u64))),
            "malformed",
        ),
        r(
            "`expires_at` before `issued_at` and `version` 2: the version ranks before body rules",
            map(&with(
                &with(&req, "expires_at", enc(&1u64)),
                "version",
                enc(&2u16),
            )),
            "unsupported_version",
        ),
        r(
            "`targets` {\"hosts\": []}: no host (a body rule)",
            map(&with(&req, "targets", map(&[(enc("hosts"), vec![0x90])]))),
            "malformed",
        ),
        Case {
            what: "the ping request body against a limit of 100 bytes",
            ty: "request",
            limit: 100,
            bytes: body.clone(),
            label: "too_large",
        },
    ];

    // Credentials: string-keyed maps.
    let cred = codec::encode(&host_credential());
    let labels_at = find(&cred, &[&enc("labels")[..], &[0x82]].concat()) + enc("labels").len();
    let role = [enc("role"), enc("web")].concat();
    let zone = [enc("zone"), enc("eu-1")].concat();
    assert_eq!(&cred[labels_at + 1..][..role.len()], &role[..]);
    let labels_end = labels_at + 1 + role.len() + zone.len();
    let splice = |labels: Vec<u8>| [&cred[..labels_at], &labels[..], &cred[labels_end..]].concat();
    cases.push(Case {
        what: "host credential with its labels in the order zone, role (keys not ascending)",
        ty: "credential",
        limit: MAX,
        bytes: splice([&[0x82][..], &zone, &role].concat()),
        label: "not_canonical",
    });
    cases.push(Case {
        what: "host credential with the label key role twice",
        ty: "credential",
        limit: MAX,
        bytes: splice([&[0x82][..], &role, &role].concat()),
        label: "malformed",
    });

    // Replies: a status outside the table.
    let reply = ping_reply(&body);
    let reply_bytes = codec::encode(&reply);
    let status_entry = [enc("status"), vec![0x00]].concat();
    let at = find(&reply_bytes, &status_entry) + enc("status").len();
    let mut status_12 = reply_bytes.clone();
    status_12[at] = 12;
    cases.push(Case {
        what: "ping reply with status 12 (no such status: a type rule)",
        ty: "reply",
        limit: MAX,
        bytes: status_12,
        label: "malformed",
    });

    // Rules that could be read either way, settled (PROTOCOL.md, "Settled details").
    let request = |f: &dyn Fn(&mut Request)| {
        let mut r = ping_request();
        f(&mut r);
        codec::encode(&r)
    };
    let credential = |f: &dyn Fn(&mut Credential)| {
        let mut c = host_credential();
        f(&mut c);
        codec::encode(&c)
    };
    let reply_with = |f: &dyn Fn(&mut Reply)| {
        let mut r = ping_reply(&body);
        f(&mut r);
        codec::encode(&r)
    };
    let name = |s: &str| gearmq_schemas::Name::new(s).unwrap();
    let action = |s: &str| gearmq_schemas::ActionName::new(s).unwrap();
    for (what, ty, bytes, label) in [
        (
            "request `id` of 16 zero bytes (no UUID version or variant): ids are not checked",
            "request",
            request(&|r| r.id = uuid::Uuid::nil()),
            "ok",
        ),
        (
            "request `id` a UUIDv4",
            "request",
            request(&|r| r.id = uuid::Uuid::from_u128(0x1b4e28ba_2fa1_41d2_883f_0016d3cca427)),
            "ok",
        ),
        (
            "`targets` {\"hosts\": [\"web1\", \"web1\"]}: a host twice",
            "request",
            request(&|r| r.targets = Targets::Hosts(vec![name("web1"), name("web1")])),
            "malformed",
        ),
        (
            "`targets` {\"hosts\": [\"web2\", \"web1\"]}: not ascending",
            "request",
            request(&|r| r.targets = Targets::Hosts(vec![name("web2"), name("web1")])),
            "malformed",
        ),
        (
            "host credential with `actions` [ping, ping]: an action may repeat",
            "credential",
            credential(&|c| c.actions = vec![action("ping"), action("ping")]),
            "ok",
        ),
        (
            "host credential with 65 `actions`, all ping: the limit counts entries",
            "credential",
            credential(&|c| c.actions = vec![action("ping"); 65]),
            "malformed",
        ),
        (
            "host credential with `may_delegate` true (decodes; means nothing for a host)",
            "credential",
            credential(&|c| c.may_delegate = true),
            "ok",
        ),
        (
            "host credential re-made as an operator that keeps the sealing key (decodes; means nothing)",
            "credential",
            credential(&|c| c.role = gearmq_schemas::Role::Operator),
            "ok",
        ),
        (
            "reply with status 5 `unknown_error`, `data` present and `error` nil: presence is no decode rule",
            "reply",
            reply_with(&|r| r.status = gearmq_schemas::Status::UnknownError),
            "ok",
        ),
        (
            "reply with status 0 `ok` and an `error` as well",
            "reply",
            reply_with(&|r| r.error = Some("also this".into())),
            "ok",
        ),
    ] {
        cases.push(Case {
            what,
            ty,
            limit: MAX,
            bytes,
            label,
        });
    }

    // Ping arguments: an empty struct.
    for (what, bytes, label) in [
        (
            "ping arguments as an empty array (a struct as an array)",
            vec![0x90],
            "not_canonical",
        ),
        (
            "ping arguments as an empty bin",
            vec![0xc4, 0x00],
            "malformed",
        ),
        ("ping arguments as nil", vec![0xc0], "malformed"),
        (
            "ping arguments as {\"x\": nil}",
            map(&[(enc("x"), vec![0xc0])]),
            "malformed",
        ),
    ] {
        cases.push(Case {
            what,
            ty: "ping_args",
            limit: MAX_ARGS_BYTES,
            bytes,
            label,
        });
    }
    cases
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// The label decoding `bytes` as `ty` gives, or `ok`.
fn label(ty: &str, bytes: &[u8], limit: usize) -> String {
    let e = match ty {
        "request" => decode_body::<Request>(bytes, limit).err(),
        "reply" => decode_body::<Reply>(bytes, limit).err(),
        "credential" => decode_body::<Credential>(bytes, limit).err(),
        "ping_args" => codec::decode::<PingArgs>("ping args", bytes, limit).err(),
        other => panic!("unknown type {other}"),
    };
    e.map_or_else(|| "ok".into(), |e| e.label().to_string())
}

fn listing() -> Value {
    let cases: Vec<Value> = cases()
        .into_iter()
        .map(|c| {
            json!({
                "what": c.what,
                "type": c.ty,
                "limit": c.limit,
                "hex": hex::encode(&c.bytes),
                "label": c.label,
            })
        })
        .collect();
    json!({
        "about": "Bodies, each with the label its decoding gives, or ok for one that decodes (schemas/PROTOCOL.md, Decoding and its labels, and Settled details). type: request, reply or credential = the body of that kind (decoded, then kind, version and the body rules); ping_args = the arguments of ping. limit: the size limit to decode with. Built by schemas/tests/vectors/decode.rs.",
        "cases": cases,
    })
}

#[test]
fn decode_vectors_are_refused_with_their_labels() {
    let listing = listing();
    check_json("decode.json", &listing);
    for case in listing["cases"].as_array().unwrap() {
        let what = case["what"].as_str().unwrap();
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let limit = case["limit"].as_u64().unwrap() as usize;
        assert_eq!(
            label(case["type"].as_str().unwrap(), &bytes, limit),
            case["label"].as_str().unwrap(),
            "{what}"
        );
    }
}

#[test]
fn the_bodies_the_cases_start_from_decode() {
    let body = codec::encode(&ping_request());
    assert_eq!(label("request", &body, MAX), "ok");
    assert_eq!(
        label("credential", &codec::encode(&host_credential()), MAX),
        "ok"
    );
    assert_eq!(
        label("reply", &codec::encode(&ping_reply(&body)), MAX),
        "ok"
    );
    assert_eq!(label("ping_args", &[0x80], MAX_ARGS_BYTES), "ok");
}
