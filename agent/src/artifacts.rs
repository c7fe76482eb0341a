//! Programs shipped with an `install`: fetched from the request's URL or read from the
//! artifact's stream on the broker, checked against the SHA-256 and size the request
//! signs, and stored by digest.
//!
//! The bytes stream from the connection through the digest into a temporary file in
//! the store (never all in memory); only a file whose size and digest match is
//! fsync'd, made executable and renamed to `<sha256 hex>`, so a unit can never run a
//! half-written or wrong artifact. A digest already stored is not fetched again.
//! Files no unit file names are removed by housekeeping once they are older than
//! [`UNUSED_GRACE`] (an install in flight has not written its unit file yet).

use gearmq_io::artifact_stream::{self, Chunk, StreamError, Taken};
use gearmq_io::broker::BrokerFiles;
use gearmq_schemas::actions::Artifact;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long an artifact no unit names is kept.
pub const UNUSED_GRACE: Duration = Duration::from_secs(3600);
/// Longest a fetch may take, start to end.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Prefix of files being written (never a digest).
const PARTIAL_PREFIX: &str = ".partial-";
/// How long reading an artifact stream waits for the next chunk before it gives up:
/// the caller published every chunk before the request, so a pause this long means
/// the stream holds no more.
const STREAM_IDLE: Duration = Duration::from_secs(15);
/// Suffix of an unpacked `.tar.gz` tree beside its archive (`<sha256 hex>.d`).
const TREE_SUFFIX: &str = ".d";
/// Most entries one artifact tree may hold.
const MAX_TREE_ENTRIES: u64 = 100_000;
/// How many times the archive's size its unpacked tree may take (a gzip bomb stops
/// there, and at twice the host's `limits.max_artifact_bytes` whatever the ratio).
const MAX_TREE_EXPANSION: u64 = 32;
/// How long connecting to the broker for an artifact stream may take.
const STREAM_CONNECT: Duration = Duration::from_secs(15);

/// Why an artifact could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes served are not the bytes the request signed.
    #[error("artifact from {url}: {reason}; nothing was installed")]
    Mismatch {
        /// Where they came from (a URL, or `broker stream <name>`).
        url: String,
        /// Which check failed.
        reason: String,
    },
    /// Bigger than this host takes.
    #[error("artifact of {size} bytes is over this host's limits.max_artifact_bytes ({max})")]
    TooLarge {
        /// The signed size.
        size: u64,
        /// The host's limit.
        max: u64,
    },
    /// The URL could not be fetched.
    #[error("cannot fetch artifact {url}: {reason}")]
    Fetch {
        /// Where.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The store could not be written.
    #[error("artifact store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Where the agent reads artifact streams: its own broker login.
#[derive(Debug, Clone)]
pub struct StreamSource {
    /// Broker URLs, tried in order.
    pub urls: Vec<String>,
    /// TLS and password files.
    pub files: BrokerFiles,
    /// The connection's name on the broker.
    pub name: String,
}

/// The content-addressed store of shipped programs.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    max_bytes: u64,
    streams: Option<StreamSource>,
}

impl ArtifactStore {
    /// A store in `dir` (made 0755 when first used: units run the files, maybe as
    /// other users) taking artifacts of at most `max_bytes`.
    pub fn new(dir: &Path, max_bytes: u64) -> Self {
        ArtifactStore {
            dir: dir.to_path_buf(),
            max_bytes,
            streams: None,
        }
    }

    /// The store, reading artifacts without a URL from `source`'s broker.
    pub fn with_streams(mut self, source: StreamSource) -> Self {
        self.streams = Some(source);
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where artifact `a` is stored.
    pub fn path(&self, a: &Artifact) -> PathBuf {
        self.dir.join(a.hex())
    }

    /// `None` when `a` is stored already; else the store's directory exists (0755) and
    /// this is a fresh partial file name to write `a` to.
    fn begin(&self, a: &Artifact) -> Result<Option<PathBuf>, ArtifactError> {
        if fs::metadata(self.path(a)).is_ok_and(|m| m.is_file() && m.len() == a.size) {
            return Ok(None);
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&self.dir))?;
        Ok(Some(self.partial(a, "")))
    }

