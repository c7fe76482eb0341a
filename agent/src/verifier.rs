//! The request verification pipeline, in the order of docs/DESIGN.md, Request
//! lifecycle step 2.
//!
//! `open` (size → envelope → credential chain → signature → body) gives an
//! [`OpenedRequest`] or an [`Unproven`] (never answered: the sender is unknown).
//! `screen` (target → revocation → windows → lifetime) gives a [`CheckedRequest`], a
//! silent "not a target", or a [`Refusal`] to answer. The replay store runs next (in the
//! handler), then `authorize` (role and policy) builds the [`VerifiedRequest`] — the
//! only way to get one, and the only thing the dispatcher accepts.

use crate::revocation::Revocations;
use crate::stats::Reason;
use gearmq_schemas::credential::CredentialError;
use gearmq_schemas::envelope::{self, Opened};
use gearmq_schemas::time::Millis;
use gearmq_schemas::token::{self, MintedBy, Presented, SealingKey, TokenError, Unsealed};
use gearmq_schemas::{
    ActionName, Credential, CredentialVerifier, Name, Request, Role, Status, TrustAnchors,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use uuid::Uuid;

/// How many verified credentials to cache (operators and orchestrators of a fleet).
const CREDENTIAL_CACHE: usize = 1024;

/// A message that failed before its sender was proven: dead-lettered, never answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unproven {
    /// The counter label.
    pub reason: Reason,
    /// What was wrong, for the log.
    pub detail: String,
}

/// A proven request refused after its signature was checked: answered with a signed
/// error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reply status.
    pub status: Status,
    /// The counter label.
    pub reason: Reason,
    /// The reply's error message, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status`, counted as `reason`.
    pub fn new(status: Status, reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Where and how to answer a request whose signature holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    /// The request id (the reply's `request_id` and `correlation_id`).
    pub request_id: Uuid,
    /// SHA-256 of the request body bytes (the reply's `request_digest`).
    pub digest: [u8; 32],
    /// The reply queue name, used as routing key on `gearmq.replies`.
    pub reply_to: String,
    /// Who asked.
    pub caller: Name,
    /// What was asked.
    pub action: ActionName,
    /// When the request stops being valid.
    pub expires_at: Millis,
}

/// Steps 1–2 passed: signature proven, body decoded. Nothing else is checked yet.
#[derive(Debug)]
pub struct OpenedRequest(Opened<Request>);

impl OpenedRequest {
    /// The address to answer at; trustworthy because it is inside the signature.
    pub fn reply_address(&self) -> ReplyAddress {
        let r = self.0.body();
        ReplyAddress {
            request_id: r.id,
            digest: *self.0.digest(),
            reply_to: r.reply_to.clone(),
            caller: r.caller.clone(),
            action: r.action.clone(),
            expires_at: r.expires_at,
        }
    }

    /// The signer's name (for logs).
    pub fn signer_name(&self) -> &Name {
        &self.0.signer().name
    }
}

/// Steps 1–5 passed: proven, addressed to this host, not revoked, inside its windows.
#[derive(Debug)]
pub struct CheckedRequest(Opened<Request>);

impl CheckedRequest {
    /// The request id.
    pub fn id(&self) -> Uuid {
        self.0.body().id
    }
    /// SHA-256 of the body bytes.
    pub fn digest(&self) -> &[u8; 32] {
        self.0.digest()
    }
    /// When the caller issued it.
    pub fn issued_at(&self) -> Millis {
        self.0.body().issued_at
    }
}

/// A request that passed every check up to policy; only [`RequestVerifier::authorize`]
/// builds one. Argument decoding is the dispatcher's (status 2 and 4 are its answers).
#[derive(Debug)]
pub struct VerifiedRequest {
    request: Request,
    signer: Arc<Credential>,
    token: Option<Unsealed>,
}

