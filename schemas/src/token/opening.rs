//! Opening: reading a sealed token's header ([`peek`]), then, on the audience host,
//! decrypting it and proving who signed the claims ([`open`]).

use super::{
    HPKE_INFO, MAX_TOKEN_BYTES, Minted, MinterKind, SEALED_KIND, SUITE, SealAead, SealKdf, SealKem,
    SealedToken, SealingKey, Token, TokenError, TokenHeader,
};
use crate::codec;
use crate::credential::Credential;
use crate::envelope::{self, IssuerSigned, IssuerSignedError, OpenError};
use crate::keys::PublicKey;
use crate::names::Name;
use crate::trust::CredentialVerifier;
use hpke::{Deserializable, OpModeR};
use std::sync::Arc;

/// Who minted an opened token.
#[derive(Debug, Clone)]
pub enum MintedBy {
    /// A trusted issuer key.
    Issuer(PublicKey),
    /// An operator with `may_delegate` (credential verified against the trust anchors;
    /// its window and revocation are the caller's checks).
    Operator(Arc<Credential>),
}

impl MintedBy {
    /// A name for logs: the operator's name, or `issuer:<hex prefix>`.
    pub fn describe(&self) -> String {
        match self {
            MintedBy::Issuer(k) => format!("issuer:{}", &k.to_hex()[..16]),
            MintedBy::Operator(c) => c.name.to_string(),
        }
    }
}

/// A token opened and its signature proven; not yet judged for a request.
#[derive(Debug, Clone)]
pub struct Unsealed {
    /// The claims.
    pub claims: Token,
    /// Who signed them.
    pub minted_by: MintedBy,
}