    /// A partial name for `a` no other writer uses (`suffix`: `.d` for a tree).
    fn partial(&self, a: &Artifact, suffix: &str) -> PathBuf {
        self.dir.join(format!(
            "{PARTIAL_PREFIX}{}-{}-{}{suffix}",
            a.hex(),
            std::process::id(),
            PARTIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ))
    }

    /// The stored file of `a`, fetched (or read from its stream) first unless it is
    /// there already.
    pub async fn ensure(&self, a: &Artifact) -> Result<PathBuf, ArtifactError> {
        if a.size > self.max_bytes {
            return Err(ArtifactError::TooLarge {
                size: a.size,
                max: self.max_bytes,
            });
        }
        let path = self.path(a);
        let Some(partial) = self.begin(a)? else {
            return Ok(path);
        };
        let result = match &a.url {
            Some(url) => {
                let (store, a2, url, p) = (self.clone(), a.clone(), url.clone(), partial.clone());
                tokio::task::spawn_blocking(move || store.fetch_into(&a2, &url, &p))
                    .await
                    .unwrap_or_else(|e| {
                        Err(ArtifactError::Fetch {
                            url: a.source(),
                            reason: format!("the fetch task failed: {e}"),
                        })
                    })
            }
            None => self.read_stream_into(a, &partial).await,
        };
        let done = result.and_then(|()| {
            fs::rename(&partial, &path).map_err(io_err(&path))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))
        });
        match done {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    /// The unpacked tree of `.tar.gz` artifact `a` (stored already), unpacked first
    /// unless it is there: into a partial directory renamed into place only when every
    /// entry was taken, so a unit never runs from a half-unpacked tree. Only regular
    /// files, directories and relative symlinks that stay inside the tree are taken;
    /// modes lose set-id bits and group/other write. Blocking.
    pub fn unpack(&self, a: &Artifact) -> Result<PathBuf, ArtifactError> {
        let tree = self.dir.join(format!("{}{TREE_SUFFIX}", a.hex()));
        if tree.is_dir() {
            return Ok(tree);
        }
        let partial = self.partial(a, TREE_SUFFIX);
        fs::create_dir(&partial).map_err(io_err(&partial))?;
        let limit = a
            .size
            .saturating_mul(MAX_TREE_EXPANSION)
            .min(self.max_bytes.saturating_mul(2));
        let done = unpack_into(&self.path(a), &partial, limit)
            .map_err(|reason| ArtifactError::Mismatch {
                url: a.source(),
                reason: format!("not a .tar.gz tree gearmq unpacks: {reason}"),
            })
            .and_then(|()| {
                fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
                    .map_err(io_err(&partial))?;
                // Another install of the same tree (a concurrent request, a redelivery)
                // may have renamed its copy into place first: the rename onto that
                // non-empty directory fails, and its tree is as good as ours.
                if let Err(e) = fs::rename(&partial, &tree) {
                    if !tree.is_dir() {
                        return Err(io_err(&tree)(e));
                    }
                    let _ = fs::remove_dir_all(&partial);
                }
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&self.dir))
            });
        match done {
            Ok(()) => Ok(tree),
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                Err(e)
            }
        }
    }

    /// Stores the local file `path` as artifact `a` (`gearmq local install --artifact`):
    /// copied through the digest, kept only if it matches `a`. Blocking.
    pub fn import(&self, a: &Artifact, path: &Path) -> Result<PathBuf, ArtifactError> {
        let stored = self.path(a);
        let Some(partial) = self.begin(a)? else {
            return Ok(stored);
        };
        let copy = || -> Result<(), ArtifactError> {
            let mut from = File::open(path).map_err(io_err(path))?;
            let mut w = StreamWriter::create(a, &partial)?;
            w.take(Chunk::Restart).map_err(|e| ArtifactError::Io {
                path: partial.clone(),
                source: io::Error::other(e),
            })?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = from.read(&mut buf).map_err(io_err(path))?;
                let taken = w
                    .take(Chunk::Bytes(&buf[..n]))
                    .map_err(|e| ArtifactError::Io {
                        path: partial.clone(),
                        source: io::Error::other(e),
                    })?;
                match taken {
                    Taken::Done => break,
                    Taken::Bad(reason) => {
                        return Err(ArtifactError::Mismatch {
                            url: path.display().to_string(),
                            reason,
                        });
                    }
                    Taken::More if n == 0 => {
                        return Err(ArtifactError::Mismatch {
                            url: path.display().to_string(),
                            reason: format!("shorter than the {} bytes named", a.size),
                        });
                    }
                    Taken::More => {}
                }
            }
            w.file
                .set_permissions(fs::Permissions::from_mode(0o755))
                .and_then(|()| w.file.sync_all())
                .map_err(io_err(&partial))?;
            fs::rename(&partial, &stored).map_err(io_err(&stored))
        };
        match copy() {
            Ok(()) => Ok(stored),
            Err(e) => {
                let _ = fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    /// Reads `a`'s stream on the broker into `partial`, taking the first complete copy
    /// whose size and digest match.
    async fn read_stream_into(&self, a: &Artifact, partial: &Path) -> Result<(), ArtifactError> {
        let source = a.source();
        let fetch = |reason: String| ArtifactError::Fetch {
            url: source.clone(),
            reason,
        };
        let Some(streams) = &self.streams else {
            return Err(fetch(
                "this agent reads no broker streams (local mode): ship the program by URL".into(),
            ));
        };
        let mut last = String::from("no broker URL");
        let mut conn = None;
        for url in &streams.urls {
            let props = lapin::ConnectionProperties::default()
                .with_connection_name(format!("{} artifact", streams.name).into());
            match gearmq_io::broker::connect(url, &streams.files, None, props, STREAM_CONNECT).await
            {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let conn = conn.ok_or_else(|| fetch(format!("cannot connect to the broker: {last}")))?;
        let mut writer = StreamWriter::create(a, partial)?;
        let started = std::time::Instant::now();
        let read = match conn.create_channel().await {
            Ok(channel) => {
                artifact_stream::read(channel, &a.hex(), STREAM_IDLE, |c| writer.take(c)).await
            }
            Err(e) => Err(StreamError::Sink(format!("cannot open a channel: {e}"))),
        };
        let _ = conn.close(200, "artifact read".into()).await;
        match read {
            Ok(()) => {
                tracing::info!(
                    stream = %gearmq_schemas::actions::artifact_stream(&a.hex()),
                    bytes = a.size,
                    secs = started.elapsed().as_secs_f64(),
                    "artifact read from its broker stream"
                );
                let file = writer.file;
                tokio::task::spawn_blocking(move || {
                    file.set_permissions(fs::Permissions::from_mode(0o755))
                        .and_then(|()| file.sync_all())
                })
                .await
                .map_err(|e| fetch(format!("the sync task failed: {e}")))?
                .map_err(io_err(partial))
            }
            Err(StreamError::Incomplete(reason)) => Err(ArtifactError::Mismatch {
                url: source.clone(),
                reason,
            }),
            Err(StreamError::Sink(reason)) if writer.io_failed => Err(ArtifactError::Io {
                path: partial.to_path_buf(),
                source: io::Error::other(reason),
            }),
            // The broker has no such stream (its 404 closes the channel).
            Err(e) if e.to_string().contains("NOT_FOUND") => Err(fetch(format!(
                "the broker holds no such stream: never shipped, or older than {} \
                 (ship it again with --artifact PATH)",
                artifact_stream::STREAM_MAX_AGE
            ))),
            Err(e) => Err(fetch(e.to_string())),
        }
    }

    /// Streams `url` into `partial`, checking size and digest on the way. Blocking.
    fn fetch_into(&self, a: &Artifact, url: &str, partial: &Path) -> Result<(), ArtifactError> {
        let fetch = |reason: String| ArtifactError::Fetch {
            url: url.to_string(),
            reason,
        };
        let mismatch = |reason: String| ArtifactError::Mismatch {
            url: url.to_string(),
            reason,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(3)
            .timeout_global(Some(FETCH_TIMEOUT))
            .build()
            .new_agent();
        let resp = agent.get(url).call().map_err(|e| fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("HTTP {}", resp.status())));
        }
        let mut body = resp.into_body().into_reader();
        let mut out = File::create(partial).map_err(|source| ArtifactError::Io {
            path: partial.to_path_buf(),
            source,
        })?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = body.read(&mut buf).map_err(|e| fetch(e.to_string()))?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > a.size {
                return Err(mismatch(format!(
                    "more than the {} bytes the request names",
                    a.size
                )));
            }
            ctx.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|source| ArtifactError::Io {
                    path: partial.to_path_buf(),
                    source,
                })?;
        }
        if got != a.size {
            return Err(mismatch(format!(
                "{got} bytes, the request names {}",
                a.size
            )));
        }
        let digest = ctx.finish();
        if digest.as_ref() != a.sha256.as_slice() {
            return Err(mismatch(format!(
                "SHA-256 {}, the request names {}",
                hex::encode(digest.as_ref()),
                a.hex()
            )));
        }
        out.set_permissions(fs::Permissions::from_mode(0o755))
            .and_then(|()| out.sync_all())
            .map_err(|source| ArtifactError::Io {
                path: partial.to_path_buf(),
                source,
            })
    }

    /// Removes stored artifacts that no text in `in_use` names and that are older than
    /// [`UNUSED_GRACE`], and partial files as old; how many were removed.
    pub fn remove_unused(&self, in_use: &[String], now: SystemTime) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > UNUSED_GRACE);
            let named = in_use
                .iter()
                .any(|text| text.contains(path.to_string_lossy().as_ref()));
            let digest = name.strip_suffix(TREE_SUFFIX).unwrap_or(&name);
            let ours = name.starts_with(PARTIAL_PREFIX)
                || (digest.len() == 64 && gearmq_schemas::names::is_lower_hex(digest));
            if !(ours && old && !named) {
                continue;
            }
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Unpacks the `.tar.gz` at `archive` into the empty directory `dst`, refusing any
/// entry that would land outside it, any link that points outside it, devices, FIFOs
/// and hard links, more than [`MAX_TREE_ENTRIES`] entries or `limit` bytes.
fn unpack_into(archive: &Path, dst: &Path, limit: u64) -> Result<(), String> {
    use std::path::Component;
    let file = File::open(archive).map_err(|e| format!("cannot open it: {e}"))?;
    let gz = flate2::read::GzDecoder::new(io::BufReader::new(file));
    let mut ar = tar::Archive::new(gz);
    ar.set_preserve_permissions(false);
    ar.set_preserve_mtime(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(false);
    let (mut count, mut total) = (0u64, 0u64);
    for entry in ar.entries().map_err(|e| e.to_string())? {
        let mut e = entry.map_err(|e| e.to_string())?;
        count += 1;
        if count > MAX_TREE_ENTRIES {
            return Err(format!("more than {MAX_TREE_ENTRIES} entries"));
        }
        let path = e.path().map_err(|e| e.to_string())?.into_owned();
        let inside = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(format!("entry {} leaves the tree", path.display()));
        }
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("symlink {} without a target", path.display()))?;
                // Resolved lexically from the link's directory, it must stay inside.
                let mut depth: i64 = path.components().count() as i64 - 1;
                for c in target.components() {
                    depth += match c {
                        Component::Normal(_) => 1,
                        Component::CurDir => 0,
                        Component::ParentDir => -1,
                        Component::RootDir | Component::Prefix(_) => i64::MIN / 2,
                    };
                    if depth < 0 {
                        return Err(format!(
                            "symlink {} points outside the tree ({})",
                            path.display(),
                            target.display()
                        ));
                    }
                }
            }
            tar::EntryType::XGlobalHeader => continue,
            other => {
                return Err(format!(
                    "entry {} is a {other:?}: only files, directories and relative symlinks                      inside the tree are unpacked",
                    path.display()
                ));
            }
        }
        total = total.saturating_add(e.header().size().unwrap_or(0));
        if total > limit {
            return Err(format!("it unpacks to more than {limit} bytes"));
        }
        if !e.unpack_in(dst).map_err(|e| e.to_string())? {
            return Err(format!("entry {} leaves the tree", path.display()));
        }
    }
    if count == 0 {
        return Err("the archive is empty".into());
    }
    tighten_modes(dst).map_err(|e| format!("cannot set modes: {e}"))
}

