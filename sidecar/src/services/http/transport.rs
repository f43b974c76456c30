//! The pooled HTTP/1.1 client the gateway sends through: hyper-util's
//! pooled client, connecting only to addresses [`GuardedResolver`] admits,
//! with rustls and the platform's certificate verifier for `https`.
//!
//! Why not reqwest, which is built from these same parts: the gateway does
//! what reqwest adds on top (redirects, deadlines, body limits, default
//! headers) itself, because each redirect hop must be checked against the
//! policy. What remained of reqwest was per-request work: on the loopback
//! benchmark hyper-util's client alone served 1.4x reqwest's requests per
//! second from one caller and 1.7x from 32 (see BENCHMARKS.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Position;

use super::resolve::{GuardedResolver, Lookup, Zone};
use super::url::Target;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request body: always complete before sending (the doors read guest
/// bodies in full, within the policy's `max_request`).
pub(super) type RequestBody = Full<Bytes>;

/// One connection pool whose connections all go to addresses a [`Zone`]
/// admits.
pub(super) type Transport = Client<HttpsConnector<HttpConnector<GuardedResolver>>, RequestBody>;

/// The TLS setup could not be built (no usable certificate verifier).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for outbound HTTP: {0}")]
pub struct TransportError(String);

/// Builds the pool for `zone`. Names are resolved by `lookup` through the
/// zone's address check; IP literals skip the resolver (hyper-util connects
/// to them directly), so the gateway checks those itself before sending.
pub(super) fn transport(lookup: Arc<dyn Lookup>, zone: Zone) -> Result<Transport, TransportError> {
    // Use ring unless the embedding application installed a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(lookup, zone));
    // `https` URLs are handed to the TLS layer, not refused.
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|e| TransportError(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(https))
}

/// The URI to send for `target`, assembled from its normalised parts so the
/// authority the connector dials is the one the allowlist matched (no
/// second parser reads the URL). `None` if the path or query holds
/// characters `http::Uri` does not accept.
pub(super) fn uri(target: &Target) -> Option<Uri> {
    let url = &target.url;
    let scheme = if target.scheme == "https" { Scheme::HTTPS } else { Scheme::HTTP };
    let authority = Authority::try_from(&url[Position::BeforeHost..Position::AfterPort]).ok()?;
    let path_and_query = PathAndQuery::try_from(&url[Position::BeforePath..Position::AfterQuery]).ok()?;
    Uri::builder().scheme(scheme).authority(authority).path_and_query(path_and_query).build().ok()
}

/// A response whose body is still to be read.
pub(super) type Response = http::Response<Incoming>;
