//! The orchestrator: a broker session that signs requests once, publishes them per
//! target and turns verified replies into per-host results.

use crate::audit::{AuditSink, MissingCount};
use crate::config::OrchestratorConfig;
use crate::correlate::{Correlator, Rejected, Rejection, Verdict, open_reply};
use crate::inventory::Inventory;
use crate::link::{InFlight, InFlightMap, Link, LinkSettings, Published};
use crate::outcome::{CallResult, HostResult};
use crate::tally::RejectTally;
use crate::watch::{EventWatch, WatchInputs, WatchOptions};
use futures_util::{FutureExt, StreamExt};
use gearmq_io::files::{FileError, load_credential, load_signing_key, load_trusted_issuers};
use gearmq_schemas::audit::Entry;
use gearmq_schemas::envelope::{Opened, Signed};
use gearmq_schemas::request::reply_queue_name;
use gearmq_schemas::time::{duration_ms, now_ms};
use gearmq_schemas::{
    ActionName, CredentialVerifier, LabelMatch, Name, Reply, Request, Role, SigningKey, Targets,
    TrustAnchors,
};
use lapin::BasicProperties;
use lapin::options::BasicAckOptions;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use gearmq_io::broker::redact_url;
pub use gearmq_io::topology::{CONTENT_TYPE, REPLIES_EXCHANGE, REQUESTS_EXCHANGE};

/// What can go wrong talking to the fleet (not per-host outcomes: those are results).
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// A key, credential or issuer file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The identity files do not fit together.
    #[error("{0}")]
    Identity(String),
    /// The inventory directory could not be read.
    #[error("cannot read inventory {path}: {source}")]
    Inventory {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No broker URL could be connected to.
    #[error("cannot connect to the broker ({urls}): {reason}")]
    Connect {
        /// The URLs tried, without passwords.
        urls: String,
        /// The last error.
        reason: String,
    },
    /// The broker refused an operation.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// A named broker operation failed or timed out.
    #[error("broker: {0}")]
    BrokerOperation(#[from] gearmq_io::topology::BrokerOpError),
    /// An argument the caller gave is invalid.
    #[error("{0}")]
    Invalid(String),
    /// An artifact could not be shipped through the broker.
    #[error("{0}")]
    Artifact(String),
    /// The audit log cannot be written (requests are not sent unaudited).
    #[error("audit log: {0}")]
    Audit(String),
}

/// Which hosts a call is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These hosts by name.
    Hosts(Vec<Name>),
    /// Every host in the inventory.
    All,
    /// Inventory hosts whose credential labels match every clause. The selector also
    /// travels signed, so each agent checks for itself that it is a target.
    Where(Vec<LabelMatch>),
    /// Whoever answers a broadcast on the `all` route (for fleets without an
    /// inventory). Enrolled hosts that stay silent are not listed; responders that are
    /// not enrolled are rejected, never results.
    Discover,
}

/// A selection resolved against the inventory: what is signed and who is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The target spec inside the signed request.
    pub signed: Targets,
    /// Enrolled hosts the request is published to, in name order.
    pub hosts: Vec<Name>,
    /// Named hosts that are not enrolled (reported as `no_reply` at once).
    pub unknown: Vec<Name>,
    /// Broadcast on the `all` route instead of per host.
    pub discover: bool,
}

impl Resolved {
    /// The same call to only `hosts` (a batch or a limit). What gets signed is decided
    /// when the request is made ([`Orchestrator::start_resolved`]): the selector or `all`
    /// only while the publish still reaches every host it denotes, else exactly `hosts`.
    pub fn subset(&self, hosts: Vec<Name>) -> Resolved {
        Resolved {
            signed: self.signed.clone(),
            hosts,
            unknown: Vec::new(),
            discover: self.discover,
        }
    }
}

/// What to ask.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Which hosts.
    pub selection: Selection,
    /// The action.
    pub action: ActionName,
    /// Its arguments, MessagePack-encoded.
    pub args: Vec<u8>,
    /// How long to wait for replies; the request expires then too.
    pub timeout: Duration,
}

/// Something that happened during a call, as it happened.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A host's final result.
    Host(HostResult),
    /// A non-final reply (streamed output) from a host.
    Partial {
        /// The host.
        host: Name,
        /// Its sequence number.
        seq: u32,
        /// The reply's data.
        data: Option<Vec<u8>>,
    },
    /// A reply was rejected.
    Rejected(Rejected),
}

enum Event {
    Reply(Box<Opened<Reply>>),
    Rejected(Rejected),
}

struct Shared {
    name: Name,
    key: SigningKey,
    credential: Vec<u8>,
    verifier: CredentialVerifier,
    correlator: Mutex<Correlator>,
    routes: Mutex<HashMap<Uuid, mpsc::Sender<Event>>>,
    rejections: Mutex<BTreeMap<Rejection, u64>>,
    max_message_bytes: usize,
    /// `defaults.persistent_reads`.
    persistent_reads: bool,
    /// `defaults.broadcast_min_hosts`.
    broadcast_min_hosts: usize,
    audit: Option<AuditSink>,
    in_flight: InFlightMap,
    /// Per call in progress: what its audit records need (see [`CallBook`]).
    books: Mutex<HashMap<Uuid, CallBook>>,
    /// Rejected replies tied to no call, counted past the first of each window.
    untied: Mutex<RejectTally>,
}

