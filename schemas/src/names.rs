//! Validated names. A name ends up in queue names, broker regexes, file names and unit
//! names, so it is checked once at the edge and carried as a type after that.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a name was refused; the message states the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A host or operator name broke `[a-z0-9][a-z0-9-]{0,62}`.
    #[error(
        "invalid name {0:?}: a name is 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    Name(String),
    /// An action name broke `[a-z][a-z0-9_]{0,31}`.
    #[error(
        "invalid action {0:?}: an action is 1 to 32 characters of a-z, 0-9 and '_', starting with a letter"
    )]
    Action(String),
    /// A label key or value broke its rule.
    #[error(
        "invalid label {0:?}: keys are 1 to 63 characters of a-z, 0-9, '_', '.', '-' starting with a letter or digit; values are at most 128 printable characters"
    )]
    Label(String),
    /// A label given as text (a command line's `--label`) is not `KEY=VALUE`.
    #[error("label {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
}

/// A host, operator or issuer name: `[a-z0-9][a-z0-9-]{0,62}`.
///
/// No dots (names end up inside broker regexes and queue names), never a path, never
/// empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Checks `s` against the name rule.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if is_valid_name(&s) {
            Ok(Name(s))
        } else {
            Err(NameError::Name(s))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Name::new(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Name::new(s)
    }
}

/// An action name: `[a-z][a-z0-9_]{0,31}` (`ping`, `install`, …).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ActionName(String);

impl ActionName {
    /// Checks `s` against the action rule.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 32
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        if ok {
            Ok(ActionName(s))
        } else {
            Err(NameError::Action(s))
        }
    }

    /// The action as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ActionName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        ActionName::new(s)
    }
}

impl From<ActionName> for String {
    fn from(n: ActionName) -> String {
        n.0
    }
}

impl fmt::Display for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a label key: `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn check_label_key(k: &str) -> Result<(), NameError> {
    let b = k.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::Label(k.to_string()))
    }
}

/// Checks a label value: at most 128 characters, none of them a control character.
pub fn check_label_value(v: &str) -> Result<(), NameError> {
    if v.chars().count() <= 128 && !v.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(NameError::Label(v.to_string()))
    }
}

/// Parses labels written `KEY=VALUE` (a command line's repeated `--label`), checking
/// both halves; a later key replaces an earlier one.
pub fn parse_labels<S: AsRef<str>>(
    labels: &[S],
) -> Result<std::collections::BTreeMap<String, String>, NameError> {
    let mut out = std::collections::BTreeMap::new();
    for l in labels {
        let l = l.as_ref();
        let Some((k, v)) = l.split_once('=') else {
            return Err(NameError::NotKeyValue(l.to_string()));
        };
        check_label_key(k)?;
        check_label_value(v)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Whether `s` is lower-case hexadecimal (`[0-9a-f]`, possibly empty): the one spelling
/// gearmq writes and accepts for keys, digests and fingerprints.
pub fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_as_key_value_with_both_halves_checked() {
        let l = parse_labels(&["role=web", "dc=x=y", "role=db"]).unwrap();
        assert_eq!(l.get("role").map(String::as_str), Some("db"));
        assert_eq!(l.get("dc").map(String::as_str), Some("x=y"));
        assert!(matches!(
            parse_labels(&["role"]),
            Err(NameError::NotKeyValue(_))
        ));
        assert!(matches!(
            parse_labels(&["Role=web"]),
            Err(NameError::Label(_))
        ));
        assert!(matches!(
            parse_labels(&["k=a\nb"]),
            Err(NameError::Label(_))
        ));
        assert!(parse_labels::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn lower_hex_is_digits_and_a_to_f_only() {
        assert!(is_lower_hex("0123456789abcdef"));
        assert!(is_lower_hex(""));
        for bad in ["ABCDEF", "0x12", "g", " 00"] {
            assert!(!is_lower_hex(bad), "{bad}");
        }
    }

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "web1", "0", "a-b-c", &"x".repeat(63)] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a.b",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(64),
            "a\n",
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn name_error_states_the_rule() {
        let e = Name::new("Web.1").unwrap_err().to_string();
        assert!(e.contains("a-z, 0-9 and '-'"), "{e}");
    }

    #[test]
    fn actions_follow_the_rule() {
        assert!(ActionName::new("ping").is_ok());
        assert!(ActionName::new("audit_push").is_ok());
        for bad in ["", "Ping", "1x", "a-b", &"x".repeat(33)] {
            assert!(ActionName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_follow_the_rule() {
        assert!(check_label_key("role").is_ok());
        assert!(check_label_key("k8s.zone-1").is_ok());
        assert!(check_label_key("Role").is_err());
        assert!(check_label_value("web").is_ok());
        assert!(check_label_value("a\u{7}").is_err());
        assert!(check_label_value(&"v".repeat(129)).is_err());
    }
}
