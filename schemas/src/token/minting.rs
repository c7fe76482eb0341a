//! Minting: signing claims as an issuer or a delegating operator, then sealing them
//! to the audience host's key with HPKE.

use super::sealing_key::to_array;
use super::{
    HPKE_INFO, MAX_TOKEN_BYTES, Minted, MinterKind, SEALED_KIND, SUITE, SealAead, SealKdf, SealKem,
    SealedToken, Token, TokenError, TokenHeader,
};
use crate::codec;
use crate::envelope::{Body, IssuerSigned, Signed};
use crate::keys::SigningKey;
use hpke::{Deserializable, OpModeS, Serializable};

/// How a token is signed at minting.
#[derive(Debug, Clone, Copy)]
pub enum Minter<'a> {
    /// Directly with a trusted issuer key.
    Issuer(&'a SigningKey),
    /// By an operator with `may_delegate`, carrying its encoded credential.
    Operator {
        /// The operator's key.
        key: &'a SigningKey,
        /// The operator's encoded credential (a `.cred` file's bytes).
        credential: &'a [u8],
    },
}

/// Signs `claims` as `minter` and seals them to `recipient` (the audience's sealing
/// public key). Checks that the claims decode back (so a minter cannot make a token
/// its receiver would refuse as malformed) but not the minter's rights: see
/// [`check_minter_rights`](super::check_minter_rights).
pub fn seal(
    claims: &Token,
    minter: Minter<'_>,
    recipient: &[u8; 32],
) -> Result<Vec<u8>, TokenError> {
    seal_inner(claims, minter, recipient, None)
}

/// [`seal`] with the HPKE ephemeral key drawn from `ephemeral_seed`: reproducible
/// bytes for the protocol's test vectors. Never for real tokens (a reused ephemeral
/// key makes two tokens' seals related).
#[doc(hidden)]
pub fn seal_for_vectors(
    claims: &Token,
    minter: Minter<'_>,
    recipient: &[u8; 32],
    ephemeral_seed: &[u8; 32],
) -> Result<Vec<u8>, TokenError> {
    seal_inner(claims, minter, recipient, Some(ephemeral_seed))
}

/// A deterministic byte stream: SHA-256(seed ‖ counter) blocks.
struct SeededRng {
    seed: [u8; 32],
    counter: u64,
}

impl hpke::rand_core::TryRng for SeededRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(32) {
            let mut input = self.seed.to_vec();
            input.extend_from_slice(&self.counter.to_be_bytes());
            self.counter += 1;
            let block = crate::sha256(&input);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

impl hpke::rand_core::TryCryptoRng for SeededRng {}

fn seal_inner(
    claims: &Token,
    minter: Minter<'_>,
    recipient: &[u8; 32],
    ephemeral_seed: Option<&[u8; 32]>,
) -> Result<Vec<u8>, TokenError> {
    claims.validate().map_err(TokenError::MalformedClaims)?;
    let minted = match minter {
        Minter::Issuer(key) => Minted {
            by: MinterKind::Issuer,
            signed: IssuerSigned::seal(claims, key),
        },
        Minter::Operator { key, credential } => Minted {
            by: MinterKind::Operator,
            signed: Signed::seal(claims, key, credential),
        },
    };
    let header = codec::encode(&TokenHeader {
        kind: SEALED_KIND.to_string(),
        version: crate::VERSION,
        suite: SUITE.to_string(),
        audience: claims.audience.clone(),
        recipient: serde_bytes::ByteArray::new(*recipient),
    });
    let pk = <SealKem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| TokenError::Seal("not an X25519 public key".into()))?;
    let plaintext = codec::encode(&minted);
    let sealed = match ephemeral_seed {
        None => hpke::single_shot_seal::<SealAead, SealKdf, SealKem>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &plaintext,
            &header,
        ),
        Some(seed) => hpke::single_shot_seal_with_rng::<SealAead, SealKdf, SealKem>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &plaintext,
            &header,
            &mut SeededRng {
                seed: *seed,
                counter: 0,
            },
        ),
    };
    let (enc, ciphertext) = sealed.map_err(|e| TokenError::Seal(e.to_string()))?;
    let sealed = SealedToken {
        header,
        enc: serde_bytes::ByteArray::new(to_array(&enc.to_bytes())),
        ciphertext,
    };
    let bytes = codec::encode(&sealed);
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge {
            size: bytes.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    Ok(bytes)
}
