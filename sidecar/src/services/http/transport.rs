//! The pooled HTTP/1.1 client the gateway sends through: hyper-util's
//! pooled client, connecting only to addresses `GuardedResolver` admits,
//! with rustls and the platform's certificate verifier for `https`.
//!
//! Why not reqwest, which is built from these same parts: the gateway does
//! what reqwest adds on top (redirects, deadlines, body limits, default
//! headers) itself, because each redirect hop must be checked against the
//! policy. What remained of reqwest was per-request work: on the loopback
//! benchmark hyper-util's client alone served 1.4x reqwest's requests per
//! second from one caller and 1.7x from 32 (see BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tokio::sync::Notify;

use super::resolve::{GuardedResolver, Lookup, Zone};
use super::url::Target;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest response head (status line and headers) read, in bytes, whatever
/// the policy: hyper buffers the whole head before the gateway sees any of
/// it, so this bounds that memory (hyper's own default is about 400 KB).
/// The policy's `max_response` then counts the header bytes too. (The
/// number of fields is bounded by hyper's default, 100: setting it moves
/// hyper's header parsing to the heap, about 5% slower.)
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Informational (`1xx`) heads read before a request's answer, at most.
/// hyper parses and drops each one and reads on, with no bound of its own,
/// so an upstream could keep a request (and its connection) busy with
/// them until the deadline; real servers send one `100` and a few `103`s.
pub const MAX_INFORMATIONAL: usize = 8;

/// Counts the `1xx` heads hyper reads for one request and says when there
/// were more than [`MAX_INFORMATIONAL`].
#[derive(Default)]
pub(super) struct Informational {
    count: AtomicUsize,
    over: Notify,
}

impl Informational {
    /// Registers the counter on `request` (hyper calls it for each `1xx`).
    pub(super) fn watch(request: &mut http::Request<RequestBody>) -> Arc<Informational> {
        let watch = Arc::new(Informational::default());
        let counter = watch.clone();
        hyper::ext::on_informational(request, move |_| {
            if counter.count.fetch_add(1, Ordering::Relaxed) == MAX_INFORMATIONAL {
                counter.over.notify_one();
            }
        });
        watch
    }

    /// Resolves once the upstream has sent one `1xx` head too many.
    pub(super) async fn exceeded(&self) {
        self.over.notified().await
    }
}

/// A request body: always complete before sending (the doors read guest
/// bodies in full, within the policy's `max_request`).
pub(super) type RequestBody = Full<Bytes>;

/// A response whose body is still to be read.
pub(super) type Response = http::Response<Incoming>;

/// One connection pool whose connections all go to addresses a [`Zone`]
/// admits.
pub(super) type Transport = Client<HttpsConnector<HttpConnector<GuardedResolver>>, RequestBody>;

/// The TLS setup could not be built (no usable certificate verifier).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for outbound HTTP: {0}")]
pub struct TransportError(String);

/// The TLS settings every pool shares: rustls with the platform's
/// certificate verifier. Building the verifier reads and parses the
/// system's root certificates, so it is done once per gateway.
pub(super) fn tls_config() -> Result<ClientConfig, TransportError> {
    // Use ring unless the embedding application installed a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig::builder().try_with_platform_verifier().map_err(|e| TransportError(e.to_string()))?;
    Ok(config.with_no_client_auth())
}

/// Builds the pool for `zone`. Names are resolved by `lookup` through the
/// zone's address check; IP literals skip the resolver (hyper-util connects
/// to them directly), so the gateway checks those itself before sending.
pub(super) fn transport(lookup: Arc<dyn Lookup>, zone: Zone, tls: ClientConfig) -> Transport {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(lookup, zone));
    // `https` URLs are handed to the TLS layer, not refused.
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .http1_max_buf_size(MAX_RESPONSE_HEAD)
        .build(https)
}