/// A call's audit bookkeeping: its rejected replies counted past the ones recorded one
/// by one, and its records the log could not take.
#[derive(Default)]
struct CallBook {
    tally: RejectTally,
    missing: MissingCount,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few map operations that cannot panic halfway in
    // a way that breaks an invariant, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected orchestrator. One per process; each has its own reply queue, so two
/// never take each other's replies.
pub struct Orchestrator {
    shared: Arc<Shared>,
    revocation_file: Option<std::path::PathBuf>,
    inventory: Inventory,
    link: Link,
    reply_queue: String,
    broker_user: String,
    token: Option<Vec<u8>>,
    role: Role,
    /// The broker was provisioned: declare nothing (the artifacts exchange exists).
    provisioned: bool,
    /// The `[broker]` section (an events watch connects on its own).
    broker: crate::config::BrokerConfig,
    /// `limits.clock_skew`.
    skew: Duration,
}

/// How long one artifact chunk may wait for the broker (declare, publish, confirm).
const ARTIFACT_OPERATION_LIMIT: Duration = Duration::from_secs(60);

impl Orchestrator {
    /// Loads identity and inventory, connects to the first reachable broker URL,
    /// declares this process's reply queue and starts taking replies.
    pub async fn connect(config: &OrchestratorConfig) -> Result<Self, OrchestratorError> {
        let name = Name::new(config.name.clone())
            .map_err(|e| OrchestratorError::Identity(format!("config name: {e}")))?;
        let issuers = load_trusted_issuers(&config.trusted_issuers)?;
        let key = load_signing_key(&config.key_file)?;
        let (cred, credential) = load_credential(&config.credential_file, &issuers)?;
        // An operator signs requests on its own rights; a host (a delegator's
        // client.toml) signs them too, and each must carry a delegation token.
        if cred.name != name {
            return Err(OrchestratorError::Identity(format!(
                "{} is a {} credential for {}, but this config's name is {name}",
                config.credential_file.display(),
                cred.role,
                cred.name
            )));
        }
        if cred.public_key != key.public_key() {
            return Err(OrchestratorError::Identity(format!(
                "{} does not hold the key of credential {}",
                config.key_file.display(),
                config.credential_file.display()
            )));
        }
        let inventory = Inventory::load(&config.inventory_dir, &issuers).map_err(|source| {
            OrchestratorError::Inventory {
                path: config.inventory_dir.display().to_string(),
                source,
            }
        })?;
        for s in inventory.skipped() {
            tracing::warn!(skipped = %s, "inventory entry not used");
        }

        let mut revocations = gearmq_schemas::revocation::Revocations::new();
        if let Some(path) = &config.revocation_file {
            let bytes = std::fs::read(path).map_err(|source| {
                OrchestratorError::File(FileError::Io {
                    action: "read",
                    path: path.clone(),
                    source,
                })
            })?;
            revocations.update(&bytes, &issuers).map_err(|e| {
                OrchestratorError::File(FileError::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            })?;
        }
        let audit = match &config.audit.file {
            Some(path) => Some(
                AuditSink::open(
                    path,
                    load_signing_key(&config.key_file)?,
                    &credential,
                    config.audit.max_bytes,
                )
                .map_err(|e| OrchestratorError::Audit(e.to_string()))?,
            ),
            None => None,
        };
        let instance = format!("{:08x}", rand::random::<u32>());
        let reply_queue = reply_queue_name(&name, &instance);
        let mut correlator = Correlator::new(
            config.limits.finished_retention,
            config.broker.require_user_id(),
            config.limits.clock_skew,
        );
        correlator.set_revocations(revocations);
        let shared = Arc::new(Shared {
            name,
            key,
            credential,
            verifier: CredentialVerifier::new(TrustAnchors::new(issuers), 100_000),
            correlator: Mutex::new(correlator),
            routes: Mutex::new(HashMap::new()),
            rejections: Mutex::new(BTreeMap::new()),
            max_message_bytes: config.limits.max_message_bytes,
            persistent_reads: config.defaults.persistent_reads,
            broadcast_min_hosts: config.defaults.broadcast_min_hosts,
            audit,
            in_flight: InFlightMap::default(),
            books: Mutex::new(HashMap::new()),
            untied: Mutex::new(RejectTally::default()),
        });
        let taker = shared.clone();
        let link = Link::open(
            LinkSettings {
                broker: config.broker.clone(),
                name: shared.name.clone(),
                reply_queue: reply_queue.clone(),
                consumer_tag: format!("gearmq-{instance}"),
            },
            Arc::new(move |consumer| Box::pin(take_replies(taker.clone(), consumer))),
            shared.in_flight.clone(),
        )
        .await?;
        let url = link.url();
        let broker_user = config.broker.user_for(&url);
        tracing::debug!(queue = %reply_queue, broker = %redact_url(&url), "orchestrator connected");
        Ok(Orchestrator {
            shared,
            revocation_file: config.revocation_file.clone(),
            inventory,
            link,
            reply_queue,
            broker_user,
            token: None,
            role: cred.role,
            provisioned: config.broker.provisioned,
            broker: config.broker.clone(),
            skew: config.limits.clock_skew,
        })
    }

    /// Attaches a sealed delegation token to every request from now on (a host calling
    /// another host as itself; the token says what it may ask).
    pub fn set_token(&mut self, token: Vec<u8>) {
        self.token = Some(token);
    }

    /// The role of this process's credential (operator, or host for a delegator).
    pub fn role(&self) -> Role {
        self.role
    }

    /// The enrolled hosts.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// This process's reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// The operator name requests are signed as.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// Takes a newer revocation list (from a file reloaded or pushed); an older one is
    /// refused. Returns the sequence now held.
    pub fn update_revocations(&self, bytes: &[u8]) -> Result<u64, OrchestratorError> {
        let trusted = self.shared.verifier.anchors().issuers().to_vec();
        lock(&self.shared.correlator)
            .revocations_mut()
            .update(bytes, &trusted)
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))
    }

