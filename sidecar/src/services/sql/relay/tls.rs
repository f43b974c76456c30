//! TLS from the relay to the server, made as sqlx would have made it, so
//! that relaying a connection changes nothing about how it is secured.
//!
//! sqlx's rules (`sslmode`): `disable` and `allow` never ask for TLS;
//! `prefer` asks and goes on in plaintext if the server declines; `require`,
//! `verify-ca` and `verify-full` insist. Certificates are checked only under
//! `verify-ca` (the chain, against the system's roots and `sslrootcert`)
//! and `verify-full` (the chain and the host name); `prefer` and `require`
//! accept any certificate, as sqlx does (libpq would check the chain when
//! `sslrootcert` is given; sqlx does not, and neither does this). A client
//! certificate and key are presented when both are given.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::databases::TlsFiles;

/// Whether and how the relay asks the server for TLS.
#[derive(Clone)]
pub enum Upgrade {
    /// Never (`disable`, `allow`).
    Never,
    /// Asks; plaintext if the server declines (`prefer`).
    Prefer(Connector),
    /// Asks; the connection fails if the server declines.
    Require(Connector),
}

/// The TLS client of one alias.
#[derive(Clone)]
pub struct Connector {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Connector {
    /// The TLS session over `stream`, after the server said yes.
    pub async fn connect<S>(&self, stream: S) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.connector.connect(self.name.clone(), stream).await
    }
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Upgrade::Never => "never",
            Upgrade::Prefer(_) => "prefer",
            Upgrade::Require(_) => "require",
        })
    }
}

impl Upgrade {
    /// The upgrade `options` ask for, with the certificates of `files`.
    /// An unreadable certificate or key is an error (sqlx too would fail
    /// every connection).
    pub fn of(options: &PgConnectOptions, files: &TlsFiles) -> Result<Upgrade, String> {
        let mode = options.get_ssl_mode();
        let connector = || connector(mode, options.get_host(), files);
        Ok(match mode {
            PgSslMode::Disable | PgSslMode::Allow => Upgrade::Never,
            PgSslMode::Prefer => Upgrade::Prefer(connector()?),
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => Upgrade::Require(connector()?),
        })
    }
}

fn connector(mode: PgSslMode, host: &str, files: &TlsFiles) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(files)?), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("TLS roots: {e}"))?;
            if matches!(mode, PgSslMode::VerifyFull) { webpki } else { Arc::new(AnyName(webpki)) }
        }
        _ => Arc::new(AnyCertificate(provider)),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match (&files.client, &files.key) {
        (Some(chain), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslcert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("sslkey: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert and sslkey: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("sslcert and sslkey must be given together".into()),
    };
    // For a Unix socket the name is never used: PostgreSQL offers no TLS
    // there.
    let name = ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::try_from("localhost").unwrap());
    Ok(Connector { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), name })
}

/// The system's roots and `sslrootcert`'s, as sqlx trusts them.
fn roots(files: &TlsFiles) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = &files.root {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("sslrootcert: {e}"))?;
            roots.add(cert).map_err(|e| format!("sslrootcert: {e}"))?;
        }
    }
    Ok(roots)
}

/// `verify-ca`: the chain must verify, the name need not match.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: any certificate (the handshake's signatures are
/// still checked, so the session is with the holder of its key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