/// Every file and directory below `dir`: readable by all (units may run as other
/// users; the agent's umask may be 0077), no set-id or sticky bit, no group/other
/// write; directories 0755, files keep their execute bits.
fn tighten_modes(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_symlink() {
            continue;
        }
        let mode = if t.is_dir() {
            0o755
        } else {
            (e.metadata()?.permissions().mode() & 0o755) | 0o444
        };
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode))?;
        if t.is_dir() {
            tighten_modes(&e.path())?;
        }
    }
    Ok(())
}

/// Distinguishes partial files of one process (two installs of one artifact at once).
static PARTIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { path, source }
}

/// Writes one copy from an artifact stream into a partial file through the digest,
/// starting over at each new copy.
struct StreamWriter {
    file: File,
    ctx: ring::digest::Context,
    got: u64,
    size: u64,
    sha256: [u8; 32],
    /// Writing failed (not the copy's fault).
    io_failed: bool,
}

impl StreamWriter {
    fn create(a: &Artifact, partial: &Path) -> Result<StreamWriter, ArtifactError> {
        Ok(StreamWriter {
            file: File::create(partial).map_err(io_err(partial))?,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            got: 0,
            size: a.size,
            sha256: a.sha256.into_array(),
            io_failed: false,
        })
    }

    fn take(&mut self, chunk: Chunk<'_>) -> Result<Taken, String> {
        let io = |w: &mut StreamWriter, e: io::Error| {
            w.io_failed = true;
            format!("cannot write the artifact: {e}")
        };
        match chunk {
            Chunk::Restart => {
                self.file
                    .set_len(0)
                    .and_then(|()| self.file.rewind())
                    .map_err(|e| io(self, e))?;
                self.ctx = ring::digest::Context::new(&ring::digest::SHA256);
                self.got = 0;
                Ok(Taken::More)
            }
            Chunk::Bytes(b) => {
                let got = self.got + b.len() as u64;
                if got > self.size {
                    return Ok(Taken::Bad(format!(
                        "a copy longer than the {} bytes the request names",
                        self.size
                    )));
                }
                self.file.write_all(b).map_err(|e| io(self, e))?;
                self.ctx.update(b);
                self.got = got;
                if got < self.size {
                    return Ok(Taken::More);
                }
                let digest = self.ctx.clone().finish();
                if digest.as_ref() == self.sha256.as_slice() {
                    Ok(Taken::Done)
                } else {
                    Ok(Taken::Bad(format!(
                        "a copy of SHA-256 {}, the request names {}",
                        hex::encode(digest.as_ref()),
                        hex::encode(self.sha256)
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_old_artifacts_go_and_named_or_young_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path(), 1 << 20);
        let names = ["a".repeat(64), "b".repeat(64), "c".repeat(64)];
        for n in &names {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
        let in_use = vec![format!(
            "ExecStart=\"{}\"",
            dir.path().join(&names[0]).display()
        )];
        let later = SystemTime::now() + UNUSED_GRACE + Duration::from_secs(1);
        assert_eq!(
            store.remove_unused(&in_use, SystemTime::now()),
            0,
            "young ones stay"
        );
        assert_eq!(store.remove_unused(&in_use, later), 2);
        assert!(dir.path().join(&names[0]).exists());
        assert!(!dir.path().join(&names[1]).exists());
        assert!(dir.path().join("notes.txt").exists());
    }

    #[tokio::test]
    async fn over_the_host_limit_is_refused_before_any_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path(), 10);
        let a = Artifact {
            sha256: serde_bytes::ByteArray::new([0; 32]),
            size: 11,
            url: Some("http://127.0.0.1:9/x".into()),
        };
        assert!(matches!(
            store.ensure(&a).await,
            Err(ArtifactError::TooLarge { .. })
        ));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    fn artifact_of(bytes: &[u8]) -> Artifact {
        Artifact {
            sha256: serde_bytes::ByteArray::new(gearmq_schemas::sha256(bytes)),
            size: bytes.len() as u64,
            url: None,
        }
    }

    #[test]
    fn stream_writer_takes_the_first_good_copy_after_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("partial");
        let a = artifact_of(b"hello world");
        let mut w = StreamWriter::create(&a, &p).unwrap();
        // A corrupted copy: complete, wrong digest.
        assert_eq!(w.take(Chunk::Restart).unwrap(), Taken::More);
        assert_eq!(w.take(Chunk::Bytes(b"hello ")).unwrap(), Taken::More);
        assert!(
            matches!(w.take(Chunk::Bytes(b"w0rld")).unwrap(), Taken::Bad(r) if r.contains("SHA-256"))
        );
        // An over-long copy.
        w.take(Chunk::Restart).unwrap();
        assert!(
            matches!(w.take(Chunk::Bytes(b"hello world!")).unwrap(), Taken::Bad(r) if r.contains("longer"))
        );
        // A good one, after the bad ones: the file holds exactly it.
        w.take(Chunk::Restart).unwrap();
        assert_eq!(w.take(Chunk::Bytes(b"hello")).unwrap(), Taken::More);
        assert_eq!(w.take(Chunk::Bytes(b" world")).unwrap(), Taken::Done);
        assert_eq!(fs::read(&p).unwrap(), b"hello world");
    }

    /// A .tar.gz of `entries`: (path bytes as written in the header, type, data or link).
    fn targz(entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o777
            } else {
                0o4777
            });
            if *kind == tar::EntryType::Symlink {
                h.as_old_mut().linkname[..data.len()].copy_from_slice(data);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn stored(store: &ArtifactStore, bytes: &[u8]) -> Artifact {
        let a = artifact_of(bytes);
        fs::create_dir_all(store.dir()).unwrap();
        fs::write(store.path(&a), bytes).unwrap();
        a
    }

    #[test]
    fn a_tree_unpacks_beside_its_archive_with_tight_modes_and_relative_links() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path(), 1 << 20);
        use tar::EntryType::{Directory, Regular, Symlink};
        let a = stored(
            &store,
            &targz(&[
                (b"bin/", Directory, b""),
                (b"bin/app", Regular, b"#!/bin/sh\necho hi\n"),
                (b"share/msg", Regular, b"hello"),
                (b"bin/msg", Symlink, b"../share/msg"),
            ]),
        );
        let tree = store.unpack(&a).unwrap();
        assert_eq!(tree, dir.path().join(format!("{}.d", a.hex())));
        assert_eq!(fs::read_to_string(tree.join("bin/msg")).unwrap(), "hello");
        let mode = fs::metadata(tree.join("bin/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755, "no set-id bit, no group/other write");
        // Unpacked once: a second call finds it.
        assert_eq!(store.unpack(&a).unwrap(), tree);
    }

    #[test]
    fn two_unpacks_of_one_tree_at_once_both_get_it_and_leave_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path(), 1 << 20);
        let a = stored(
            &store,
            &targz(&[(b"bin/app", tar::EntryType::Regular, b"#!/bin/sh\n")]),
        );
        let (s1, s2, a1, a2) = (store.clone(), store.clone(), a.clone(), a.clone());
        let t1 = std::thread::spawn(move || s1.unpack(&a1));
        let t2 = std::thread::spawn(move || s2.unpack(&a2));
        let (r1, r2) = (t1.join().unwrap().unwrap(), t2.join().unwrap().unwrap());
        assert_eq!(r1, r2);
        assert!(r1.join("bin/app").is_file());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(PARTIAL_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn a_tree_that_leaves_its_directory_is_refused_and_nothing_is_left() {
        use tar::EntryType::{Block, Link, Regular, Symlink};
        let cases: [(&str, Vec<u8>); 6] = [
            ("dot-dot path", targz(&[(b"../evil", Regular, b"x")])),
            ("absolute path", targz(&[(b"/tmp/evil", Regular, b"x")])),
            (
                "escaping symlink",
                targz(&[(b"a/up", Symlink, b"../../etc")]),
            ),
            ("absolute symlink", targz(&[(b"etc", Symlink, b"/etc")])),
            ("hard link", targz(&[(b"h", Link, b"x")])),
            ("device", targz(&[(b"dev", Block, b"")])),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = ArtifactStore::new(dir.path(), 1 << 20);
            let a = stored(&store, &bytes);
            let e = store.unpack(&a).unwrap_err();
            assert!(matches!(e, ArtifactError::Mismatch { .. }), "{what}: {e}");
            let left: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left, [std::ffi::OsString::from(a.hex())], "{what}");
        }
    }

    #[test]
    fn a_gzip_bomb_stops_at_its_expansion_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path(), 1 << 30);
        let zeros = vec![0u8; 8 << 20];
        let a = stored(&store, &targz(&[(b"big", tar::EntryType::Regular, &zeros)]));
        assert!(a.size < 1 << 20, "compresses well: {}", a.size);
        let e = store.unpack(&a).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    #[tokio::test]
    async fn without_a_broker_a_streamed_artifact_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path(), 1 << 20);
        let e = store.ensure(&artifact_of(b"x")).await.unwrap_err();
        assert!(e.to_string().contains("local mode"), "{e}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