    /// Re-reads the configured `revocation_file` (for a long-running orchestrator on
    /// SIGHUP): a newer list is taken, an older or equal one is refused.
    pub fn reload_revocations(&self) -> Result<u64, OrchestratorError> {
        let Some(path) = &self.revocation_file else {
            return Err(OrchestratorError::Invalid(
                "no revocation_file is configured".into(),
            ));
        };
        let bytes = std::fs::read(path).map_err(|source| {
            OrchestratorError::File(FileError::Io {
                action: "read",
                path: path.clone(),
                source,
            })
        })?;
        self.update_revocations(&bytes)
    }

    /// Replies rejected so far by this orchestrator, by reason (including those that
    /// could not be tied to a call).
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.shared.rejections)
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect()
    }

    /// Watches the fleet's signed events (started, alive, stopping, unit) on a
    /// connection of its own: reads those of the last `options.since` first, then
    /// follows the stream. Only verified events are yielded; the rest are counted by
    /// reason ([`EventWatch::rejections`]). [`EventWatch::presence`] gives each
    /// inventory host's presence.
    pub async fn events(&self, options: WatchOptions) -> Result<EventWatch, OrchestratorError> {
        let shared = self.shared.clone();
        let inputs = WatchInputs {
            broker: self.broker.clone(),
            name: self.shared.name.clone(),
            inventory: self.inventory.names().into_iter().collect(),
            verifier: Arc::new(CredentialVerifier::new(
                self.shared.verifier.anchors().clone(),
                100_000,
            )),
            revoked: Arc::new(move |c| lock(&shared.correlator).revocations_mut().revokes(c)),
            audit: self.shared.audit.clone(),
            max_message_bytes: self.shared.max_message_bytes,
            skew: self.skew,
        };
        EventWatch::start(inputs, options).await
    }

    /// Signs and publishes a request and collects every target's result.
    pub async fn request(&self, spec: CallSpec) -> Result<CallResult, OrchestratorError> {
        Ok(self.start(spec).await?.finish().await)
    }

    /// Signs the request once, publishes the same bytes to each target host's route and
    /// returns a [`Call`] that yields results as they arrive.
    pub async fn start(&self, spec: CallSpec) -> Result<Call, OrchestratorError> {
        let resolved = self.resolve(&spec.selection)?;
        self.start_resolved(&resolved, spec.action, spec.args, spec.timeout)
            .await
    }

    /// Resolves a selection against the inventory (no I/O).
    pub fn resolve(&self, selection: &Selection) -> Result<Resolved, OrchestratorError> {
        let mut unknown = Vec::new();
        let (signed, hosts, discover) = match selection {
            Selection::Hosts(h) => {
                let set: BTreeSet<Name> = h.iter().cloned().collect();
                if set.is_empty() {
                    return Err(OrchestratorError::Invalid("no target hosts given".into()));
                }
                let list: Vec<Name> = set.into_iter().collect();
                let mut known = Vec::new();
                for n in &list {
                    if self.inventory.get(n).is_some() {
                        known.push(n.clone());
                    } else {
                        unknown.push(n.clone());
                    }
                }
                (Targets::Hosts(list), known, false)
            }
            Selection::All => (Targets::All, self.inventory.names(), false),
            Selection::Where(clauses) => {
                let spec = Targets::Selector(clauses.clone());
                // The same rules the agents apply to the signed request.
                gearmq_schemas::codec::decode::<Targets>(
                    "selector",
                    &gearmq_schemas::codec::encode(&spec),
                    64 * 1024,
                )
                .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
                if let Targets::Selector(c) = &spec {
                    for m in c {
                        if m.op == gearmq_schemas::MatchOp::Regex {
                            gearmq_schemas::request::compile_selector_regex(&m.value)
                                .map_err(OrchestratorError::Invalid)?;
                        }
                    }
                }
                let hosts = self
                    .inventory
                    .hosts()
                    .filter(|(n, h)| spec.includes(n, &h.credential.labels))
                    .map(|(n, _)| n.clone())
                    .collect();
                (spec, hosts, false)
            }
            Selection::Discover => (Targets::All, self.inventory.names(), true),
        };
        Ok(Resolved {
            signed,
            hosts,
            unknown,
            discover,
        })
    }

    /// What a request for `resolved` signs as its targets: exactly whom the publish
    /// means to reach. A selector or `all` is signed only when the call goes to every
    /// inventory host it denotes (a copy forwarded to another host's queue then reaches
    /// nobody outside it); a call narrowed by a limit or a batch signs its explicit host
    /// list, so a copy forwarded to a host outside it is not for that host.
    fn signed_targets(&self, resolved: &Resolved) -> Result<Targets, OrchestratorError> {
        if resolved.discover {
            // Broadcast on the `all` route: it does reach every host.
            return Ok(Targets::All);
        }
        let reach: BTreeSet<&Name> = resolved.hosts.iter().chain(&resolved.unknown).collect();
        if self.inventory.denotes_exactly(&resolved.signed, &reach) {
            return Ok(resolved.signed.clone());
        }
        if reach.is_empty() {
            return Err(OrchestratorError::Invalid("no target hosts given".into()));
        }
        if reach.len() > gearmq_schemas::request::MAX_TARGET_HOSTS {
            return Err(OrchestratorError::Invalid(format!(
                "a call narrowed to part of its selection names its hosts, at most {} \
                 (this one has {}): use a smaller --batch",
                gearmq_schemas::request::MAX_TARGET_HOSTS,
                reach.len()
            )));
        }
        Ok(Targets::hosts(reach.into_iter().cloned()))
    }

    /// Signs and publishes a request for an already resolved selection (a batch, or a
    /// limited subset): see [`Resolved::subset`] for what is signed.
    pub async fn start_resolved(
        &self,
        resolved: &Resolved,
        action: ActionName,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<Call, OrchestratorError> {
        if self.role == Role::Host && self.token.is_none() {
            return Err(OrchestratorError::Identity(format!(
                "{} signs as a host: a host may only make delegated requests (set a token first)",
                self.shared.name
            )));
        }
        let spec = CallSpec {
            selection: Selection::Discover,
            action,
            args,
            timeout,
        };
        let started = Instant::now();
        let mut results = BTreeMap::new();
        for h in &resolved.unknown {
            let r = HostResult::no_reply(h.clone(), "unknown host: not in the inventory");
            results.insert(h.clone(), r);
        }
        let signed_targets = self.signed_targets(resolved)?;
        let targets: BTreeSet<Name> = resolved.hosts.iter().cloned().collect();
        let one_publish = resolved.discover
            || publishes_once(
                &signed_targets,
                targets.len(),
                self.inventory.len(),
                self.shared.broadcast_min_hosts,
                self.token.is_some() || self.role == Role::Host,
            );
        let issued_at = now_ms();
        let mut request = Request::new(
            self.shared.name.clone(),
            issued_at,
            issued_at.saturating_add(duration_ms(spec.timeout)),
            signed_targets,
            self.reply_queue.clone(),
            spec.action.clone(),
            spec.args,
        );
        request.id = Uuid::now_v7();
        request.token = self.token.clone().map(serde_bytes::ByteBuf::from);
        let body = gearmq_schemas::codec::encode(&request);
        let digest = gearmq_schemas::sha256(&body);
        let bytes = Signed::seal_bytes(
            gearmq_schemas::Context::Request,
            body,
            &self.shared.key,
            &self.shared.credential,
        );
        // Agents refuse (dead-letter) a message over their limit; say so here instead.
        if bytes.len() > self.shared.max_message_bytes {
            return Err(OrchestratorError::Invalid(format!(
                "the signed request is {} bytes, over limits.max_message_bytes ({}); \
                 a narrowed call names its hosts: use a smaller --batch or fewer arguments",
                bytes.len(),
                self.shared.max_message_bytes
            )));
        }

        // The request is on record before any host can see it.
        if let Some(audit) = &self.shared.audit {
            audit
                .record_now(Entry::request_sent(&bytes))
                .await
                .map_err(|e| OrchestratorError::Audit(e.to_string()))?;
        }
        // Room for every target's final reply: the reply consumer waits when this is
        // full, and while it waits lapin delivers nothing on the connection, not even
        // the publisher confirms this call is still waiting for (a deadlock past 1,024
        // targets).
        let (tx, rx) = mpsc::channel(targets.len().saturating_add(64).max(1024));
        lock(&self.shared.routes).insert(request.id, tx);
        let audit_missing = MissingCount::default();
        lock(&self.shared.books).insert(
            request.id,
            CallBook {
                tally: RejectTally::default(),
                missing: audit_missing.clone(),
            },
        );
        lock(&self.shared.correlator).register(request.id, digest, targets.clone());

        let mut props = BasicProperties::default()
            .with_delivery_mode(delivery_mode(
                request.action.as_str(),
                self.shared.persistent_reads,
            ))
            .with_content_type(CONTENT_TYPE.into())
            .with_correlation_id(request.id.to_string().into())
            .with_reply_to(self.reply_queue.as_str().into());
        // The broker checks user_id against the login; without a known user (EXTERNAL
        // and no `broker.user`) it is left out rather than guessed.
        if !self.broker_user.is_empty() {
            props = props.with_user_id(self.broker_user.as_str().into());
        }
        let deadline = started + spec.timeout;
        let routes: Vec<(Option<Name>, String)> = if one_publish {
            vec![(None, "all".to_string())]
        } else {
            targets
                .iter()
                .map(|h| (Some(h.clone()), format!("host.{h}")))
                .collect()
        };
        let keys: Vec<String> = routes.iter().map(|(_, k)| k.clone()).collect();
        // Tracked before publishing: a reconnect republishes it to every route.
        lock(&self.shared.in_flight).insert(
            request.id,
            InFlight {
                bytes: Arc::new(bytes.clone()),
                props: props.clone(),
                routes: keys.clone(),
            },
        );
        let published = self.link.publish(&keys, &bytes, &props, deadline).await;
        if one_publish && !resolved.discover {
            // One publish for every target: what became of it is theirs alike, except a
            // nack (some host queue refused it, full): the others still answer.
            let reason = match published.first() {
                Some(Published::Unroutable) => {
                    Some("not routable: no host queue is bound to the all route")
                }
                Some(Published::Unreachable) => {
                    Some("the broker was unreachable until the deadline")
                }
                Some(Published::Refused) => {
                    tracing::warn!(id = %request.id, "a host queue refused the request (full?); the hosts whose queues took it still answer");
                    None
                }
                _ => None,
            };
            if let Some(reason) = reason {
                for h in &targets {
                    results.insert(h.clone(), HostResult::no_reply(h.clone(), reason));
                }
            }
        }
        for ((host, _), outcome) in routes.into_iter().zip(published) {
            let unroutable = match outcome {
                Published::Delivered | Published::Pending => None,
                Published::Unroutable => Some(match &host {
                    Some(h) => format!(
                        "not routable: no queue is bound for host.{h} (agent never started?)"
                    ),
                    None => "not routable: no host queue is bound to the all route".into(),
                }),
                Published::Refused => {
                    Some("the broker refused the request until the deadline".to_string())
                }
                Published::Unreachable => {
                    Some("the broker was unreachable until the deadline".to_string())
                }
            };
            match (unroutable, host) {
                (Some(reason), Some(h)) => {
                    results.insert(h.clone(), HostResult::no_reply(h, reason));
                }
                (Some(reason), None) => {
                    tracing::warn!(%reason, "request on the all route not delivered")
                }
                (None, _) => {}
            }
        }
        let waiting: BTreeSet<Name> = targets
            .into_iter()
            .filter(|h| !results.contains_key(h))
            .collect();
        tracing::debug!(id = %request.id, action = %request.action, targets = waiting.len(), "request published");
        Ok(Call {
            id: request.id,
            digest,
            action: spec.action,
            rx,
            shared: self.shared.clone(),
            started,
            deadline,
            results,
            waiting,
            pending_results: Vec::new(),
            done: false,
            discover: resolved.discover,
            audit_missing,
        })
    }

    /// Publishes the bytes of `path` — which must be `a`'s: the caller took its digest
    /// and size — into `a`'s stream on the broker, once for every host a later install
    /// request shipping `a` without a URL reaches. Read a chunk at a time, never whole;
    /// `progress` is told the bytes the broker has confirmed. Call it before publishing
    /// the request: agents read the stream when the request arrives.
    pub async fn ship_artifact(
        &self,
        path: &std::path::Path,
        a: &gearmq_schemas::actions::Artifact,
        progress: impl FnMut(u64),
    ) -> Result<(), OrchestratorError> {
        let channel = self
            .link
            .channel(Instant::now() + ARTIFACT_OPERATION_LIMIT)
            .await
            .ok_or_else(|| OrchestratorError::Artifact("the broker is unreachable".into()))?;
        gearmq_io::artifact_stream::publish(
            &channel,
            path,
            &a.hex(),
            a.size,
            self.provisioned,
            ARTIFACT_OPERATION_LIMIT,
            progress,
        )
        .await
        .map_err(|e| {
            // A channel closed by a refusal is not reused.
            self.link.report_broken();
            OrchestratorError::Artifact(format!(
                "cannot ship {} to broker stream {}: {e}",
                path.display(),
                gearmq_schemas::actions::artifact_stream(&a.hex())
            ))
        })
    }

    /// Waits until every audit record so far is written and synced.
    pub async fn flush_audit(&self) -> Result<(), OrchestratorError> {
        match &self.shared.audit {
            Some(a) => a.flush().await.map_err(OrchestratorError::Audit),
            None => Ok(()),
        }
    }

    /// Closes the broker connection (the reply queue goes with it), after the audit log
    /// is synced (with the summary of rejected replies tied to no call, if any).
    pub async fn close(self) {
        let untied = lock(&self.shared.untied).summary(None);
        if let (Some(audit), Some(entry)) = (&self.shared.audit, untied)
            && let Err(e) = audit.record_now(entry).await
        {
            tracing::error!(error = %e, "summary of rejected replies not recorded");
        }
        if let Err(e) = self.flush_audit().await {
            tracing::error!(error = %e, "audit log not flushed");
        }
        self.link.close().await;
    }

    /// How many times the broker link was re-established since connecting.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects()
    }
}

