//! An agent's files written by hand, for tests that play the issuer ([`Pki`]): the host
//! key (mode 0600: the agent refuses a key others can read), its credential, the
//! issuer's public key and `agent.toml`, in a temp dir removed on drop.

use crate::pki::{Identity, Pki};
use std::path::PathBuf;

/// The files an agent is configured with.
pub struct AgentFiles {
    /// The directory holding them (and the state dir).
    pub dir: tempfile::TempDir,
    /// `agent.toml`.
    pub config: PathBuf,
    /// The agent's state dir (records, replay store, audit log).
    pub state_dir: PathBuf,
}

impl AgentFiles {
    /// The files of `host` trusting `pki`'s issuer, on the broker at `url`, with
    /// `limits` as the body of `[limits]` and `systemd` as that of `[systemd]`.
    pub fn write(url: &str, pki: &Pki, host: &Identity, limits: &str, systemd: &str) -> AgentFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = AgentFiles {
            config: dir.path().join("agent.toml"),
            state_dir: dir.path().join("state"),
            dir,
        };
        std::fs::write(files.key_file(), &host.key_pem).expect("host.key");
        crate::set_mode(&files.key_file(), 0o600);
        std::fs::write(files.path("host.cred"), &host.credential).expect("host.cred");
        let issuer = files.path("issuer.pub");
        std::fs::write(&issuer, format!("{}\n", pki.issuer.public_key().to_hex()))
            .expect("issuer.pub");
        std::fs::write(
            &files.config,
            format!(
                r#"name = "{name}"
key_file = "{key}"
credential_file = "{cred}"
trusted_issuers = ["{issuer}"]
state_dir = "{state}"

[broker]
urls = ["{url}"]

[limits]
{limits}

[systemd]
{systemd}
"#,
                name = host.name,
                key = files.key_file().display(),
                cred = files.path("host.cred").display(),
                issuer = issuer.display(),
                state = files.state_dir.display(),
            ),
        )
        .expect("agent.toml");
        files
    }

    /// `name` in the files' directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The host key file.
    pub fn key_file(&self) -> PathBuf {
        self.path("host.key")
    }

    /// Rewrites `agent.toml` with `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("agent.toml");
        std::fs::write(&self.config, edit(text)).expect("agent.toml");
    }

    /// Adds top-level `lines` to `agent.toml` (before its first section).
    pub fn add_top_level(&self, lines: &str) {
        self.edit_config(|t| t.replacen("\n[broker]", &format!("\n{lines}\n\n[broker]"), 1));
    }
}
