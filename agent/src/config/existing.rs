//! `[[existing]]`: the host's own units (ones gearmq did not create) that gearmq may act
//! on, and with which actions. Nothing is open by default.
//!
//! ```toml
//! [[existing]]
//! units = ["nginx.service", "postgresql@*.service"]
//! actions = ["status", "restart", "reload", "logs"]
//! ```
//!
//! A unit is addressed by its full systemd name; `*` in a pattern stands for any run
//! of the characters a unit name may hold. gearmq never installs, rewrites, enables,
//! disables or deletes such a unit: only the actions below can be listed.

use gearmq_schemas::units::check_existing_unit_name;
use serde::Deserialize;

/// The actions an `[[existing]]` entry may list.
pub const EXISTING_ACTIONS: &[&str] = &["status", "start", "stop", "restart", "reload", "logs"];

/// Most `[[existing]]` entries, and most patterns or actions in one.
pub const MAX_EXISTING: usize = 64;

/// One `[[existing]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExistingUnits {
    /// Full unit names, or patterns with `*` (`postgresql@*.service`).
    pub units: Vec<String>,
    /// What gearmq may do to them: some of [`EXISTING_ACTIONS`].
    pub actions: Vec<String>,
}

/// The allowlist of a host: every `[[existing]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<ExistingUnits>,
}

impl Allowlist {
    /// The allowlist of `entries`, checked: each pattern a unit name once its `*`s are
    /// filled in, each action one of [`EXISTING_ACTIONS`]; the error names the entry.
    pub fn new(entries: Vec<ExistingUnits>) -> Result<Self, String> {
        if entries.len() > MAX_EXISTING {
            return Err(format!("more than {MAX_EXISTING} entries"));
        }
        for (i, e) in entries.iter().enumerate() {
            let at = |what: &str| format!("entry {} ({what})", i + 1);
            if e.units.is_empty() || e.units.len() > MAX_EXISTING {
                return Err(format!("{}: list 1 to {MAX_EXISTING} units", at("units")));
            }
            if e.actions.is_empty() || e.actions.len() > MAX_EXISTING {
                return Err(format!(
                    "{}: list 1 to {MAX_EXISTING} actions",
                    at("actions")
                ));
            }
            for p in &e.units {
                check_existing_unit_name(&p.replace('*', "x"))
                    .map_err(|err| format!("{}: pattern {p:?}: {}", at("units"), err.reason))?;
            }
            for a in &e.actions {
                if !EXISTING_ACTIONS.contains(&a.as_str()) {
                    return Err(format!(
                        "{}: {a:?} cannot be allowed on a unit gearmq did not create; \
                         allowed are {}",
                        at("actions"),
                        EXISTING_ACTIONS.join(", ")
                    ));
                }
            }
        }
        Ok(Allowlist { entries })
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The actions allowed on `unit`, in the order [`EXISTING_ACTIONS`] lists them.
    pub fn actions_for(&self, unit: &str) -> Vec<&'static str> {
        EXISTING_ACTIONS
            .iter()
            .copied()
            .filter(|a| self.allows(unit, a))
            .collect()
    }

    /// Whether any entry's pattern matches `unit` (its unit events are published).
    pub fn names(&self, unit: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.units.iter().any(|p| glob(p, unit)))
    }

    /// Every pattern of every entry, in order, each once.
    pub fn patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.entries.iter().flat_map(|e| e.units.iter()) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// Whether an entry whose pattern matches `unit` lists `action`.
    pub fn allows(&self, unit: &str, action: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.actions.iter().any(|a| a == action) && e.units.iter().any(|p| glob(p, unit)))
    }

    /// Why `action` on `unit` is refused, naming what the allowlist does allow.
    pub fn refusal(&self, unit: &str, action: &str) -> String {
        let allowed = self.actions_for(unit);
        if allowed.is_empty() {
            format!(
                "{unit} is not a unit gearmq created and this host's [[existing]] allowlist \
                 names no pattern matching it"
            )
        } else {
            format!(
                "{unit} is not a unit gearmq created; this host's [[existing]] allowlist \
                 allows only {} on it, not {action}",
                allowed.join(", ")
            )
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters
/// (possibly none) and everything else for itself.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(units: &[&str], actions: &[&str]) -> ExistingUnits {
        ExistingUnits {
            units: units.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn patterns_match_whole_names() {
        assert!(glob("nginx.service", "nginx.service"));
        assert!(!glob("nginx.service", "nginx2.service"));
        assert!(glob("postgresql@*.service", "postgresql@15-main.service"));
        assert!(glob("postgresql@*.service", "postgresql@.service"));
        assert!(!glob("postgresql@*.service", "postgresql.service"));
        assert!(glob("*-worker@*.service", "mail-worker@3.service"));
        assert!(!glob("*-worker@*.service", "mail-worker@3.socket"));
        assert!(glob("a*b*c.service", "aXbYbZc.service"));
    }

    #[test]
    fn allowlist_names_unit_and_action() {
        let l = Allowlist::new(vec![
            entry(&["nginx.service"], &["restart", "status"]),
            entry(&["postgresql@*.service"], &["status"]),
        ])
        .unwrap();
        assert!(l.allows("nginx.service", "restart"));
        assert!(!l.allows("nginx.service", "stop"));
        assert!(l.allows("postgresql@15.service", "status"));
        assert!(!l.allows("redis.service", "status"));
        assert!(l.names("postgresql@15.service") && !l.names("redis.service"));
        assert_eq!(l.patterns(), ["nginx.service", "postgresql@*.service"]);
        assert_eq!(l.actions_for("nginx.service"), ["status", "restart"]);
        let e = l.refusal("nginx.service", "stop");
        assert!(
            e.contains("allows only status, restart on it, not stop"),
            "{e}"
        );
        let e = l.refusal("redis.service", "status");
        assert!(e.contains("names no pattern matching it"), "{e}");
    }

    #[test]
    fn bad_entries_are_refused_naming_them() {
        for (e, want) in [
            (entry(&[], &["status"]), "entry 1 (units)"),
            (entry(&["nginx.service"], &[]), "entry 1 (actions)"),
            (entry(&["nginx.service"], &["delete"]), "cannot be allowed"),
            (entry(&["nginx.service"], &["install"]), "cannot be allowed"),
            (entry(&["../x.service"], &["status"]), "pattern"),
            (entry(&["gearmq-*.service"], &["status"]), "pattern"),
            (entry(&["nginx"], &["status"]), "pattern"),
        ] {
            let err = Allowlist::new(vec![e]).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