/// Replies being opened at once: opening one (credential chain, signature) is most of
/// its CPU, and a fan-out's replies arrive together, so each is opened in a task of its
/// own on the runtime's threads. As many as the broker delivers unacked (the
/// prefetch): fewer would make the hop to a busy runtime thread the pace of the whole
/// pipeline.
const REPLY_OPENERS: usize = crate::link::REPLY_PREFETCH as usize;

async fn take_replies(shared: Arc<Shared>, consumer: lapin::Consumer) {
    // Opened in parallel on the runtime's threads, judged in delivery order: the
    // correlator takes a host's streamed replies only in increasing `seq`.
    let opener = shared.clone();
    let mut opened = consumer
        .map(move |delivery| {
            let shared = opener.clone();
            tokio::spawn(async move {
                let delivery = delivery?;
                let opened = open_reply(&delivery.data, shared.max_message_bytes, &shared.verifier);
                Ok::<_, lapin::Error>((delivery, opened))
            })
        })
        .buffered(REPLY_OPENERS);
    // Acked in batches (`multiple`: the channel carries this consumer only, and
    // deliveries are judged in order): one frame for every reply already judged when
    // the next is not yet opened, or every ACK_BATCH replies.
    let mut unacked: Option<lapin::Acker> = None;
    let mut batch = 0usize;
    let mut ahead = None;
    loop {
        let next = match ahead.take() {
            Some(n) => n,
            None => match opened.next().await {
                Some(n) => n,
                None => break,
            },
        };
        let (delivery, opened_reply) = match next {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reply consumer stopped");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reply opener failed");
                break;
            }
        };
        let user_id = delivery
            .properties
            .user_id()
            .as_ref()
            .map(|s| s.as_str().to_string());
        let verdict = lock(&shared.correlator).judge(
            opened_reply,
            user_id.as_deref(),
            now_ms(),
            Instant::now(),
        );
        let on_its_own =
            record_verdict(&shared, &verdict, &delivery.data, user_id.as_deref()).await;
        let (id, event) = match verdict {
            Verdict::Accepted(a) => (Some(a.request_id), Event::Reply(Box::new(a.reply))),
            Verdict::Rejected(r) => {
                *lock(&shared.rejections).entry(r.reason).or_default() += 1;
                // Logged like they are recorded: the first of a call (or window) one by
                // one, the rest only counted (a flood must not flood the log either).
                if !on_its_own {
                    tracing::debug!(reason = r.reason.as_str(), detail = %r.detail, "reply rejected (counted)");
                } else if r.reason.is_security() {
                    tracing::warn!(reason = r.reason.as_str(), detail = %r.detail, broker_user = user_id.as_deref().unwrap_or("-"), "reply rejected");
                } else {
                    tracing::info!(reason = r.reason.as_str(), detail = %r.detail, "reply not taken");
                }
                (r.request_id, Event::Rejected(r))
            }
        };
        if let Some(id) = id {
            let tx = lock(&shared.routes).get(&id).cloned();
            if let Some(tx) = tx {
                match event {
                    // Accepted replies are few per call (one final per target); wait.
                    Event::Reply(_) => {
                        let _ = tx.send(event).await;
                    }
                    // Rejections are counted already; their events may be dropped under load.
                    Event::Rejected(_) => {
                        let _ = tx.try_send(event);
                    }
                }
            }
        }
        // Judged and on its way to the log: the broker may deliver the next one. Unacked
        // deliveries are bounded by the prefetch; the rest wait in the bounded queue.
        unacked = Some(delivery.acker);
        batch += 1;
        let ended = match opened.next().now_or_never() {
            Some(Some(n)) => {
                ahead = Some(n);
                false
            }
            Some(None) => true,
            None => {
                batch = ACK_BATCH;
                false
            }
        };
        if ended || batch >= ACK_BATCH {
            ack_up_to(unacked.take()).await;
            batch = 0;
        }
        if ended {
            break;
        }
    }
    ack_up_to(unacked.take()).await;
}