impl VerifiedRequest {
    /// The request body.
    pub fn request(&self) -> &Request {
        &self.request
    }
    /// The signer's credential (an operator allowed this action, or a host carrying a
    /// delegation token).
    pub fn signer(&self) -> &Credential {
        &self.signer
    }
    /// The opened delegation token, for a delegated request. Its per-request checks
    /// ([`RequestVerifier::check_token`]) and its uses are still to come.
    pub fn token(&self) -> Option<&Unsealed> {
        self.token.as_ref()
    }
}

/// The outcome of [`RequestVerifier::screen`].
#[derive(Debug)]
pub enum Screened {
    /// Passed; continue with the replay store.
    Checked(Box<CheckedRequest>),
    /// Proven but for other hosts: acked silently.
    NotTarget,
    /// Proven and for us, but refused (revoked, expired, lifetime over the cap).
    Refused(Refusal),
}

/// Settings of the request checks.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Clock skew allowed on every window.
    pub clock_skew: Duration,
    /// Longest request lifetime accepted.
    pub max_request_lifetime: Duration,
    /// Longest delegation token validity accepted (`not_after - not_before`).
    pub max_token_ttl: Duration,
}

/// Runs the checks of docs/DESIGN.md, Request lifecycle step 2.
#[derive(Debug)]
pub struct RequestVerifier {
    credentials: CredentialVerifier,
    host: Name,
    labels: BTreeMap<String, String>,
    settings: VerifierSettings,
    revocations: Arc<Revocations>,
    sealing: Option<Arc<SealingKey>>,
}

impl RequestVerifier {
    /// A verifier for host `host` (with credential `labels`) trusting `anchors`.
    pub fn new(
        anchors: TrustAnchors,
        host: Name,
        labels: BTreeMap<String, String>,
        settings: VerifierSettings,
        revocations: Arc<Revocations>,
    ) -> Self {
        RequestVerifier {
            credentials: CredentialVerifier::new(anchors, CREDENTIAL_CACHE),
            host,
            labels,
            settings,
            revocations,
            sealing: None,
        }
    }

    /// The verifier of a loaded host: its anchors, name and labels, the `[limits]`
    /// checks, and its sealing key when it has one (without one every token is
    /// refused). The agent and each emulated host are built here alike.
    pub fn for_host(
        identity: &crate::identity::HostIdentity,
        limits: &crate::config::Limits,
        revocations: Arc<Revocations>,
    ) -> Self {
        let verifier = RequestVerifier::new(
            identity.anchors.clone(),
            identity.name.clone(),
            identity.credential.labels.clone(),
            VerifierSettings {
                max_message_bytes: limits.max_message_bytes,
                clock_skew: limits.clock_skew,
                max_request_lifetime: limits.max_request_lifetime,
                max_token_ttl: limits.max_token_ttl,
            },
            revocations,
        );
        match &identity.sealing {
            Some(k) => verifier.with_sealing_key(k.clone()),
            None => verifier,
        }
    }

    /// Accept delegation tokens sealed to `key` (without one, every token is refused).
    pub fn with_sealing_key(mut self, key: Arc<SealingKey>) -> Self {
        self.sealing = Some(key);
        self
    }

    /// Steps 1–2: size, envelope, credential chain, signature, body.
    pub fn open(&self, bytes: &[u8]) -> Result<OpenedRequest, Unproven> {
        let max = self.settings.max_message_bytes;
        if bytes.len() > max {
            return Err(Unproven {
                reason: Reason::Oversize,
                detail: format!("message is {} bytes, over the limit of {max}", bytes.len()),
            });
        }
        envelope::open::<Request>(bytes, max, &self.credentials)
            .map(OpenedRequest)
            .map_err(|e| Unproven {
                reason: Reason::from_open_label(e.reason()),
                detail: e.to_string(),
            })
    }

