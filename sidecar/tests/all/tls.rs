//! `https` through the gateway, against real rustls servers on loopback
//! whose certificates are made for each test. What is tried:
//! - a server whose certificate chains to a CA the machine does not trust:
//!   refused during the handshake as `unavailable`, no request reaches it;
//! - the same CA trusted the way an operator adds an internal CA
//!   (`SSL_CERT_FILE`, which the platform verifier reads): a guest reaches
//!   the server through `gatehouse invoke`;
//! - with that CA trusted, a URL whose host the certificate does not name
//!   (`127.0.0.1` for a `localhost` certificate): refused, nothing sent.
//!
//! The trusted-CA cases run the `gatehouse` binary, so that the variable
//! changes only that process's trust store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gatehouse::services::http::policy::Rate;
use gatehouse::services::http::resolve::StaticLookup;
use gatehouse::services::http::{HttpError, HttpGateway, HttpPolicy, OutboundRequest, PluginHttp};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::{Policies, guest};
use crate::http_gateway::{ip, rules};
use crate::upstream::routes;

/// A certificate authority made for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "gatehouse test CA");
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// A server configuration presenting a certificate for `names`.
    fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names).unwrap().signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.issuer.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

/// The test upstream's routes over TLS. Counts TCP connections (handshake
/// attempts) and HTTP requests separately.
struct TlsUpstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
}

impl TlsUpstream {
    async fn start(config: Arc<ServerConfig>) -> TlsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (acceptor, app) = (TlsAcceptor::from(config), routes(hits.clone()));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, service) = (acceptor.clone(), TowerToHyperService::new(app.clone()));
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ =
                            auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
                    }
                });
            }
        });
        TlsUpstream { port, connections, hits }
    }
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused_before_anything_is_sent() {
    let ca = TestCa::new();
    let up = TlsUpstream::start(ca.server(&["tls.test"])).await;
    let lookup = Arc::new(StaticLookup::new().with("tls.test", &[ip("127.0.0.1")]));
    let policy = HttpPolicy {
        rate: Rate::parse("1000/s").unwrap(),
        ..HttpPolicy::new(rules(&[format!("https://tls.test:{}", up.port)]))
    };
    let http = PluginHttp::new("tls", policy, Arc::new(HttpGateway::new(lookup).unwrap()), &BTreeMap::new()).unwrap();

    let request = OutboundRequest {
        method: "GET".into(),
        url: format!("https://tls.test:{}/hello", up.port),
        ..OutboundRequest::default()
    };
    match http.send(request).await {
        Err(HttpError::Unavailable(message)) => assert!(message.contains("certificate"), "{message}"),
        other => panic!("expected `unavailable` for an untrusted certificate, got {other:?}"),
    }
    assert!(up.connections.load(Ordering::SeqCst) >= 1, "the gateway never tried the handshake");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "a request was sent over an unverified connection");
}

/// Runs the fetcher guest on `url` through `gatehouse invoke`, trusting
/// only the CA in `ca_file`.
fn invoke_fetcher(policies: &Policies, ca_file: &Path, url: &str) -> std::process::Output {
    let input = policies.dir.path().join("input.json");
    std::fs::write(&input, format!(r#"{{"url": "{url}"}}"#)).unwrap();
    crate::common::gatehouse_command()
        .args(["--policies", policies.dir.path().to_str().unwrap(), "invoke", "fetcher"])
        .args(["--input", input.to_str().unwrap()])
        .env("GATEHOUSE_LOG", "warn")
        .env("SSL_CERT_FILE", ca_file)
        .env_remove("SSL_CERT_DIR")
        .output()
        .expect("running gatehouse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_trusted_ca_is_accepted_and_the_name_is_still_checked() {
    let ca = TestCa::new();
    let up = TlsUpstream::start(ca.server(&["localhost"])).await;
    let policies = Policies::new();
    let ca_file = policies.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.issuer.pem()).unwrap();
    let component = guest("fetcher").display().to_string();
    policies.write(
        "fetcher.toml",
        &format!(
            "[plugin]\nname = \"fetcher\"\ncomponent = {component:?}\n\n[http]\n\
             allow = [\"https://localhost:{port}\", \"https://127.0.0.1:{port}\"]\n",
            port = up.port
        ),
    );

    // The server runs on this test's runtime; the binary runs beside it.
    let port = up.port;
    let (trusted, wrong_name) = tokio::task::spawn_blocking(move || {
        let trusted = invoke_fetcher(&policies, &ca_file, &format!("https://localhost:{port}/hello"));
        let wrong_name = invoke_fetcher(&policies, &ca_file, &format!("https://127.0.0.1:{port}/hello"));
        (trusted, wrong_name)
    })
    .await
    .unwrap();

    let stderr = String::from_utf8_lossy(&trusted.stderr);
    assert!(trusted.status.success(), "{stderr}");
    let response: serde_json::Value = serde_json::from_slice(&trusted.stdout).expect("the fetcher's JSON");
    assert_eq!(response["status"], 200, "{response}");
    assert_eq!(response["body"], "hello", "{response}");

    let stderr = String::from_utf8_lossy(&wrong_name.stderr);
    assert_eq!(wrong_name.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unavailable") && stderr.contains("certificate"), "{stderr}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1, "only the verified request may reach the server");
}