/// Replies judged before one ack covers them all (well under the prefetch).
const ACK_BATCH: usize = 64;

/// Acks every delivery up to and including `acker`'s.
async fn ack_up_to(acker: Option<lapin::Acker>) {
    if let Some(acker) = acker {
        let opts = BasicAckOptions { multiple: true };
        if let Err(e) = acker.ack(opts).await {
            tracing::debug!(error = %e, "reply ack failed (the connection is going)");
        }
    }
}

/// Puts a verdict on record. An accepted reply always gets its record (waiting for room
/// in the writer's queue). A rejected one gets a `reply_rejected` record of its own if
/// it is among the first [`crate::tally::RECORDED_PER_CALL`] of its call (or window,
/// for those tied to no call) and the queue has room; otherwise it is counted for the
/// call's `replies_rejected` summary, so a flood costs the log a bounded number of
/// records and none goes unaccounted. Returns whether a rejected reply was among those
/// first ones (without an audit log: the same count decides).
async fn record_verdict(
    shared: &Shared,
    verdict: &Verdict,
    message: &[u8],
    user_id: Option<&str>,
) -> bool {
    let now = now_ms();
    let audit = shared.audit.as_ref();
    match verdict {
        Verdict::Accepted(a) => {
            let missing = lock(&shared.books)
                .get(&a.request_id)
                .map(|b| b.missing.clone());
            if let Some(audit) = audit {
                audit
                    .record_waiting(Entry::reply_accepted(message), missing)
                    .await;
            }
            true
        }
        Verdict::Rejected(r) => {
            let reason = r.reason.as_str();
            let mut summary = None;
            let on_its_own;
            {
                let mut books = lock(&shared.books);
                let mut untied = lock(&shared.untied);
                let (tally, missing) = match r.request_id.and_then(|id| books.get_mut(&id)) {
                    Some(b) => (&mut b.tally, Some(b.missing.clone())),
                    None => {
                        if untied.window_over(now) {
                            summary = untied.summary(None);
                        }
                        (&mut *untied, None)
                    }
                };
                on_its_own = tally.admit(now);
                let recorded = on_its_own
                    && audit.is_none_or(|a| {
                        a.try_record(Entry::reply_rejected(message, reason, user_id), missing)
                    });
                if !recorded {
                    tally.count(reason, message.len(), now);
                }
            }
            if let (Some(audit), Some(entry)) = (audit, summary) {
                audit.record_waiting(entry, None).await;
            }
            on_its_own
        }
    }
}

