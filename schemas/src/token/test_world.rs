//! A world for the token tests: an issuer, a delegating operator and host b's
//! sealing key, with claims and a request to judge them against.

use super::{Minter, Presented, SealingKey, Token, seal};
use crate::credential::{Credential, Role};
use crate::keys::{PublicKey, SigningKey};
use crate::names::{ActionName, Name};
use crate::time::Millis;
use crate::trust::{CredentialVerifier, TrustAnchors};

/// The time the claims start.
pub(super) const T: Millis = 1_795_608_000_000;

/// The keys and verifier of one test.
pub(super) struct World {
    pub(super) issuer: SigningKey,
    pub(super) op: SigningKey,
    pub(super) op_cred: Vec<u8>,
    pub(super) b_seal: SealingKey,
    pub(super) verifier: CredentialVerifier,
}

/// A world whose operator may delegate or not, with these actions.
pub(super) fn world(may_delegate: bool, op_actions: &[&str]) -> World {
    let issuer = SigningKey::from_seed(&[1; 32]);
    let op = SigningKey::from_seed(&[2; 32]);
    let mut c = Credential::new(
        7,
        Name::new("ops").unwrap(),
        Role::Operator,
        op.public_key(),
        T - 1000,
        T + 86_400_000,
    );
    c.may_delegate = may_delegate;
    c.actions = op_actions
        .iter()
        .map(|a| ActionName::new(*a).unwrap())
        .collect();
    let op_cred = c.issue(&issuer);
    World {
        verifier: CredentialVerifier::new(TrustAnchors::new(vec![issuer.public_key()]), 8),
        issuer,
        op,
        op_cred,
        b_seal: SealingKey::derive(&[3; 32]),
    }
}

impl World {
    /// `c` signed by the world's operator and sealed to b.
    pub(super) fn seal_by_op(&self, c: &Token) -> Vec<u8> {
        let m = Minter::Operator {
            key: &self.op,
            credential: &self.op_cred,
        };
        seal(c, m, &self.b_seal.public()).unwrap()
    }
}

/// Claims from a to b for `actions`, one use, five minutes from [`T`].
pub(super) fn claims(issuer: PublicKey, actions: &[&str]) -> Token {
    Token::new(
        issuer,
        Name::new("a").unwrap(),
        Name::new("b").unwrap(),
        actions
            .iter()
            .map(|a| ActionName::new(*a).unwrap())
            .collect(),
        vec![],
        T,
        T + 300_000,
        1,
    )
}

/// A request by `signer` for `action` on unit web, inside the window.
pub(super) fn presented<'a>(signer: &'a Name, action: &'a ActionName) -> Presented<'a> {
    Presented {
        signer,
        action,
        unit: Some("web"),
        now: T + 1000,
        skew_ms: 30_000,
        max_ttl_ms: 3_600_000,
    }
}