/// The URI to send for `target`. The connector dials the URI's authority,
/// so it is checked to be exactly the normalised host and port the
/// allowlist matched: a second parser reading the URL differently must not
/// be able to change where the request goes. `None` if the URL is not a
/// valid `http::Uri` (its path or query holds characters `http` refuses)
/// or the two parsers disagree.
pub(super) fn uri(target: &Target) -> Option<Uri> {
    let url = &target.url;
    let uri = Uri::try_from(url.as_str()).ok()?;
    let same = uri.scheme_str() == Some(target.scheme) && uri.host() == url.host_str() && uri.port_u16() == url.port();
    same.then_some(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::http::url::{TargetHost, normalize};

    fn sent(url: &str) -> Option<String> {
        uri(&normalize(url).unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn the_uri_sent_is_the_normalised_url() {
        let cases = [
            ("HTTP://API.Example.com.:80/a/../b?q=1#frag", "http://api.example.com/b?q=1"),
            ("https://bücher.example:8443/x", "https://xn--bcher-kva.example:8443/x"),
            ("http://[::FFFF:7f00:1]:8080/", "http://[::ffff:7f00:1]:8080/"),
            ("http://0x7f.1/", "http://127.0.0.1/"),
            ("http://example.com/ä?ö=%20", "http://example.com/%C3%A4?%C3%B6=%20"),
            ("http://example.com/{x}?y={z}|^`", "http://example.com/%7Bx%7D?y={z}|^`"),
        ];
        for (input, expected) in cases {
            assert_eq!(sent(input).as_deref(), Some(expected), "{input}");
        }
    }

    /// The parts are compared together: a scheme that disagrees is enough
    /// to send nothing, though host and port agree.
    #[test]
    fn a_target_whose_parts_disagree_with_its_url_is_not_sent() {
        let mut target = normalize("http://api.example.com:8080/x").unwrap();
        assert!(uri(&target).is_some());
        target.scheme = "https";
        assert_eq!(uri(&target), None, "the scheme differs");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever the normaliser accepts can be sent, to the host and port
        /// it matched.
        #[test]
        fn every_normalised_url_becomes_a_uri_for_the_same_authority(
            scheme in "(http|https|HTTP)",
            host in "([a-z0-9-]{1,8}\\.){0,2}[a-z]{1,5}|[0-9]{1,3}(\\.[0-9]{1,3}){0,3}|\\[[0-9a-f:]{2,12}\\]|0x[0-9a-f]{1,8}",
            port in proptest::option::of(0u16..),
            rest in "[!-~]{0,40}",
        ) {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let Ok(target) = normalize(&format!("{scheme}://{host}{port}/{rest}")) else { return Ok(()) };
            let uri = uri(&target);
            proptest::prop_assert!(uri.is_some(), "{} was normalised but cannot be sent", target.url);
            let uri = uri.unwrap();
            proptest::prop_assert_eq!(uri.host(), target.url.host_str());
            proptest::prop_assert_eq!(uri.port_u16().unwrap_or(if target.scheme == "https" { 443 } else { 80 }), target.port);
        }

        /// The invariant the address guard rests on: every URI the client
        /// dials either names a host that goes through the guarded resolver
        /// (a name the connector does not read as an IP literal) or is an IP
        /// literal that the gateway judged as one (`TargetHost::Ip`, checked
        /// in `PluginHttp::zone_for`). Hosts are built to hit the rewrites:
        /// trailing dots, IPv4 spellings, percent-escapes, IPv6.
        #[test]
        fn every_dialed_ip_literal_was_judged_as_one(
            host in "([0-9]{1,3}|0x[0-9a-f]{1,2}|%3[0-9]|[a-z]{1,3})(\\.([0-9]{1,3}|0x[0-9a-f]{1,2}|[a-z]{1,3})){0,4}\\.{0,3}|\\[[0-9a-f:.]{2,20}\\]",
            port in proptest::option::of(1u16..),
        ) {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let Ok(target) = normalize(&format!("http://{host}{port}/")) else { return Ok(()) };
            let Some(uri) = uri(&target) else { return Ok(()) };
            match dialed_literal(&uri) {
                Some(ip) => proptest::prop_assert_eq!(&target.host, &TargetHost::Ip(ip), "{} is dialed directly", uri),
                None => proptest::prop_assert!(
                    matches!(&target.host, TargetHost::Domain(name) if Some(name.as_str()) == uri.host()),
                    "{} goes through the resolver but was judged as {:?}", uri, target.host
                ),
            }
        }
    }

    /// What hyper-util's `HttpConnector` dials without resolving: a host
    /// that parses as an IP address (brackets stripped).
    fn dialed_literal(uri: &Uri) -> Option<std::net::IpAddr> {
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        host.parse().ok()
    }
}
