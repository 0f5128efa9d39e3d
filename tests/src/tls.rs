//! Throwaway certificate authorities for the TLS test servers.
//!
//! [`TestCa::new`] makes a fresh CA (an ECDSA P-256 key that lives only in memory), which
//! issues server certificates ([`TestCa::issue_server`]: DNS and IP subject alternative
//! names, `serverAuth`) and client certificates ([`TestCa::issue_client`]: `clientAuth`).
//! Every CA is unrelated to every other one, so a second `TestCa::new()` is the "wrong
//! CA" of a negative test. [`crate::RedisServer::start_tls`] and
//! [`crate::PostgresServer::start_tls`] take one.
//!
//! What it is **not**: a way to make certificates for anything but tests. The keys are
//! never protected, certificates are valid from 1975 to 4096 (so no test depends on the
//! clock), and there is no revocation.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test run; its key never leaves memory.
pub struct TestCa {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's key stays out of test output.
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM (the key PKCS#8).
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate alone (not the chain: the CA is the trust anchor).
    pub cert_pem: String,
    /// The private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl TestCa {
    /// Makes a new CA with a self-signed certificate. Its common name carries a random
    /// suffix, so two CAs never share a subject (a verifier looking up the wrong CA by
    /// name fails on the signature, not by accident of a name clash).
    ///
    /// # Errors
    ///
    /// Fails only when key generation or signing fails.
    pub fn new() -> Result<Self> {
        let suffix: u64 = rand::rng().random();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Portcullis test CA {suffix:016x}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating the test CA key")?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the test CA")?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what a client trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate (PEM) to `path`, readable by everyone (mode 0644).
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be written.
    pub fn write_ca(&self, path: &Path) -> Result<()> {
        write_file(path, &self.ca_pem, 0o644)
    }

    /// Issues a server certificate for `names`: each one that parses as an IP address
    /// becomes an IP subject alternative name, every other one a DNS name (for example
    /// `["localhost", "127.0.0.1"]`). The first name is also the common name.
    ///
    /// # Errors
    ///
    /// Fails when `names` is empty or a name is not a valid DNS name.
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued> {
        let Some(first) = names.first() else {
            anyhow::bail!("a server certificate needs at least one name");
        };
        let sans: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(sans)
            .with_context(|| format!("subject alternative names {names:?}"))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, first)
    }

    /// Issues a client certificate with subject common name `common_name` and the
    /// `clientAuth` extended key usage (no subject alternative names).
    ///
    /// # Errors
    ///
    /// Fails only when key generation or signing fails.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, common_name)
    }

    /// Signs a leaf certificate for a fresh key: not a CA, digital signature only.
    fn issue(&self, mut params: CertificateParams, common_name: &str) -> Result<Issued> {
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a certificate key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate for {common_name:?}"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.crt` (mode 0644) and `<dir>/<stem>.key` (mode 0600) and
    /// returns their paths (certificate, key).
    ///
    /// # Errors
    ///
    /// Fails when a file cannot be written.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, &self.cert_pem, 0o644)?;
        write_file(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

/// Writes `text` to `path` with permissions `mode`, also when the file existed with
/// other permissions (the mode is set before any byte of a key is written).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::TempDir;

    /// `openssl verify` of `cert` against `ca` for `purpose` (sslserver, sslclient).
    fn openssl_verify(ca: &Path, cert: &Path, purpose: &str) -> bool {
        let out = Command::new(crate::find_binary("openssl").expect("openssl is installed"))
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .args(["-purpose", purpose])
            .arg(cert)
            .output()
            .unwrap();
        out.status.success()
    }

    fn openssl_text(cert: &Path) -> String {
        let out = Command::new(crate::find_binary("openssl").unwrap())
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn certificates_chain_to_their_own_ca_only() {
        let dir = TempDir::new("tls").unwrap();
        let ca = TestCa::new().unwrap();
        let other = TestCa::new().unwrap();
        assert_ne!(ca.ca_pem(), other.ca_pem());
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let ca_file = dir.path.join("ca.crt");
        let other_file = dir.path.join("other.crt");
        ca.write_ca(&ca_file).unwrap();
        other.write_ca(&other_file).unwrap();

        let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"]).unwrap();
        assert!(server.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let (cert, key) = server.write(&dir.path, "server").unwrap();
        assert_eq!(cert, dir.path.join("server.crt"));
        assert_eq!(key, dir.path.join("server.key"));
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_to_string(&key).unwrap(), server.key_pem);

        let text = openssl_text(&cert);
        assert!(text.contains("DNS:localhost"), "{text}");
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        assert!(text.contains("IP Address:0:0:0:0:0:0:0:1"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");

        assert!(openssl_verify(&ca_file, &cert, "sslserver"));
        assert!(
            !openssl_verify(&ca_file, &cert, "sslclient"),
            "no clientAuth"
        );
        assert!(!openssl_verify(&other_file, &cert, "sslserver"), "other CA");

        let client = ca.issue_client("portcullis-client").unwrap();
        let (client_cert, _) = client.write(&dir.path, "client").unwrap();
        let text = openssl_text(&client_cert);
        assert!(text.contains("Subject: CN = portcullis-client"), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(openssl_verify(&ca_file, &client_cert, "sslclient"));
        assert!(!openssl_verify(&ca_file, &client_cert, "sslserver"));
        assert!(!openssl_verify(&other_file, &client_cert, "sslclient"));

        assert!(ca.issue_server(&[]).is_err());
        assert!(format!("{ca:?}").starts_with("TestCa"));
    }
}
