//! PostgreSQL over TLS with rustls, driven by libpq's URL parameters so a database URL
//! means what it means to `psql`:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | chains to `sslrootcert` (required: any public CA would do) |
//! | `verify-full` | always | chains, and names the host in the URL |
//!
//! tokio-postgres itself knows only `disable`/`prefer`/`require` and no `sslrootcert`, so
//! those two parameters are taken out of the URL here and turned into a rustls client
//! configuration for `tokio-postgres-rustls`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's identity is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    None,
    Chain,
    ChainAndName,
}

/// A database URL split into what tokio-postgres reads and what the TLS layer needs.
#[derive(Debug)]
pub struct DbTarget {
    pub config: tokio_postgres::Config,
    pub check: Check,
    pub root_cert: Option<PathBuf>,
}

fn decode(value: &str) -> Result<String, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={value}"))
        .map_err(|_| "a parameter is not valid percent-encoding".to_owned())?;
    Ok(pairs.into_iter().next().map(|(_, v)| v).unwrap_or_default())
}

impl DbTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut mode = "prefer".to_owned();
        let mut root_cert = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = decode(value)?,
                "sslrootcert" => root_cert = Some(PathBuf::from(decode(value)?)),
                _ => kept.push(pair),
            }
        }
        let (ssl_mode, check) = match mode.as_str() {
            "disable" => (SslMode::Disable, Check::None),
            "prefer" => (SslMode::Prefer, Check::None),
            "require" if root_cert.is_some() => (SslMode::Require, Check::Chain),
            "require" => (SslMode::Require, Check::None),
            // Without its own roots a chain-only check would take any public CA's
            // certificate for any name: libpq has no such mode either.
            "verify-ca" if root_cert.is_none() => {
                return Err(
                    "sslmode=verify-ca needs sslrootcert (or use verify-full with the system roots)"
                        .to_owned(),
                );
            }
            "verify-ca" => (SslMode::Require, Check::Chain),
            "verify-full" => (SslMode::Require, Check::ChainAndName),
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
        config.ssl_mode(ssl_mode);
        if let Some(path) = &root_cert
            && let Err(e) = portcullis_common::tls::read_roots(path)
        {
            return Err(format!("sslrootcert: {e}"));
        }
        Ok(Self {
            config,
            check,
            root_cert,
        })
    }

    /// The connector for this URL's `sslmode`.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self.check {
            Check::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth(),
            Check::Chain | Check::ChainAndName => {
                let roots = match &self.root_cert {
                    Some(path) => {
                        portcullis_common::tls::read_roots(path).map_err(|e| e.to_string())?
                    }
                    None => {
                        let mut roots = rustls::RootCertStore::empty();
                        roots.add_parsable_certificates(
                            rustls_native_certs::load_native_certs().certs,
                        );
                        roots
                    }
                };
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| e.to_string())?;
                let verifier: Arc<dyn ServerCertVerifier> = if self.check == Check::Chain {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// `sslmode=prefer`/`require`: encrypted, the certificate not checked (libpq's meaning).
/// The handshake signature is still verified, so the session keys belong to whoever holds
/// the certificate's key.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must verify; the host name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn libpq_modes_map_to_checks() {
        let t = DbTarget::parse("postgres://u@h/db").unwrap();
        assert_eq!(t.config.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(t.check, Check::None);
        let t =
            DbTarget::parse("postgres://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(t.check, Check::ChainAndName);
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert!(DbTarget::parse("postgres://u@h/db?sslmode=verify-ca").is_err());
        let t = DbTarget::parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn bad_modes_and_missing_roots_are_refused() {
        assert!(DbTarget::parse("postgres://u@h/db?sslmode=allow-all").is_err());
        let e =
            DbTarget::parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fnone%2Fca.pem")
                .unwrap_err();
        assert!(e.contains("/none/ca.pem"), "{e}");
        assert!(DbTarget::parse("postgres://u@h/db?bogus=1").is_err());
    }
}
