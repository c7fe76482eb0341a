//! Signing identities for tests: a hand-made issuer for tests that play it (credentials
//! with chosen roles, actions, serials and sealing keys, a stranger's issuer), and the
//! identities of a fleet made by `gearmq init`.

use gearmq_schemas::envelope::{self, Body, Opened};
use gearmq_schemas::keys::der_to_pem;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{
    ActionName, Credential, CredentialVerifier, Name, Reply, Role, Signed, SigningKey, Status,
    TrustAnchors,
};
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// Someone holding a key and an issued credential.
#[derive(Clone)]
pub struct Identity {
    /// The name its credential carries.
    pub name: Name,
    /// Its signing key.
    pub key: Arc<SigningKey>,
    /// The key as a PEM private key file holds it.
    pub key_pem: String,
    /// Its credential bytes.
    pub credential: Vec<u8>,
}

impl Identity {
    /// The identity in `key_file` (PEM) and `credential_file`, named `name`.
    pub fn load(name: &str, key_file: &Path, credential_file: &Path) -> Identity {
        let key_pem = std::fs::read_to_string(key_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", key_file.display()));
        let key = SigningKey::from_pem(&key_pem)
            .unwrap_or_else(|e| panic!("{}: {e}", key_file.display()));
        let credential = std::fs::read(credential_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", credential_file.display()));
        Identity {
            name: crate::name(name),
            key: Arc::new(key),
            key_pem,
            credential,
        }
    }

    /// `body` signed by this identity, with its credential.
    pub fn seal<B: Body>(&self, body: &B) -> Vec<u8> {
        Signed::seal(body, &self.key, &self.credential)
    }

    /// A signed `ok` reply of this identity that names `host` (itself, or forged) and
    /// answers the request `request_id` with body digest `digest`.
    pub fn reply(&self, request_id: Uuid, digest: [u8; 32], host: &str) -> Vec<u8> {
        let now = now_ms();
        let reply = Reply::new(request_id, digest, crate::name(host), Status::Ok, now, now);
        self.seal(&reply)
    }
}

/// An issuer of the test's own, handing out credentials.
pub struct Pki {
    /// The issuer's key.
    pub issuer: SigningKey,
    serial: Cell<u64>,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// A new issuer.
    pub fn new() -> Pki {
        let (issuer, _) = SigningKey::generate().expect("issuer key");
        Pki::from_issuer(issuer, 1)
    }

    /// The issuer `issuer` (a fleet's), numbering its credentials from `first_serial`.
    pub fn from_issuer(issuer: SigningKey, first_serial: u64) -> Pki {
        Pki {
            issuer,
            serial: Cell::new(first_serial),
        }
    }

    /// A new key with a credential for `name` as `role`, allowed `actions`, valid from
    /// an hour ago for 30 days.
    pub fn identity(&self, name: &str, role: Role, actions: &[&str]) -> Identity {
        self.identity_with(name, role, actions, |_| {})
    }

    /// [`Pki::identity`] with the credential changed by `edit` before it is issued (a
    /// sealing key, labels, another window).
    pub fn identity_with(
        &self,
        name: &str,
        role: Role,
        actions: &[&str],
        edit: impl FnOnce(&mut Credential),
    ) -> Identity {
        let (key, der) = SigningKey::generate().expect("key");
        let now = now_ms();
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        let mut c = Credential::new(
            serial,
            crate::name(name),
            role,
            key.public_key(),
            now - 3_600_000,
            now + 30 * 86_400_000,
        );
        c.actions = actions
            .iter()
            .map(|a| ActionName::new(*a).expect("action name"))
            .collect();
        edit(&mut c);
        Identity {
            name: c.name.clone(),
            credential: c.issue(&self.issuer),
            key: Arc::new(key),
            key_pem: der_to_pem(&der),
        }
    }

    /// This issuer alone as trust anchors.
    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::new(vec![self.issuer.public_key()])
    }

    /// A verifier of credentials this issuer made.
    pub fn verifier(&self) -> CredentialVerifier {
        CredentialVerifier::new(self.anchors(), 16)
    }

    /// Opens a reply with this issuer as the only trust anchor (signature, host
    /// credential); panics if it does not open.
    pub fn open_reply(&self, bytes: &[u8]) -> Opened<Reply> {
        envelope::open::<Reply>(bytes, 1 << 20, &self.verifier()).expect("reply opens")
    }
}
