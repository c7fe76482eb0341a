//! Reading and writing the key, public key and credential files every gearmq program
//! shares. Paths appear in every error, so a failure reads as a sentence.

use gearmq_schemas::credential::{Credential, verify_credential};
use gearmq_schemas::keys::{PublicKey, SigningKey, der_to_pem};
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
    /// A secret (private key, password) that group or others may read or change.
    #[error(
        "refusing {what} {path}: mode {mode:04o} lets other users read or change it (chmod 600 {path})"
    )]
    LoosePermissions {
        /// What the file holds (`private key`, `sealing key`, …).
        what: &'static str,
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

/// A file a program could not use, named as that program knows it (`host key`,
/// `broker password file`): the one wording the agent and the broker settings print.
#[derive(Debug, thiserror::Error)]
pub enum NamedFileError {
    /// It could not be read.
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        /// What it holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason (without the OS error number).
        reason: String,
    },
    /// A secret that group or others may read or change: a
    /// [`FileError::LoosePermissions`] naming it as the program knows it.
    #[error(transparent)]
    Loose(FileError),
    /// It was read, but its content is not what it should be.
    #[error("{what} {path} is not valid: {reason}")]
    Invalid {
        /// What it holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl NamedFileError {
    /// `path` (holding `what`) could not be read.
    pub fn read(what: &'static str, path: &Path, e: &std::io::Error) -> Self {
        NamedFileError::Read {
            what,
            path: path.to_path_buf(),
            reason: crate::io_reason(e),
        }
    }

    /// `path` (holding `what`) holds something else: `reason`.
    pub fn invalid(what: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        NamedFileError::Invalid {
            what,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl FileError {
    /// This error, naming the file as `what`.
    pub fn named(self, what: &'static str) -> NamedFileError {
        match self {
            FileError::Io { path, source, .. } => NamedFileError::read(what, &path, &source),
            FileError::LoosePermissions { path, mode, .. } => {
                NamedFileError::Loose(FileError::LoosePermissions { what, path, mode })
            }
            FileError::Invalid { path, reason } => NamedFileError::Invalid { what, path, reason },
            FileError::Exists { path } => NamedFileError::invalid(what, &path, "exists"),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Largest secret file read: far above any PEM key or password, small enough that a
/// wrong path (a log, a device) is refused instead of read whole.
pub const MAX_PRIVATE_FILE_BYTES: u64 = 64 * 1024;

/// Reads a file holding a secret (a private key, a password), refusing one whose mode
/// gives group or others any access. Every private key and password gearmq reads comes
/// through here. The mode is taken from the opened file, so the file checked is the
/// file read (a rename in between cannot swap it).
pub fn read_private_file(what: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    let io = |source| FileError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(FileError::LoosePermissions {
                what,
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_PRIVATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PRIVATE_FILE_BYTES {
        return Err(FileError::Invalid {
            path: path.to_path_buf(),
            reason: format!("over {MAX_PRIVATE_FILE_BYTES} bytes; not a {what}"),
        });
    }
    Ok(bytes)
}

fn private_text(what: &'static str, path: &Path) -> Result<String, FileError> {
    String::from_utf8(read_private_file(what, path)?).map_err(|_| FileError::Invalid {
        path: path.to_path_buf(),
        reason: "not a text PEM file".into(),
    })
}

/// Reads an Ed25519 private key (PEM PKCS#8): host, operator and issuer keys alike.
/// Refuses a file that group or others can read ([`read_private_file`]).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, FileError> {
    let text = private_text("private key", path)?;
    SigningKey::from_pem(&text).map_err(|e| FileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads an X25519 sealing private key (PEM PKCS#8), the key delegation tokens for a
/// host are sealed to. Refuses a file that group or others can read.
pub fn load_sealing_key(path: &Path) -> Result<gearmq_schemas::token::SealingKey, FileError> {
    let text = private_text("sealing key", path)?;
    gearmq_schemas::token::SealingKey::from_pem(&text).map_err(|e| FileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a broker password file: the password with surrounding whitespace trimmed.
/// Refuses a file that group or others can read, or one holding no password.
pub fn load_broker_password(path: &Path) -> Result<String, FileError> {
    let bytes = read_private_file("broker password file", path)?;
    let invalid = |reason: &str| FileError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let text = String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text"))?;
    let password = text.trim();
    if password.is_empty() {
        return Err(invalid("is empty"));
    }
    Ok(password.to_string())
}

/// `amqp://user@host…` → `amqp://user:<password percent-encoded>@host…`. A URL
/// without a user, or with a password already, is returned as it is. Only the
/// authority is looked at: an `@` in the path, query or fragment is not the user
/// separator, so a password never lands there.
pub fn insert_broker_password(url: &str, password: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.to_string();
    };
    let authority_end = url[s + 3..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| s + 3 + i);
    match url[s + 3..authority_end].rfind('@') {
        Some(at) if !url[s + 3..s + 3 + at].contains(':') => {
            let at = s + 3 + at;
            format!("{}:{}{}", &url[..at], percent_encode(password), &url[at..])
        }
        _ => url.to_string(),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
    let k = gearmq_schemas::token::SealingKey::generate().map_err(|e| FileError::Invalid {
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
        assert!(e.contains("mode 0644"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
        let pubp = dir.join("a.pub");
        write_public_key(&pubp, &k.public_key(), false).unwrap();
        assert_eq!(load_public_key(&pubp).unwrap(), k.public_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn every_private_file_kind_refuses_group_or_other_access() {
        let dir = tempfile::tempdir().unwrap();
        let (_, der) = SigningKey::generate().unwrap();
        let signing = dir.path().join("host.key");
        write_signing_key(&signing, &der, false).unwrap();
        let sealing = dir.path().join("sealing.key");
        let sealing_pub = dir.path().join("sealing.pub");
        let public = make_sealing_key_pair(&sealing, &sealing_pub, false).unwrap();
        let password = dir.path().join("broker.password");
        write_file(&password, b"s3cret\n", 0o600, false).unwrap();

        assert!(load_signing_key(&signing).is_ok());
        assert_eq!(load_sealing_key(&sealing).unwrap().public(), public);
        assert_eq!(load_broker_password(&password).unwrap(), "s3cret");
        // Any group or other bit is refused, read or not; the owner's bits are free.
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601] {
            for (what, path) in [
                ("private key", &signing),
                ("sealing key", &sealing),
                ("broker password file", &password),
            ] {
                chmod(path, mode);
                let e = match what {
                    "private key" => load_signing_key(path).map(|_| ()),
                    "sealing key" => load_sealing_key(path).map(|_| ()),
                    _ => load_broker_password(path).map(|_| ()),
                }
                .unwrap_err();
                assert!(
                    matches!(&e, FileError::LoosePermissions { what: w, mode: m, .. } if *w == what && *m == mode),
                    "{what} {mode:o}: {e}"
                );
                let msg = e.to_string();
                assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
                assert!(
                    msg.contains(&format!("chmod 600 {}", path.display())),
                    "{msg}"
                );
                assert!(!msg.contains("s3cret"), "{msg}");
            }
        }
        for path in [&signing, &sealing, &password] {
            chmod(path, 0o400);
        }
        assert!(load_signing_key(&signing).is_ok());
        assert!(load_sealing_key(&sealing).is_ok());
        assert!(load_broker_password(&password).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_that_are_not_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.password");
        write_file(&empty, b"  \n", 0o600, false).unwrap();
        let e = load_broker_password(&empty).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let big = dir.path().join("big.key");
        write_file(&big, &vec![b'a'; 70_000], 0o600, false).unwrap();
        let e = load_signing_key(&big).unwrap_err().to_string();
        assert!(e.contains("over 65536 bytes"), "{e}");
        let missing = dir.path().join("missing.key");
        let e = load_signing_key(&missing).unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("missing.key"),
            "{e}"
        );
    }

    #[test]
    fn password_goes_into_the_authority_only() {
        assert_eq!(
            insert_broker_password("amqp://web1@h:5672/%2f", "p@ss:w/rd"),
            "amqp://web1:p%40ss%3Aw%2Frd@h:5672/%2f"
        );
        assert_eq!(
            insert_broker_password("amqp://web1:old@h:5672/%2f", "new"),
            "amqp://web1:old@h:5672/%2f"
        );
        assert_eq!(
            insert_broker_password("amqps://h:5671/%2f?auth_mechanism=external", "x"),
            "amqps://h:5671/%2f?auth_mechanism=external"
        );
        // An '@' in the path, query or fragment is not the user separator.
        for url in [
            "amqp://h/v?x=a@b",
            "amqp://h:5672/v@x",
            "amqp://h/v#frag@x",
            "amqp://h/v?channel_max=1&x=u@h",
        ] {
            assert_eq!(insert_broker_password(url, "pw"), url);
        }
        assert_eq!(
            insert_broker_password("amqp://web1@h/v?x=a@b", "pw"),
            "amqp://web1:pw@h/v?x=a@b"
        );
        assert_eq!(insert_broker_password("not a url", "pw"), "not a url");
    }
}