    /// Steps 3–5: target, revocation, credential and request windows, lifetime cap.
    pub fn screen(&self, opened: OpenedRequest, now: Millis) -> Screened {
        let OpenedRequest(opened) = opened;
        let req = opened.body();
        if !req.targets.includes(&self.host, &self.labels) {
            return Screened::NotTarget;
        }
        if let Err(e) = self.revocations.check(opened.signer()) {
            return Screened::Refused(Refusal::new(
                Status::Unauthorized,
                Reason::Revoked,
                e.to_string(),
            ));
        }
        let skew = self.settings.clock_skew;
        if let Err(r) = check_credential_window(opened.signer(), now, skew) {
            return Screened::Refused(r);
        }
        if let Err(r) = check_request_window(
            req.issued_at,
            req.expires_at,
            now,
            skew,
            self.settings.max_request_lifetime,
        ) {
            return Screened::Refused(r);
        }
        Screened::Checked(Box::new(CheckedRequest(opened)))
    }

    /// Step 8: role and policy. Without a token only operators may request, as
    /// themselves, actions their credential lists. With a token the signer must be a
    /// host, and the token must open with this host's sealing key, carry a valid
    /// signature of a trusted issuer or a `may_delegate` operator, and its minter must
    /// not be revoked; the per-request token checks follow argument decoding.
    pub fn authorize(&self, checked: Box<CheckedRequest>) -> Result<VerifiedRequest, Refusal> {
        let CheckedRequest(opened) = *checked;
        let signer = opened.signer().clone();
        let req = opened.body();
        let token = match &req.token {
            None => {
                authorize_request(req, &signer)?;
                None
            }
            Some(bytes) => Some(self.open_token(req, &signer, bytes)?),
        };
        Ok(VerifiedRequest {
            request: req.clone(),
            signer,
            token,
        })
    }

    fn open_token(
        &self,
        req: &Request,
        signer: &Credential,
        bytes: &[u8],
    ) -> Result<Unsealed, Refusal> {
        if signer.role != Role::Host {
            return Err(Refusal::new(
                Status::Unauthorized,
                Reason::Token,
                format!(
                    "delegation tokens are presented by hosts; {} holds a {} credential",
                    signer.name, signer.role
                ),
            ));
        }
        if req.caller != signer.name {
            return Err(Refusal::new(
                Status::Unauthorized,
                Reason::Unauthorized,
                format!("caller {} is not the signer {}", req.caller, signer.name),
            ));
        }
        let key = self
            .sealing
            .as_ref()
            .ok_or_else(|| token_refusal(&TokenError::NoSealingKey))?;
        let unsealed = token::open(bytes, &self.host, key, &self.credentials)
            .map_err(|e| token_refusal(&e))?;
        if let MintedBy::Operator(minter) = &unsealed.minted_by {
            self.revocations
                .check(minter)
                .map_err(|e| token_refusal(&TokenError::MinterRevoked(e.to_string())))?;
        }
        Ok(unsealed)
    }

    /// The per-request token checks (subject, action, unit scope, window with skew,
    /// this host's TTL cap, minter rights and window) for a delegated request whose
    /// arguments name `unit`. Requests without a token pass.
    pub fn check_token(
        &self,
        verified: &VerifiedRequest,
        unit: Option<&str>,
        now: Millis,
    ) -> Result<(), Refusal> {
        let Some(t) = verified.token() else {
            return Ok(());
        };
        t.check(&Presented {
            signer: &verified.signer.name,
            action: &verified.request.action,
            unit,
            now,
            skew_ms: duration_ms(self.settings.clock_skew),
            max_ttl_ms: duration_ms(self.settings.max_token_ttl),
        })
        .map_err(|e| token_refusal(&e))
    }
}

/// A token refusal: status 6, counted as `token`, the message led by the token's own
/// reason label.
pub fn token_refusal(e: &TokenError) -> Refusal {
    Refusal::new(
        Status::Unauthorized,
        Reason::Token,
        format!("delegation token refused ({}): {e}", e.reason()),
    )
}

