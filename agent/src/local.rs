//! Local mode: this host's units driven in-process through the agent's core
//! ([`Handler::decide`]), with no broker, no issuer and no running agent — what
//! `gearmq local install|start|…` runs.
//!
//! A local identity is made on first use in `STATE/local/`: an issuer key that never
//! leaves it, the host's key (the audit log's writer) and an operator's key (which signs
//! the requests); their credentials are issued afresh at every start. Every command is
//! a real signed request decided by the same core as the agent's — the same checks,
//! replay store, unit records and unit files — and answered with a real signed reply,
//! put on record in an audit log of the local identity's own, `STATE/local/audit.log`
//! (an agent's `STATE/audit.log` is its host key's chain, which no other writer may
//! extend). So `gearmq audit verify STATE/local/audit.log --issuer
//! STATE/local/issuer.pub` checks what was done locally like any agent's log, and a
//! stopped agent's state dir can be used locally without touching its log.
//!
//! A state dir has one owner at a time ([`StateLock`]): local mode refuses one that a
//! running agent (or another local command) holds.

use crate::actions::Services;
use crate::config::{Limits, SystemdSettings};
use crate::dispatch::Outcome;
use crate::fault::Fault;
use crate::handler::{Decision, Handler, PendingStream};
use crate::identity::HostIdentity;
use crate::replay::{ReplayStore, ensure_state_dir};
use crate::revocation::Revocations;
use crate::state_lock::{StateLock, StateLockError};
use crate::verifier::now_ms;
use gearmq_io::files::{self, FileError, load_signing_key};
use gearmq_schemas::actions::{ALL_ACTIONS, LogsResult};
use gearmq_schemas::audit::{AuditOptions, AuditSink, SinkOptions};
use gearmq_schemas::credential::Role;
use gearmq_schemas::{
    ActionName, Credential, Name, Reply, Request, Signed, SigningKey, Targets, TrustAnchors,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The operator name local requests are signed as.
pub const LOCAL_OPERATOR: &str = "local-operator";
/// How long the local credentials are valid from each start.
const CREDENTIAL_VALIDITY_MS: u64 = 366 * 24 * 3_600_000;

/// Why local mode could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The state dir is someone else's right now.
    #[error(transparent)]
    Locked(#[from] StateLockError),
    /// A key or credential file of the local identity.
    #[error(transparent)]
    File(#[from] FileError),
    /// Something else: the state dir, the audit log, a key.
    #[error("{0}")]
    Other(String),
}

/// This host, driven in-process.
pub struct LocalHost {
    handler: Arc<Handler>,
    operator_key: SigningKey,
    operator_credential: Vec<u8>,
    host: Name,
    state_dir: PathBuf,
    _lock: StateLock,
}

/// A local command's answer: the signed reply, and for `logs --follow` the stream to
/// read on.
pub struct LocalAnswer {
    /// The request's id.
    pub request_id: uuid::Uuid,
    /// The host's signed reply, decoded.
    pub reply: Reply,
    /// For a follow: where the unit's output continues.
    pub stream: Option<Box<PendingStream>>,
}

impl LocalHost {
    /// Takes `state_dir` (creating it and the local identity if missing), for units of
    /// the systemd instance `systemd`. `host` names this host in replies and the log.
    pub fn open(
        state_dir: &Path,
        systemd: &SystemdSettings,
        host: Name,
    ) -> Result<LocalHost, LocalError> {
        ensure_state_dir(state_dir).map_err(|e| LocalError::Other(e.to_string()))?;
        let lock = StateLock::acquire(state_dir)?;
        // Unit files name the output file by absolute path.
        let state_dir = std::fs::canonicalize(state_dir).map_err(|e| {
            LocalError::Other(format!("cannot resolve {}: {e}", state_dir.display()))
        })?;
        let id_dir = state_dir.join("local");
        ensure_state_dir(&id_dir).map_err(|e| LocalError::Other(e.to_string()))?;
        let issuer = key_file(&id_dir.join("issuer.key"))?;
        if !id_dir.join("issuer.pub").exists() {
            files::write_public_key(&id_dir.join("issuer.pub"), &issuer.public_key(), false)?;
        }
        let host_key = key_file(&id_dir.join("host.key"))?;
        let operator_key = key_file(&id_dir.join("operator.key"))?;
        let now = now_ms();
        let credential = |name: Name, role, key: &SigningKey| {
            let mut c = Credential::new(
                now,
                name,
                role,
                key.public_key(),
                now.saturating_sub(60_000),
                now + CREDENTIAL_VALIDITY_MS,
            );
            if role == Role::Operator {
                c.actions = ALL_ACTIONS
                    .iter()
                    .filter_map(|a| ActionName::new(*a).ok())
                    .collect();
            }
            c
        };
        let operator_name =
            Name::new(LOCAL_OPERATOR).map_err(|e| LocalError::Other(e.to_string()))?;
        let operator_credential =
            credential(operator_name, Role::Operator, &operator_key).issue(&issuer);
        let host_credential = credential(host.clone(), Role::Host, &host_key);
        let identity = HostIdentity {
            name: host.clone(),
            key: load_signing_key(&id_dir.join("host.key"))?,
            credential_bytes: host_credential.issue(&issuer),
            credential: host_credential,
            anchors: TrustAnchors::new(vec![issuer.public_key()]),
            sealing: None,
        };
        let limits = Limits::default();
        let (store, _) = ReplayStore::open(&state_dir, limits.max_stored_reply_bytes, now)
            .map_err(|e| LocalError::Other(e.to_string()))?;
        let revocations = Arc::new(Revocations::none());
        let services = Arc::new(Services::for_host(
            systemd,
            &state_dir,
            &limits,
            &identity,
            revocations.clone(),
        ));
        let audit = Arc::new(
            AuditSink::open(
                &id_dir.join("audit.log"),
                host_key,
                &identity.credential_bytes,
                AuditOptions::default(),
                SinkOptions::default(),
            )
            .map_err(|e| LocalError::Other(format!("audit log: {e}")))?,
        );
        let handler = Arc::new(Handler::for_host(
            identity,
            store,
            services,
            audit,
            &limits,
            Fault::None,
        ));
        Ok(LocalHost {
            handler,
            operator_key,
            operator_credential,
            host,
            state_dir,
            _lock: lock,
        })
    }

    /// Stores the local file `path` as artifact `a` in this host's store, so that an
    /// install shipping `a` finds it there (nothing is fetched).
    pub async fn import_artifact(
        &self,
        a: &gearmq_schemas::actions::Artifact,
        path: &Path,
    ) -> Result<PathBuf, crate::artifacts::ArtifactError> {
        let store = self.handler.services().artifacts.clone();
        let (a, path) = (a.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || store.import(&a, &path))
            .await
            .unwrap_or_else(|e| {
                Err(crate::artifacts::ArtifactError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// The state dir in use (resolved).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The host name replies carry.
    pub fn host(&self) -> &Name {
        &self.host
    }

    /// Signs a request for `action` with `args`, valid for `timeout`, and has the core
    /// decide it.
    pub async fn call(
        &self,
        action: &str,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<LocalAnswer, LocalError> {
        let caller = Name::new(LOCAL_OPERATOR).map_err(|e| LocalError::Other(e.to_string()))?;
        let now = now_ms();
        let request = Request::new(
            caller.clone(),
            now,
            now + gearmq_schemas::time::duration_ms(timeout),
            Targets::hosts([self.host.clone()]),
            gearmq_schemas::request::reply_queue_name(&caller, "local"),
            ActionName::new(action).map_err(|e| LocalError::Other(e.to_string()))?,
            args,
        );
        let bytes = Signed::seal(&request, &self.operator_key, &self.operator_credential);
        let Decision { reply, stream, .. } = self.handler.decide(&bytes).await;
        let Some(reply) = reply else {
            return Err(LocalError::Other(
                "the request was not answered (its record could not be written, or it could not be verified); see the log above".into(),
            ));
        };
        let (reply, _) = gearmq_schemas::audit::peek_signed::<Reply>(&reply.bytes, 1 << 20)
            .map_err(|e| LocalError::Other(format!("the reply does not decode: {e}")))?;
        Ok(LocalAnswer {
            request_id: request.id,
            reply,
            stream,
        })
    }

    /// New output of a followed unit at `position` (whole lines, at most one reply's
    /// worth); `position` moves past it.
    pub async fn read_output(
        &self,
        position: &mut crate::actions::logs::Position,
    ) -> Result<LogsResult, LocalError> {
        let services = self.handler.services().clone();
        crate::actions::logs::read_more(&services, position, false)
            .await
            .map_err(|e| LocalError::Other(e.to_string()))
    }

    /// Ends a followed stream: its outcome goes on record.
    pub async fn end_stream(&self, stream: Box<PendingStream>) {
        let outcome = Outcome::ok(gearmq_schemas::codec::encode(&LogsResult::default()));
        self.handler.record_outcome(stream.addr(), &outcome).await;
    }
}

/// The signing key at `path`, made (mode 0600) if missing.
fn key_file(path: &Path) -> Result<SigningKey, LocalError> {
    if !path.exists() {
        let (_, pkcs8) = SigningKey::generate().map_err(|e| LocalError::Other(e.to_string()))?;
        files::write_signing_key(path, &pkcs8, false)?;
    }
    Ok(load_signing_key(path)?)
}

/// The unit file `install` of `spec` would write under `state_dir` for `systemd`'s
/// manager, and its path, with the host's policy (loader variables, program prefixes)
/// applied as `install` applies it; nothing is written (`gearmq local install
/// --dry-run`).
pub fn render_install(
    state_dir: &Path,
    systemd: &SystemdSettings,
    spec: &gearmq_schemas::units::UnitSpec,
) -> Result<(PathBuf, String), LocalError> {
    spec.validate()
        .map_err(|e| LocalError::Other(e.to_string()))?;
    let policy = crate::actions::UnitPolicy::new(systemd);
    policy
        .check_env(spec.env.keys())
        .and_then(|()| policy.check_exec(&spec.exec))
        .map_err(|e| LocalError::Other(e.message))?;
    // Unit files name the output file by absolute path.
    let state_dir = if state_dir.is_absolute() {
        state_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| LocalError::Other(e.to_string()))?
            .join(state_dir)
    };
    let output = crate::unit_output::UnitOutput::new(&state_dir, 0).path(&spec.unit);
    let text = crate::systemd::render::render_unit(spec, &policy.render_settings(&output))
        .map_err(|e| LocalError::Other(e.to_string()))?;
    let path = crate::unit_files::UnitFiles::new(&systemd.unit_dir, &state_dir).path(&spec.unit);
    Ok((path, text))
}
