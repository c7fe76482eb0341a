//! MessagePack encoding with named fields, and strict, bounded decoding.
//!
//! Strict means: the input is at most the given size, decodes into the expected type
//! with no bytes left over, and re-encodes to exactly the same bytes (canonical form).
//! So there is one encoding per value: no positional structs, no duplicate or reordered
//! keys, no over-long integers.
//!
//! Which refusal a bad input gets follows the order PROTOCOL.md ("Decoding and its
//! labels") states, so that another implementation gives the same label: the
//! type-free checks of [`form`] first, then the typed reading, then the comparison with
//! the canonical encoding.

mod form;

use serde::{Serialize, de::DeserializeOwned};

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes than the limit allows; nothing was decoded.
    #[error("{what} is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not valid MessagePack for the type.
    #[error("{what} does not decode: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// Bytes were left after the value.
    #[error("{what} has {extra} trailing bytes")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// The value decoded but is not in canonical form.
    #[error("{what} is not canonically encoded")]
    NotCanonical {
        /// What was being decoded.
        what: &'static str,
    },
    /// The body's `kind` is not the one expected here.
    #[error("expected a {expected} body, got kind {got:?}")]
    WrongKind {
        /// The kind expected.
        expected: &'static str,
        /// The kind found.
        got: String,
    },
    /// The body's `version` is not one this build speaks.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version found.
        got: u16,
        /// The version supported.
        supported: u16,
    },
}

impl DecodeError {
    /// The protocol's label for this refusal (`too_large`, `malformed`,
    /// `trailing_bytes`, `not_canonical`, `wrong_kind`, `unsupported_version`).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::NotCanonical { .. } => "not_canonical",
            DecodeError::WrongKind { .. } => "wrong_kind",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
        }
    }
}

/// Encodes `value` as MessagePack with named fields (maps keyed by field name).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for our types: every field is a plain value
    // (strings, integers, bytes, maps with string keys), none has a failing Serialize.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Decodes `bytes` as a `T`, strictly, refusing in the protocol's order: size; not
/// one complete value; trailing bytes; a format gearmq never writes, a key that is not
/// a string or appears twice; a header longer than needed; a value that does not read as
/// a `T` (missing or unknown field, wrong type, a type rule such as the name rule); and
/// last, bytes that are not the canonical encoding of the value read.
pub fn decode<T: Serialize + DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            size: bytes.len(),
            max,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed { what, reason };
    form::check(bytes).map_err(|issue| match issue {
        form::Issue::Incomplete(reason) | form::Issue::Malformed(reason) => malformed(reason),
        form::Issue::Trailing(extra) => DecodeError::TrailingBytes { what, extra },
        form::Issue::NotShortest => DecodeError::NotCanonical { what },
    })?;
    let mut rd = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rd);
    let value = T::deserialize(&mut de).map_err(|e| malformed(e.to_string()))?;
    if !rd.is_empty() {
        // The walk above found one whole value, so the reader stopped inside it.
        return Err(malformed(format!(
            "the value does not read as a {what} ({} bytes not read)",
            rd.len()
        )));
    }
    let canonical = encode(&value);
    if canonical != bytes {
        if !form::layout_only(bytes, &canonical) {
            return Err(malformed(
                "a value has another type than the field it is in".into(),
            ));
        }
        return Err(DecodeError::NotCanonical { what });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trips() {
        let t = T {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode(&t);
        assert_eq!(decode::<T>("t", &bytes, 100).unwrap(), t);
    }

    #[test]
    fn refuses_oversize_before_decoding() {
        let bytes = vec![0u8; 101];
        assert!(matches!(
            decode::<T>("t", &bytes, 100),
            Err(DecodeError::TooLarge { size: 101, .. })
        ));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&T {
            a: 1,
            b: "y".into(),
        });
        bytes.push(0xc0);
        assert!(matches!(
            decode::<T>("t", &bytes, 100),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn refuses_positional_encoding() {
        let bytes = rmp_serde::to_vec(&T {
            a: 1,
            b: "y".into(),
        })
        .unwrap();
        assert!(decode::<T>("t", &bytes, 100).is_err());
    }

    #[test]
    fn refuses_non_minimal_integers() {
        // {"a": u32 1 as 0xce 00000001, "b": ""}
        let mut bytes = vec![0x82, 0xa1, b'a', 0xce, 0, 0, 0, 1, 0xa1, b'b', 0xa0];
        assert!(matches!(
            decode::<T>("t", &bytes, 100),
            Err(DecodeError::NotCanonical { .. })
        ));
        bytes = vec![0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0xa0];
        assert!(decode::<T>("t", &bytes, 100).is_ok());
    }
}