/// The role and policy rules of step 8, apart from the types for unit tests.
fn authorize_request(req: &Request, signer: &Credential) -> Result<(), Refusal> {
    let unauthorized = |m: String| Refusal::new(Status::Unauthorized, Reason::Unauthorized, m);
    if signer.role != Role::Operator {
        return Err(unauthorized(format!(
            "requests must be signed by an operator credential; {} holds a {} credential",
            signer.name, signer.role
        )));
    }
    if req.caller != signer.name {
        return Err(unauthorized(format!(
            "caller {} is not the signer {}",
            req.caller, signer.name
        )));
    }
    if !signer.allows(&req.action) {
        return Err(unauthorized(format!(
            "operator {} is not allowed action {}",
            signer.name, req.action
        )));
    }
    Ok(())
}

/// The signer credential's window at `now`, with `skew`.
pub fn check_credential_window(
    credential: &Credential,
    now: Millis,
    skew: Duration,
) -> Result<(), Refusal> {
    let skew_ms = duration_ms(skew);
    credential.check_window(now, skew_ms).map_err(|e| {
        let message = match e {
            CredentialError::NotYetValid {
                name, not_before, ..
            } => format!(
                "signer credential of {name} is not valid before {}, now {} (allowed clock skew {})",
                rfc3339(not_before),
                rfc3339(now),
                humantime::format_duration(skew)
            ),
            CredentialError::Expired {
                name, not_after, ..
            } => format!(
                "signer credential of {name} expired at {}, now {} (allowed clock skew {})",
                rfc3339(not_after),
                rfc3339(now),
                humantime::format_duration(skew)
            ),
            other => format!("signer credential: {other}"),
        };
        Refusal::new(Status::Expired, Reason::CredentialExpired, message)
    })
}

/// The request's window and lifetime: `issued_at - skew <= now <= expires_at + skew`
/// and `expires_at - issued_at <= max_lifetime`.
pub fn check_request_window(
    issued_at: Millis,
    expires_at: Millis,
    now: Millis,
    skew: Duration,
    max_lifetime: Duration,
) -> Result<(), Refusal> {
    let skew_ms = duration_ms(skew);
    let skew_text = humantime::format_duration(skew);
    if now > expires_at.saturating_add(skew_ms) {
        return Err(Refusal::new(
            Status::Expired,
            Reason::Expired,
            format!(
                "request expired at {}, now {} (allowed clock skew {skew_text})",
                rfc3339(expires_at),
                rfc3339(now)
            ),
        ));
    }
    if now < issued_at.saturating_sub(skew_ms) {
        return Err(Refusal::new(
            Status::Expired,
            Reason::NotYetValid,
            format!(
                "request issued in the future at {}, now {} (allowed clock skew {skew_text})",
                rfc3339(issued_at),
                rfc3339(now)
            ),
        ));
    }
    let lifetime = expires_at.saturating_sub(issued_at);
    if lifetime > duration_ms(max_lifetime) {
        return Err(Refusal::new(
            Status::InvalidData,
            Reason::LifetimeTooLong,
            format!(
                "request lifetime {} (expires_at - issued_at) is over the limit of {}",
                humantime::format_duration(Duration::from_millis(lifetime)),
                humantime::format_duration(max_lifetime)
            ),
        ));
    }
    Ok(())
}

/// `d` in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> Millis {
    gearmq_schemas::time::duration_ms(d)
}

/// A wire time as RFC 3339 UTC with whole seconds (`2026-11-25T12:00:00Z`).
pub fn rfc3339(ms: Millis) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => format!("{ms} ms after the epoch"),
    }
}

