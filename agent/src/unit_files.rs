//! The unit files gearmq manages, and the spec kept for each.
//!
//! A unit `web` is the file `gearmq-web.service` in the unit directory whose first
//! line is [`marker_line`]: gearmq never reads, changes or removes any other file, so
//! a unit it did not create is "not found". Files are written atomically (temporary
//! file, fsync, rename, fsync of the directory) so systemd never loads half a unit.
//! The spec each unit was installed from is kept in `state_dir/units/<unit>.spec`.

use crate::identity::io_reason;
use crate::systemd::render::marker_line;
use gearmq_schemas::codec;
use gearmq_schemas::units::{UnitSpec, check_unit_name, unit_file_name};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest unit file or spec read back (a spec is bounded well below this).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why a unit file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UnitFileError {
    /// A file operation failed.
    #[error("cannot {op} {path}: {reason}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// The file exists but gearmq did not write it.
    #[error("{path} was not written by gearmq; it is left alone")]
    NotManaged {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(op: &'static str, path: &Path, e: &std::io::Error) -> UnitFileError {
    UnitFileError::Io {
        op,
        path: path.to_path_buf(),
        reason: io_reason(e),
    }
}

/// The unit directory and the spec directory.
#[derive(Debug, Clone)]
pub struct UnitFiles {
    unit_dir: PathBuf,
    spec_dir: PathBuf,
}

impl UnitFiles {
    /// Unit files in `unit_dir`, specs under `state_dir/units`.
    pub fn new(unit_dir: &Path, state_dir: &Path) -> Self {
        UnitFiles {
            unit_dir: unit_dir.to_path_buf(),
            spec_dir: state_dir.join("units"),
        }
    }

    /// The unit directory.
    pub fn unit_dir(&self) -> &Path {
        &self.unit_dir
    }

    /// The path of unit `unit`'s file.
    pub fn path(&self, unit: &str) -> PathBuf {
        self.unit_dir.join(unit_file_name(unit))
    }

    /// The text of unit `unit`'s file: `None` if there is none, an error if the file
    /// is not gearmq's.
    pub fn read(&self, unit: &str) -> Result<Option<String>, UnitFileError> {
        let path = self.path(unit);
        let text = match read_bounded(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path, &e)),
        };
        if text.lines().next() != Some(marker_line(unit).as_str()) {
            return Err(UnitFileError::NotManaged { path });
        }
        Ok(Some(text))
    }

    /// Writes unit `unit`'s file atomically (mode 0644).
    pub fn write(&self, unit: &str, text: &str) -> Result<(), UnitFileError> {
        fs::create_dir_all(&self.unit_dir)
            .map_err(|e| io_err("create directory", &self.unit_dir, &e))?;
        write_atomic(&self.path(unit), text.as_bytes(), 0o644)
    }

    /// Removes unit `unit`'s file; `false` if there was none.
    pub fn remove(&self, unit: &str) -> Result<bool, UnitFileError> {
        let path = self.path(unit);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.unit_dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path, &e)),
        }
    }

    /// Every unit gearmq manages here (files with the marker), in name order.
    pub fn list(&self) -> Result<Vec<String>, UnitFileError> {
        let entries = match fs::read_dir(&self.unit_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &self.unit_dir, &e)),
        };
        let mut units = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &self.unit_dir, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(unit) = name
                .strip_prefix("gearmq-")
                .and_then(|n| n.strip_suffix(".service"))
            else {
                continue;
            };
            if check_unit_name(unit).is_err() {
                continue;
            }
            // Only files carrying the marker; others are not gearmq's to show.
            if matches!(self.read(unit), Ok(Some(_))) {
                units.push(unit.to_string());
            }
        }
        units.sort();
        Ok(units)
    }

    fn spec_path(&self, unit: &str) -> PathBuf {
        self.spec_dir.join(format!("{unit}.spec"))
    }

    /// Keeps the spec unit `unit` was installed from.
    pub fn save_spec(&self, spec: &UnitSpec) -> Result<(), UnitFileError> {
        fs::create_dir_all(&self.spec_dir)
            .map_err(|e| io_err("create directory", &self.spec_dir, &e))?;
        write_atomic(&self.spec_path(&spec.unit), &codec::encode(spec), 0o600)
    }

    /// The spec unit `unit` was installed from, if kept and readable.
    pub fn spec(&self, unit: &str) -> Option<UnitSpec> {
        let bytes = fs::read(self.spec_path(unit)).ok()?;
        codec::decode("spec", &bytes, MAX_FILE_BYTES as usize).ok()
    }

    /// Forgets unit `unit`'s spec.
    pub fn remove_spec(&self, unit: &str) -> Result<(), UnitFileError> {
        let path = self.spec_path(unit);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path, &e)),
        }
    }
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let f = File::open(path)?;
    if f.metadata()?.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other("file too large"));
    }
    fs::read_to_string(path)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (a name systemd
/// does not load), fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), UnitFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:08x}", rand::random::<u32>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, &e))?;
        f.write_all(bytes).map_err(|e| io_err("write", &tmp, &e))?;
        f.sync_all().map_err(|e| io_err("fsync", &tmp, &e))?;
        fs::rename(&tmp, path).map_err(|e| io_err("rename into place", path, &e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), UnitFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync", dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_with_the_marker_are_managed() {
        let d = tempfile::tempdir().unwrap();
        let units = UnitFiles::new(&d.path().join("units"), &d.path().join("state"));
        assert_eq!(units.read("web").unwrap(), None);
        assert!(units.list().unwrap().is_empty());
        let text = format!("{}\n[Service]\n", marker_line("web"));
        units.write("web", &text).unwrap();
        assert_eq!(units.read("web").unwrap().as_deref(), Some(text.as_str()));
        // A file someone else wrote under a gearmq name, and an unrelated unit.
        fs::write(units.path("db"), "[Service]\nExecStart=/bin/true\n").unwrap();
        fs::write(units.unit_dir().join("sshd.service"), "[Service]\n").unwrap();
        // A marker for another unit does not count either.
        fs::write(units.path("x"), format!("{}\n", marker_line("web"))).unwrap();
        assert!(matches!(
            units.read("db"),
            Err(UnitFileError::NotManaged { .. })
        ));
        assert_eq!(units.list().unwrap(), vec!["web".to_string()]);
        assert!(units.remove("web").unwrap());
        assert!(!units.remove("web").unwrap());
        assert!(!units.path("web").exists());
        // No temporary files left behind.
        let left: Vec<_> = fs::read_dir(units.unit_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn specs_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let units = UnitFiles::new(d.path(), d.path());
        let mut spec = UnitSpec::new("web", "/bin/echo");
        spec.args = vec!["100%".into()];
        units.save_spec(&spec).unwrap();
        assert_eq!(units.spec("web"), Some(spec));
        units.remove_spec("web").unwrap();
        assert_eq!(units.spec("web"), None);
        units.remove_spec("web").unwrap();
    }
}
