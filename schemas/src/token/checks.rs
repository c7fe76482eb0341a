//! Judging an opened token for one request: the minter's rights and window, subject,
//! action, unit scope, validity window and the receiver's TTL cap.

use super::{MintedBy, Token, TokenError, Unsealed};
use crate::names::{ActionName, Name};
use crate::time::Millis;

/// Checks that `claims` grant nothing beyond `minter`'s own rights (an operator
/// credential's actions; an issuer may grant any action).
pub fn check_minter_rights(claims: &Token, minter: &MintedBy) -> Result<(), TokenError> {
    if let MintedBy::Operator(cred) = minter
        && let Some(a) = claims.actions.iter().find(|a| !cred.allows(a))
    {
        return Err(TokenError::WiderThanMinter {
            minter: cred.name.clone(),
            action: a.clone(),
        });
    }
    Ok(())
}

/// What a request asks, as the token checks need it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The request signer's name (must be the subject).
    pub signer: &'a Name,
    /// The action asked.
    pub action: &'a ActionName,
    /// The unit the request names, if any.
    pub unit: Option<&'a str>,
    /// The time of the check.
    pub now: Millis,
    /// Clock skew allowed on the window.
    pub skew_ms: Millis,
    /// The receiver's cap on `not_after - not_before`.
    pub max_ttl_ms: Millis,
}

impl Unsealed {
    /// Judges the token for one request: minter rights and window, subject, action,
    /// unit scope, validity window with skew, and the receiver's TTL cap. Uses and the
    /// minter's revocation are the receiver's checks.
    pub fn check(&self, p: &Presented<'_>) -> Result<(), TokenError> {
        let c = &self.claims;
        check_minter_rights(c, &self.minted_by)?;
        if let MintedBy::Operator(cred) = &self.minted_by {
            cred.check_window(p.now, p.skew_ms)
                .map_err(|e| TokenError::MinterNotValid {
                    minter: cred.name.clone(),
                    reason: e.to_string(),
                })?;
        }
        if &c.subject != p.signer {
            return Err(TokenError::WrongSubject {
                subject: c.subject.clone(),
                signer: p.signer.clone(),
            });
        }
        if !c.allows_action(p.action) {
            return Err(TokenError::ActionNotAllowed {
                action: p.action.clone(),
                allowed: join(c.actions.iter().map(ActionName::as_str)),
            });
        }
        if !c.units.is_empty() && !p.unit.is_some_and(|u| c.units.iter().any(|x| x == u)) {
            return Err(TokenError::UnitNotAllowed {
                asked: p
                    .unit
                    .map_or_else(|| "no unit".to_string(), |u| format!("unit {u}")),
                allowed: join(c.units.iter().map(String::as_str)),
            });
        }
        let ttl = c.not_after.saturating_sub(c.not_before);
        if ttl > p.max_ttl_ms {
            return Err(TokenError::TtlTooLong {
                ttl_ms: ttl,
                max_ms: p.max_ttl_ms,
            });
        }
        if p.now.saturating_add(p.skew_ms) < c.not_before {
            return Err(TokenError::NotYetValid {
                not_before: c.not_before,
                now: p.now,
                skew_ms: p.skew_ms,
            });
        }
        if p.now.saturating_sub(p.skew_ms) > c.not_after {
            return Err(TokenError::Expired {
                not_after: c.not_after,
                now: p.now,
                skew_ms: p.skew_ms,
            });
        }
        Ok(())
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::open;
    use crate::token::test_world::{T, claims, presented, world};

    #[test]
    fn operator_token_round_trips_and_checks() {
        let w = world(true, &["status", "logs"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        assert_eq!(u.claims, c);
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        u.check(&presented(&a, &status)).unwrap();
        let stop = ActionName::new("stop").unwrap();
        assert_eq!(
            u.check(&presented(&a, &stop)).unwrap_err().reason(),
            "token_action_not_allowed"
        );
        let cc = Name::new("c").unwrap();
        assert_eq!(
            u.check(&presented(&cc, &status)).unwrap_err().reason(),
            "token_wrong_subject"
        );
    }

    #[test]
    fn window_and_ttl_edges() {
        let w = world(true, &["status"]);
        let c = claims(w.op.public_key(), &["status"]);
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        let at = |now| Presented {
            now,
            ..presented(&a, &status)
        };
        assert!(u.check(&at(T - 30_000)).is_ok());
        assert_eq!(
            u.check(&at(T - 30_001)).unwrap_err().reason(),
            "token_not_yet_valid"
        );
        assert!(u.check(&at(T + 330_000)).is_ok());
        assert_eq!(
            u.check(&at(T + 330_001)).unwrap_err().reason(),
            "token_expired"
        );
        let capped = Presented {
            max_ttl_ms: 299_999,
            ..presented(&a, &status)
        };
        assert_eq!(u.check(&capped).unwrap_err().reason(), "token_ttl_too_long");
    }

    #[test]
    fn unit_scope_requires_a_named_unit_in_scope() {
        let w = world(true, &["status"]);
        let mut c = claims(w.op.public_key(), &["status"]);
        c.units = vec!["web".into()];
        let bytes = w.seal_by_op(&c);
        let u = open(&bytes, &Name::new("b").unwrap(), &w.b_seal, &w.verifier).unwrap();
        let a = Name::new("a").unwrap();
        let status = ActionName::new("status").unwrap();
        assert!(u.check(&presented(&a, &status)).is_ok());
        let none = Presented {
            unit: None,
            ..presented(&a, &status)
        };
        assert_eq!(
            u.check(&none).unwrap_err().reason(),
            "token_unit_not_allowed"
        );
        let db = Presented {
            unit: Some("db"),
            ..presented(&a, &status)
        };
        assert_eq!(u.check(&db).unwrap_err().reason(), "token_unit_not_allowed");
    }
}