/// The current wall-clock time in ms (what every window is judged against).
pub fn now_ms() -> Millis {
    gearmq_schemas::time::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::request::reply_queue_name;
    use gearmq_schemas::{SigningKey, Targets};

    const SKEW: Duration = Duration::from_secs(30);
    const HOUR: Duration = Duration::from_secs(3600);
    // 2026-11-25T12:00:00Z
    const T: Millis = 1_795_608_000_000;

    #[test]
    fn rfc3339_formats_whole_seconds() {
        assert_eq!(rfc3339(T), "2026-11-25T12:00:00Z");
        assert_eq!(rfc3339(T + 999), "2026-11-25T12:00:00Z");
    }

    #[test]
    fn window_accepts_inside_and_within_skew() {
        assert!(check_request_window(T, T + 60_000, T + 1, SKEW, HOUR).is_ok());
        // Up to the skew past expiry, and up to the skew before issue.
        assert!(check_request_window(T, T + 60_000, T + 90_000, SKEW, HOUR).is_ok());
        assert!(check_request_window(T, T + 60_000, T - 30_000, SKEW, HOUR).is_ok());
    }

    #[test]
    fn expired_request_names_times_and_skew() {
        let r = check_request_window(T - 60_000, T, T + 40_000, SKEW, HOUR).unwrap_err();
        assert_eq!(r.status, Status::Expired);
        assert_eq!(r.reason, Reason::Expired);
        assert_eq!(
            r.message,
            "request expired at 2026-11-25T12:00:00Z, now 2026-11-25T12:00:40Z (allowed clock skew 30s)"
        );
    }

    #[test]
    fn future_request_is_expired_status_and_says_so() {
        let r = check_request_window(T + 31_000, T + 60_000, T, SKEW, HOUR).unwrap_err();
        assert_eq!(r.status, Status::Expired);
        assert_eq!(r.reason, Reason::NotYetValid);
        assert!(r.message.contains("issued in the future"), "{}", r.message);
        assert!(r.message.contains("skew 30s"), "{}", r.message);
    }

    #[test]
    fn lifetime_over_cap_is_invalid_data_naming_the_cap() {
        let r = check_request_window(T, T + 3_600_001, T, SKEW, HOUR).unwrap_err();
        assert_eq!(r.status, Status::InvalidData);
        assert!(r.message.contains("limit of 1h"), "{}", r.message);
        assert!(check_request_window(T, T + 3_600_000, T, SKEW, HOUR).is_ok());
    }

    fn operator(actions: &[&str], role: Role) -> Credential {
        let k = SigningKey::from_seed(&[5; 32]);
        let mut c = Credential::new(1, Name::new("ops").unwrap(), role, k.public_key(), 0, 10);
        c.actions = actions
            .iter()
            .map(|a| ActionName::new(*a).unwrap())
            .collect();
        c
    }

    fn ping(caller: &str) -> Request {
        let caller = Name::new(caller).unwrap();
        let reply_to = reply_queue_name(&caller, "i1");
        Request::new(
            caller,
            0,
            1,
            Targets::All,
            reply_to,
            ActionName::new("ping").unwrap(),
            vec![0x80],
        )
    }

    #[test]
    fn policy_needs_an_operator_allowed_the_action_as_itself() {
        assert!(authorize_request(&ping("ops"), &operator(&["ping"], Role::Operator)).is_ok());
        let r = authorize_request(&ping("ops"), &operator(&["ping"], Role::Host)).unwrap_err();
        assert_eq!(r.status, Status::Unauthorized);
        assert!(r.message.contains("host credential"), "{}", r.message);
        let r = authorize_request(&ping("ops"), &operator(&[], Role::Operator)).unwrap_err();
        assert!(
            r.message.contains("not allowed action ping"),
            "{}",
            r.message
        );
        let r = authorize_request(&ping("eve"), &operator(&["ping"], Role::Operator)).unwrap_err();
        assert!(r.message.contains("caller eve"), "{}", r.message);
    }

    #[test]
    fn credential_window_refusal_names_skew() {
        let c = operator(&["ping"], Role::Operator);
        let r = check_credential_window(&c, 10 + 31_000, SKEW).unwrap_err();
        assert_eq!(r.status, Status::Expired);
        assert!(r.message.contains("expired at"), "{}", r.message);
        assert!(r.message.contains("skew 30s"), "{}", r.message);
    }
}
