//! The inventory: the hosts this orchestrator knows, from their credential files.

use gearmq_io::files::load_credential;
use gearmq_schemas::{Credential, Name, PublicKey, Role};
use std::collections::BTreeMap;
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
}