/// A request in flight. Yields results as they arrive; ends when every target has
/// answered or the deadline passes.
pub struct Call {
    id: Uuid,
    digest: [u8; 32],
    action: ActionName,
    rx: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
    results: BTreeMap<Name, HostResult>,
    waiting: BTreeSet<Name>,
    pending_results: Vec<HostResult>,
    done: bool,
    discover: bool,
    audit_missing: MissingCount,
}

impl Call {
    /// The request id.
    pub fn request_id(&self) -> Uuid {
        self.id
    }

    /// SHA-256 of the request body bytes (what replies must carry).
    pub fn request_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Hosts that have not answered yet.
    pub fn waiting(&self) -> &BTreeSet<Name> {
        &self.waiting
    }

    /// Results known so far (including hosts that could not be reached at all).
    pub fn results(&self) -> impl Iterator<Item = &HostResult> {
        self.results.values()
    }

    /// The next thing that happens, or `None` once every target has answered or the
    /// deadline has passed.
    pub async fn next(&mut self) -> Option<Progress> {
        if let Some(r) = self.pending_results.pop() {
            return Some(Progress::Host(r));
        }
        // A discovery never knows who else may answer: it runs to its deadline.
        if self.done || (self.waiting.is_empty() && !self.discover) {
            self.done = true;
            return None;
        }
        let ev = match tokio::time::timeout_at(self.deadline.into(), self.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => {
                self.done = true;
                return None;
            }
        };
        match ev {
            Event::Rejected(r) => Some(Progress::Rejected(r)),
            Event::Reply(opened) => {
                let reply = opened.body();
                if !reply.is_final {
                    return Some(Progress::Partial {
                        host: reply.host.clone(),
                        seq: reply.seq,
                        data: reply.data.as_ref().map(|d| d.to_vec()),
                    });
                }
                self.waiting.remove(&reply.host);
                let r = HostResult::from_reply(reply, self.started.elapsed());
                self.results.insert(r.host.clone(), r.clone());
                Some(Progress::Host(r))
            }
        }
    }

