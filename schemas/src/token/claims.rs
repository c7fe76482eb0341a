//! The claims layer: what a token allows, whom it is for, and when, with the rules
//! every decoded [`Token`] must meet.

use super::{MAX_TOKEN_ACTIONS, MAX_TOKEN_UNITS, MAX_TOKEN_USES};
use crate::envelope::{Body, Context};
use crate::keys::PublicKey;
use crate::names::{ActionName, Name};
use crate::time::Millis;
use crate::units::UnitName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The claims of a delegation token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Always `"token"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// Unique per token; the receiver counts uses under it.
    pub id: Uuid,
    /// The public key that signed these claims (a trusted issuer, or the minting
    /// operator's own key).
    pub issuer: PublicKey,
    /// The host that may present it: the request's signer must be this host.
    pub subject: Name,
    /// The host that accepts it.
    pub audience: Name,
    /// The actions it allows (at least one).
    pub actions: Vec<ActionName>,
    /// The units it allows; empty means any unit. When set, the request must name one.
    pub units: Vec<String>,
    /// Valid from (ms since epoch).
    pub not_before: Millis,
    /// Valid until (ms since epoch).
    pub not_after: Millis,
    /// How many requests it allows.
    pub uses: u32,
}

impl Body for Token {
    const CONTEXT: Context = Context::Token;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if self.actions.is_empty() {
            return Err("names no action".into());
        }
        if self.actions.len() > MAX_TOKEN_ACTIONS {
            return Err(format!("names more than {MAX_TOKEN_ACTIONS} actions"));
        }
        for (i, a) in self.actions.iter().enumerate() {
            if self.actions[..i].contains(a) {
                return Err(format!("names action {a} twice"));
            }
        }
        if self.units.len() > MAX_TOKEN_UNITS {
            return Err(format!("names more than {MAX_TOKEN_UNITS} units"));
        }
        for (i, u) in self.units.iter().enumerate() {
            UnitName::parse(u).map_err(|e| format!("unit scope: {e}"))?;
            if self.units[..i].contains(u) {
                return Err(format!("names unit {u} twice"));
            }
        }
        if self.not_after <= self.not_before {
            return Err("not_after is not after not_before".into());
        }
        if self.uses == 0 || self.uses > MAX_TOKEN_USES {
            return Err(format!("uses must be 1 to {MAX_TOKEN_USES}"));
        }
        if self.subject == self.audience {
            return Err("subject and audience are the same host".into());
        }
        Ok(())
    }
}

impl Token {
    /// New claims with protocol fields filled in and a fresh UUIDv7 id.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuer: PublicKey,
        subject: Name,
        audience: Name,
        actions: Vec<ActionName>,
        units: Vec<String>,
        not_before: Millis,
        not_after: Millis,
        uses: u32,
    ) -> Self {
        Token {
            kind: Context::Token.kind().to_string(),
            version: crate::VERSION,
            id: Uuid::now_v7(),
            issuer,
            subject,
            audience,
            actions,
            units,
            not_before,
            not_after,
            uses,
        }
    }

    /// Whether the token allows `action`.
    pub fn allows_action(&self, action: &ActionName) -> bool {
        self.actions.iter().any(|a| a == action)
    }
}