/// Decodes a sealed token's outer layer and header only (no key needed): what a
/// carrier or an auditor can see.
pub fn peek(bytes: &[u8]) -> Result<(SealedToken, TokenHeader), TokenError> {
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge {
            size: bytes.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    let sealed: SealedToken = codec::decode("sealed token", bytes, MAX_TOKEN_BYTES)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let header: TokenHeader = codec::decode("token header", &sealed.header, MAX_TOKEN_BYTES)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    if header.kind != SEALED_KIND {
        return Err(TokenError::Malformed(format!(
            "header kind is {:?}, expected {SEALED_KIND:?}",
            header.kind
        )));
    }
    if header.version != crate::VERSION {
        return Err(TokenError::Malformed(format!(
            "header version {} is not supported (this build speaks {})",
            header.version,
            crate::VERSION
        )));
    }
    if header.suite != SUITE {
        return Err(TokenError::Malformed(format!(
            "unsupported suite {:?}",
            header.suite
        )));
    }
    Ok((sealed, header))
}

/// Opens a token presented to host `host` holding `key`: size, outer decoding,
/// audience and recipient, HPKE open, signature (issuer or `may_delegate` operator,
/// chained to `verifier`'s trust anchors), claims decoding, and that the claims
/// agree with the header and the signer.
pub fn open(
    bytes: &[u8],
    host: &Name,
    key: &SealingKey,
    verifier: &CredentialVerifier,
) -> Result<Unsealed, TokenError> {
    let (sealed, header) = peek(bytes)?;
    if &header.audience != host {
        return Err(TokenError::WrongAudience {
            audience: header.audience,
            host: host.clone(),
        });
    }
    if header.recipient.as_slice() != key.public {
        return Err(TokenError::WrongRecipient {
            got: hex::encode(header.recipient.as_slice()),
            have: hex::encode(key.public),
        });
    }
    let enc = <SealKem as hpke::Kem>::EncappedKey::from_bytes(sealed.enc.as_slice())
        .map_err(|_| TokenError::CannotOpen)?;
    let plaintext = hpke::single_shot_open::<SealAead, SealKdf, SealKem>(
        &OpModeR::Base,
        &key.private,
        &enc,
        HPKE_INFO,
        &sealed.ciphertext,
        &sealed.header,
    )
    .map_err(|_| TokenError::CannotOpen)?;
    let minted: Minted = codec::decode("minted token", &plaintext, MAX_TOKEN_BYTES)
        .map_err(|e| TokenError::MalformedClaims(e.to_string()))?;
    let (claims, minted_by, signer_key) = match minted.by {
        MinterKind::Issuer => {
            let claims = IssuerSigned::open::<Token>(
                &minted.signed,
                MAX_TOKEN_BYTES,
                verifier.anchors().issuers(),
            )
            .map_err(|e| match e {
                IssuerSignedError::Envelope(d) | IssuerSignedError::Body(d) => {
                    TokenError::MalformedClaims(d.to_string())
                }
                IssuerSignedError::UntrustedIssuer(k) => TokenError::UntrustedIssuer(k.to_hex()),
                IssuerSignedError::BadSignature => TokenError::BadSignature,
            })?;
            // The issuer key is inside the envelope just checked; read it back.
            let env: IssuerSigned =
                codec::decode("issuer-signed envelope", &minted.signed, MAX_TOKEN_BYTES)
                    .map_err(|e| TokenError::MalformedClaims(e.to_string()))?;
            (claims, MintedBy::Issuer(env.issuer), env.issuer)
        }
        MinterKind::Operator => {
            let opened = envelope::open::<Token>(&minted.signed, MAX_TOKEN_BYTES, verifier)
                .map_err(|e| match e {
                    OpenError::Envelope(d) | OpenError::Body(d) => {
                        TokenError::MalformedClaims(d.to_string())
                    }
                    OpenError::Credential(c) => TokenError::MinterCredential(c.to_string()),
                    OpenError::BadSignature { .. } => TokenError::BadSignature,
                })?;
            let cred = opened.signer().clone();
            if cred.role != crate::Role::Operator || !cred.may_delegate {
                return Err(TokenError::NotDelegator {
                    minter: cred.name.clone(),
                });
            }
            let key = cred.public_key;
            (opened.body().clone(), MintedBy::Operator(cred), key)
        }
    };
    if claims.issuer != signer_key {
        return Err(TokenError::IssuerMismatch {
            claimed: claims.issuer.to_hex(),
            signed: signer_key.to_hex(),
        });
    }
    if claims.audience != header.audience {
        return Err(TokenError::WrongAudience {
            audience: claims.audience,
            host: host.clone(),
        });
    }
    Ok(Unsealed { claims, minted_by })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ActionName;
    use crate::token::test_world::{claims, presented, world};
    use crate::token::{Minter, seal};

    #[test]
    fn issuer_token_opens() {
        let w = world(false, &[]);
        let c = claims(w.issuer.public_key(), &["restart"]);
        let bytes = seal(&c, Minter::Issuer(&w.issuer), &w.b_seal.public()).unwrap();
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        assert!(matches!(u.minted_by, MintedBy::Issuer(_)));
    }

    #[test]
    fn every_flipped_byte_is_refused_without_panic() {
        let w = world(true, &["status"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let b = Name::new("b").unwrap();
        for i in 0..bytes.len() {
            let mut x = bytes.clone();
            x[i] ^= 0x01;
            assert!(open(&x, &b, &w.b_seal, &w.verifier).is_err(), "byte {i}");
        }
    }

    #[test]
    fn refusals_have_their_own_reasons() {
        let b = Name::new("b").unwrap();
        // Minter without may_delegate.
        let w = world(false, &["status"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let e = open(&bytes, &b, &w.b_seal, &w.verifier).unwrap_err();
        assert_eq!(e.reason(), "token_not_delegator");
        // Wider than the minter.
        let w = world(true, &["status"]);
        let c = claims(w.op.public_key(), &["status", "stop"]);
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &b, &w.b_seal, &w.verifier).unwrap();
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        assert_eq!(
            u.check(&presented(&a, &status)).unwrap_err().reason(),
            "token_wider_than_minter"
        );
        // Another audience, another key, random bytes.
        let d = Name::new("d").unwrap();
        assert_eq!(
            open(&bytes, &d, &w.b_seal, &w.verifier)
                .unwrap_err()
                .reason(),
            "token_wrong_audience"
        );
        let other = SealingKey::derive(&[9; 32]);
        assert_eq!(
            open(&bytes, &b, &other, &w.verifier).unwrap_err().reason(),
            "token_wrong_recipient"
        );
        assert_eq!(
            open(&[0xde, 0xad], &b, &w.b_seal, &w.verifier)
                .unwrap_err()
                .reason(),
            "token_malformed"
        );
        assert_eq!(
            open(&vec![0; MAX_TOKEN_BYTES + 1], &b, &w.b_seal, &w.verifier)
                .unwrap_err()
                .reason(),
            "token_oversize"
        );
    }
}
