//! The inventory: the hosts this orchestrator knows, from their credential files.

use gearmq_io::files::load_credential;
use gearmq_schemas::{Credential, Name, PublicKey, Role, Targets};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One enrolled host.
#[derive(Debug, Clone)]
pub struct InventoryHost {
    /// Its verified credential.
    pub credential: Arc<Credential>,
    /// Where it was read from.
    pub path: PathBuf,
}

/// Every enrolled host, by name.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    hosts: BTreeMap<Name, InventoryHost>,
    skipped: Vec<String>,
}

impl Inventory {
    /// Reads every `<dir>/*/host.cred` that verifies against `trusted` and is a host
    /// credential named like its directory. Files that fail are listed in
    /// [`Inventory::skipped`] with the reason, never silently dropped.
    pub fn load(dir: &Path, trusted: &[PublicKey]) -> std::io::Result<Inventory> {
        let mut inv = Inventory::default();
        if !dir.exists() {
            return Ok(inv);
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path().join("host.cred");
            if !path.is_file() {
                continue;
            }
            match load_credential(&path, trusted) {
                Ok((cred, _)) if cred.role != Role::Host => inv
                    .skipped
                    .push(format!("{}: not a host credential", path.display())),
                Ok((cred, _)) if entry.file_name().to_string_lossy() != cred.name.as_str() => {
                    inv.skipped.push(format!(
                        "{}: credential names {}, not its directory",
                        path.display(),
                        cred.name
                    ))
                }
                Ok((cred, _)) => {
                    inv.hosts.insert(
                        cred.name.clone(),
                        InventoryHost {
                            credential: Arc::new(cred),
                            path,
                        },
                    );
                }
                Err(e) => inv.skipped.push(e.to_string()),
            }
        }
        Ok(inv)
    }

    /// The host called `name`, if enrolled.
    pub fn get(&self, name: &Name) -> Option<&InventoryHost> {
        self.hosts.get(name)
    }

    /// Every host, in name order.
    pub fn hosts(&self) -> impl Iterator<Item = (&Name, &InventoryHost)> {
        self.hosts.iter()
    }

    /// Every host name, in order.
    pub fn names(&self) -> Vec<Name> {
        self.hosts.keys().cloned().collect()
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Credential files that were not taken, with the reason.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Whether `reach` is exactly the inventory hosts `targets` denotes (never for a
    /// host list): every reached host is enrolled and denoted, and as many are denoted.
    /// O(reach) lookups for `all`, one pass over the inventory for a selector; nothing
    /// is allocated, so a batch or one host of a large inventory stays cheap.
    pub fn denotes_exactly(&self, targets: &Targets, reach: &BTreeSet<&Name>) -> bool {
        let denoted = |n: &Name, h: &InventoryHost| targets.includes(n, &h.credential.labels);
        if matches!(targets, Targets::Hosts(_))
            || reach.len() > self.hosts.len()
            || !reach
                .iter()
                .all(|n| self.hosts.get(*n).is_some_and(|h| denoted(n, h)))
        {
            return false;
        }
        let denoted_count = match targets {
            Targets::All => self.hosts.len(),
            _ => self.hosts.iter().filter(|(n, h)| denoted(n, h)).count(),
        };
        denoted_count == reach.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::{LabelMatch, MatchOp, SigningKey};

    fn inventory(hosts: &[(&str, &str)]) -> Inventory {
        let mut inv = Inventory::default();
        for (name, role) in hosts {
            let name = Name::new(*name).unwrap();
            let key = SigningKey::from_seed(&[7; 32]).public_key();
            let mut cred = Credential::new(1, name.clone(), Role::Host, key, 0, u64::MAX);
            cred.labels.insert("role".into(), role.to_string());
            let host = InventoryHost {
                credential: Arc::new(cred),
                path: PathBuf::new(),
            };
            inv.hosts.insert(name, host);
        }
        inv
    }

    fn names(n: &[&str]) -> Vec<Name> {
        n.iter().map(|n| Name::new(*n).unwrap()).collect()
    }

    #[test]
    fn a_selection_is_signed_only_when_the_publish_reaches_all_it_denotes() {
        let inv = inventory(&[("w1", "web"), ("w2", "web"), ("d1", "db")]);
        let web = Targets::Selector(vec![LabelMatch {
            key: "role".into(),
            op: MatchOp::Eq,
            value: "web".into(),
        }]);
        let check = |t: &Targets, reach: &[&str]| {
            let reach = names(reach);
            inv.denotes_exactly(t, &reach.iter().collect())
        };
        assert!(check(&Targets::All, &["d1", "w1", "w2"]));
        // A subset (a batch, a limit), or one host outside the inventory beside it.
        assert!(!check(&Targets::All, &["w1"]));
        assert!(!check(&Targets::All, &["d1", "w1", "x9"]));
        assert!(!check(&Targets::All, &["d1", "w1", "w2", "x9"]));
        assert!(check(&web, &["w1", "w2"]));
        assert!(!check(&web, &["w1"]));
        // As many hosts as it denotes, but one it does not.
        assert!(!check(&web, &["d1", "w1"]));
        assert!(!check(&web, &["d1", "w1", "w2"]));
        // A host list is what a narrowed call signs anyway.
        assert!(!check(&Targets::hosts(names(&["w1"])), &["w1"]));
        // Nobody reached.
        assert!(!check(&Targets::All, &[]));
        assert!(!check(&web, &[]));
    }
}
