//! Reading and writing the key, public key and credential files every gearmq program
//! shares. Paths appear in every error, so a failure reads as a sentence.

use crate::credential::{Credential, verify_credential};
use crate::keys::{PublicKey, SigningKey, der_to_pem};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A key or credential file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// read / write / create.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A private key file others can read.
    #[error(
        "refusing private key {path}: mode {mode:04o} lets other users read it (chmod 600 {path})"
    )]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not what the file should hold.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file exists and overwriting was not asked for.
    #[error("{path} already exists (use --force to overwrite)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM private key, refusing a file that group or others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, FileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| FileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(FileError::LoosePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = String::from_utf8(read(path)?).map_err(|_| FileError::Invalid {
        path: path.to_path_buf(),
        reason: "not a text PEM file".into(),
    })?;
    SigningKey::from_pem(&text).map_err(|e| FileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a public key file (one line of hex).
pub fn load_public_key(path: &Path) -> Result<PublicKey, FileError> {
    let text = String::from_utf8_lossy(&read(path)?).into_owned();
    PublicKey::from_hex(&text).map_err(|e| FileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads trusted issuer keys, one file each.
pub fn load_trusted_issuers(paths: &[PathBuf]) -> Result<Vec<PublicKey>, FileError> {
    paths.iter().map(|p| load_public_key(p)).collect()
}

/// Reads a credential file and verifies it against `trusted` issuers. Returns the
/// decoded credential and the exact bytes (which travel with every signed message).
pub fn load_credential(
    path: &Path,
    trusted: &[PublicKey],
) -> Result<(Credential, Vec<u8>), FileError> {
    let bytes = read(path)?;
    let cred = verify_credential(&bytes, trusted).map_err(|e| FileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((cred, bytes))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with `mode`.
/// Refuses to replace an existing file unless `force`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), FileError> {
    if !force && path.exists() {
        return Err(FileError::Exists {
            path: path.to_path_buf(),
        });
    }
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| FileError::Io {
            action,
            path,
            source,
        }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(&tmp).map_err(io("create"))?;
    #[cfg(unix)]
    {
        // The umask may have narrowed or the file pre-existed; set exactly.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("write"))?;
    }
    f.write_all(bytes).map_err(io("write"))?;
    f.sync_all().map_err(io("write"))?;
    std::fs::rename(&tmp, path).map_err(io("write"))?;
    Ok(())
}

/// Writes a private key as PEM with mode 0600.
pub fn write_signing_key(path: &Path, pkcs8: &[u8], force: bool) -> Result<(), FileError> {
    write_file(path, der_to_pem(pkcs8).as_bytes(), 0o600, force)
}

/// Writes a public key file (hex and a newline), mode 0644.
pub fn write_public_key(path: &Path, key: &PublicKey, force: bool) -> Result<(), FileError> {
    write_file(path, format!("{}\n", key.to_hex()).as_bytes(), 0o644, force)
}

/// Makes a new X25519 sealing key pair: the private key as PEM (mode 0600) at `key`,
/// the public key as one line of hex at `public`. Returns the public key.
pub fn make_sealing_key_pair(
    key: &Path,
    public: &Path,
    force: bool,
) -> Result<[u8; 32], FileError> {
    let k = crate::token::SealingKey::generate().map_err(|e| FileError::Invalid {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_file(key, k.to_pem().as_bytes(), 0o600, force)?;
    write_file(
        public,
        format!("{}\n", hex::encode(k.public())).as_bytes(),
        0o644,
        force,
    )?;
    Ok(k.public())
}

/// Reads a sealing public key file (64 hex characters).
pub fn load_sealing_public_key(path: &Path) -> Result<[u8; 32], FileError> {
    let bytes = read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let invalid = || FileError::Invalid {
        path: path.to_path_buf(),
        reason: "not a sealing public key (expected 64 hex characters)".into(),
    };
    let raw = hex::decode(text.trim()).map_err(|_| invalid())?;
    <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_loose_mode_refused() {
        let dir = std::env::temp_dir().join(format!("gearmq-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, der) = SigningKey::generate().unwrap();
        let p = dir.join("a.key");
        write_signing_key(&p, &der, false).unwrap();
        assert_eq!(load_signing_key(&p).unwrap().public_key(), k.public_key());
        assert!(matches!(
            write_signing_key(&p, &der, false),
            Err(FileError::Exists { .. })
        ));
        write_file(&p, der_to_pem(&der).as_bytes(), 0o644, true).unwrap();
        let e = load_signing_key(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let pubp = dir.join("a.pub");
        write_public_key(&pubp, &k.public_key(), false).unwrap();
        assert_eq!(load_public_key(&pubp).unwrap(), k.public_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