    /// Waits for the rest and returns every target's result (the audit log synced,
    /// with the summary of the rejected replies not recorded one by one). Records the
    /// log could not take are counted in the summary's `audit_missing`.
    pub async fn finish(mut self) -> CallResult {
        while self.next().await.is_some() {}
        let (rejected, tally) = self.end();
        if let Some(audit) = &self.shared.audit {
            if let Some(entry) = tally
                && let Err(e) = audit.record_now(entry).await
            {
                tracing::error!(error = %e, "summary of rejected replies not recorded");
                self.audit_missing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Err(e) = audit.flush().await {
                tracing::error!(error = %e, "audit log not flushed");
                self.audit_missing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut results: Vec<HostResult> =
            std::mem::take(&mut self.results).into_values().collect();
        // In a discovery, silent hosts were never targets; otherwise they are no_reply.
        if !self.discover {
            for h in std::mem::take(&mut self.waiting) {
                results.push(HostResult::no_reply(h, "no reply before the deadline"));
            }
        }
        let mut result = CallResult::new(
            self.id,
            self.action.clone(),
            results,
            rejected,
            self.started.elapsed(),
        );
        result.summary.audit_missing = self
            .audit_missing
            .load(std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Forgets the call; returns its rejections by reason and the summary record of
    /// those counted without a record of their own.
    fn end(&mut self) -> (BTreeMap<String, u64>, Option<Entry>) {
        lock(&self.shared.routes).remove(&self.id);
        lock(&self.shared.in_flight).remove(&self.id);
        let summary = lock(&self.shared.books)
            .remove(&self.id)
            .and_then(|mut b| b.tally.summary(Some(self.id)));
        let rejected = lock(&self.shared.correlator)
            .finish(self.id, Instant::now())
            .into_iter()
            .map(|(r, n)| (r.as_str().to_string(), n))
            .collect();
        (rejected, summary)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Idempotent: a finished call was already removed.
        lock(&self.shared.routes).remove(&self.id);
        lock(&self.shared.in_flight).remove(&self.id);
        lock(&self.shared.correlator).finish(self.id, Instant::now());
        // A call dropped unfinished: its summary goes to the log without waiting.
        let summary = lock(&self.shared.books)
            .remove(&self.id)
            .and_then(|mut b| b.tally.summary(Some(self.id)));
        if let (Some(audit), Some(entry)) = (&self.shared.audit, summary) {
            audit.record_later(entry);
        }
    }
}

/// Whether a request signed for `signed`, meant for `targets` of `inventory` hosts,
/// goes out as one publish on the `all` route (`defaults.broadcast_min_hosts` = `min`;
/// 0 never) instead of one per host. Only where what is signed still denotes exactly
/// the intended hosts among every host bound to `all`, each agent judging it for
/// itself: `all` (signed only for a call to every inventory host); a selector holding
/// at least half the inventory; or a host list holding at least half of it, every name
/// an inventory host (a name outside it would be reached through `all` after the
/// caller reported it unknown). At half or more, one copy per bound host is no more
/// than twice the copies needed, and for a host list no more bytes than one publish
/// per host: T copies of a T-name list cost the broker 2·T² names in and out against
/// (1 + I)·T for one publish to I hosts (each host still receives all T names).
/// Never a `delegated` call (a host may publish to single hosts only).
pub fn publishes_once(
    signed: &Targets,
    targets: usize,
    inventory: usize,
    min: usize,
    delegated: bool,
) -> bool {
    if min == 0 || targets < min || delegated {
        return false;
    }
    match signed {
        Targets::All => true,
        Targets::Selector(_) => targets.saturating_mul(2) >= inventory,
        Targets::Hosts(names) => names.len() == targets && targets.saturating_mul(2) >= inventory,
    }
}

/// The AMQP delivery mode of a request for `action`: 2 (persistent) for the actions
/// that change a host, 1 (transient) for those that only read unless `persistent_reads`.
///
/// Why reads may be transient (RELIABILITY.md, "What a request's durability buys"): a
/// request lives seconds; a broker that loses a transient read in a restart also drops
/// this process's connection, and the reconnect publishes every call in flight again,
/// byte for byte; the agent's replay store answers a copy it has seen from the stored
/// reply. A persistent message costs the broker a disk write before its confirm.
pub fn delivery_mode(action: &str, persistent_reads: bool) -> u8 {
    if persistent_reads || !gearmq_schemas::actions::READ_ONLY_ACTIONS.contains(&action) {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::{delivery_mode, publishes_once};
    use gearmq_schemas::{LabelMatch, MatchOp, Name, Targets};

    #[test]
    fn whole_fleet_and_large_label_calls_publish_once() {
        let selector = Targets::Selector(vec![LabelMatch {
            key: "role".into(),
            op: MatchOp::Eq,
            value: "web".into(),
        }]);
        let list = |n: usize| Targets::hosts((0..n).map(|i| Name::new(format!("h{i}")).unwrap()));
        // The whole inventory, at or above the threshold.
        assert!(publishes_once(&Targets::All, 32, 32, 32, false));
        assert!(!publishes_once(&Targets::All, 31, 31, 32, false));
        // Off, or delegated.
        assert!(!publishes_once(&Targets::All, 5000, 5000, 0, false));
        assert!(!publishes_once(&Targets::All, 5000, 5000, 32, true));
        // A selector: only when it holds half the inventory or more.
        assert!(publishes_once(&selector, 500, 1000, 32, false));
        assert!(!publishes_once(&selector, 499, 1000, 32, false));
        // A host list likewise, when every name it signs is a target (an inventory
        // host): a name outside the inventory must not be reached through `all`.
        assert!(publishes_once(&list(500), 500, 1000, 32, false));
        assert!(!publishes_once(&list(499), 499, 1000, 32, false));
        assert!(!publishes_once(&list(501), 500, 1000, 32, false));
        assert!(!publishes_once(&list(31), 31, 31, 32, false));
        assert!(!publishes_once(&list(1000), 1000, 1000, 32, true));
    }

    #[test]
    fn reads_are_transient_and_mutations_persistent() {
        for read in gearmq_schemas::actions::READ_ONLY_ACTIONS {
            assert_eq!(delivery_mode(read, false), 1, "{read}");
            assert_eq!(delivery_mode(read, true), 2, "{read}");
        }
        for change in [
            "install", "start", "stop", "restart", "reload", "delete", "enable",
        ] {
            assert_eq!(delivery_mode(change, false), 2, "{change}");
        }
    }
}
