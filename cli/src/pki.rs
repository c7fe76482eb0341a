//! `gearmq pki init|issue`: a small CA and broker/client certificates for TLS with the
//! EXTERNAL mechanism (the broker user is the certificate's common name). Meant for
//! trying gearmq and for tests; production may use any CA.

use anyhow::{Context, Result};
use clap::Subcommand;
use gearmq_io::files::write_file;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::PathBuf;

/// The CA's name; `pki issue` rebuilds the CA's parameters from it.
const CA_NAME: &str = "gearmq fleet CA";

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Make a CA: DIR/ca.pem (trust this in the broker and in clients) and DIR/ca.key.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA: OUT/NAME.pem and OUT/NAME.key.
    Issue {
        /// The CA directory (from `pki init`).
        #[arg(long)]
        ca: PathBuf,
        /// Common name: the broker user for a client (a host or operator name), or the
        /// broker's name for --server.
        name: String,
        /// A server certificate (for the broker): SANs from --dns and --ip.
        #[arg(long)]
        server: bool,
        /// DNS names for a server certificate (repeatable).
        #[arg(long, default_value = "localhost")]
        dns: Vec<String>,
        /// IP addresses for a server certificate (repeatable).
        #[arg(long, default_value = "127.0.0.1")]
        ip: Vec<std::net::IpAddr>,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

pub fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init { out, force } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let key = KeyPair::generate().context("cannot make a CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("cannot sign the CA")?;
            write_file(
                &out.join("ca.key"),
                key.serialize_pem().as_bytes(),
                0o600,
                force,
            )?;
            write_file(&out.join("ca.pem"), cert.pem().as_bytes(), 0o644, force)?;
            println!("CA certificate {}", out.join("ca.pem").display());
            println!(
                "CA key         {} (mode 0600)",
                out.join("ca.key").display()
            );
        }
        PkiCommand::Issue {
            ca,
            name,
            server,
            dns,
            ip,
            out,
            force,
        } => {
            // Through the one private-key loader: refused if group or others can read it.
            let ca_key_path = ca.join("ca.key");
            let ca_pem = gearmq_io::files::read_private_file("CA key", &ca_key_path)?;
            let ca_key = std::str::from_utf8(&ca_pem)
                .ok()
                .and_then(|pem| KeyPair::from_pem(pem).ok())
                .with_context(|| format!("{} is not a PEM private key", ca_key_path.display()))?;
            let issuer = Issuer::new(ca_params(), ca_key);
            let mut p = if server {
                let mut sans: Vec<String> = dns.clone();
                sans.extend(ip.iter().map(|i| i.to_string()));
                CertificateParams::new(sans).context("invalid --dns or --ip")?
            } else {
                // Client names are gearmq names: the broker user the CN becomes.
                gearmq_schemas::Name::new(name.as_str())?;
                CertificateParams::default()
            };
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name.as_str());
            p.distinguished_name = dn;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            if server {
                for i in &ip {
                    if !p.subject_alt_names.contains(&SanType::IpAddress(*i)) {
                        p.subject_alt_names.push(SanType::IpAddress(*i));
                    }
                }
            }
            let key = KeyPair::generate().context("cannot make a key")?;
            let cert = p
                .signed_by(&key, &issuer)
                .context("cannot sign the certificate")?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let kp = out.join(format!("{name}.key"));
            let cp = out.join(format!("{name}.pem"));
            write_file(&kp, key.serialize_pem().as_bytes(), 0o600, force)?;
            write_file(&cp, cert.pem().as_bytes(), 0o644, force)?;
            println!(
                "{} certificate for {name}: {} (key {})",
                if server { "server" } else { "client" },
                cp.display(),
                kp.display()
            );
        }
    }
    Ok(())
}
