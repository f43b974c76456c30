//! `gatehouse:services/http-client` and `wasi:http/outgoing-handler`: two
//! doors onto one outbound HTTP gateway.
//!
//! - [`url`]: one canonical form for every URL (the allowlist matches it,
//!   the client sends it).
//! - [`policy`]: the `[http]` grant: allowlist, methods, headers, rate,
//!   sizes, timeout, redirects, injected credentials.
//! - [`addr`]: which IP addresses count as public; everything else is
//!   refused unless granted exactly.
//! - [`resolve`]: DNS with that check applied to the addresses the
//!   connector will use.
//! - [`transport`]: the pooled HTTP/1.1 client (hyper-util, rustls), one
//!   pool per address zone.
//! - [`gateway`]: the pipeline, the per-plugin rate and log budgets and
//!   metrics (`services::budget`: the token bucket both use).
//! - [`host`]: the two doors, translating guest requests into the pipeline
//!   and its errors back into each door's vocabulary.
//! - [`explain`]: the same checks, dry, for `gatehouse policy explain-url`.

pub mod addr;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod host;
pub mod metrics;
pub mod policy;
pub mod resolve;
pub mod transport;
pub mod url;

pub use error::HttpError;
pub use gateway::{HttpGateway, InboundResponse, OutboundRequest, PluginHttp};
pub use metrics::HttpMetricsSnapshot;
pub use policy::HttpPolicy;
