//! Host services, one module per WIT interface. Each module owns its policy
//! check and backend and is testable without wasm; the runtime only links
//! them (see `runtime::linker`).
//!
//! [`Services`] is the one value that owns every service's shared state
//! (the HTTP gateway with its resolver, pools and counters; later the KV
//! store, the SQL pools and the audit log). It is built once from the
//! settings and handed to [`crate::Runtime::new`]; the API and the CLI reach
//! a service's operator view (counters, usage) through it. A service's
//! per-invocation state lives in the runtime's `PluginState`, its rule in
//! the import table and its lines in the linker, so a new service adds a
//! field here and touches no method of the runtime.

pub(crate) mod budget;
pub mod fair_places;
pub mod http;
pub mod kv;
pub mod log;
pub mod sql;

use std::sync::Arc;

use http::HttpGateway;
use http::resolve::{Lookup, SystemLookup};
use kv::KvStore;
use sql::SqlGateway;

/// Every service's shared state.
pub struct Services {
    /// Outbound HTTP: the resolver, each plugin's pools and counters.
    pub http: Arc<HttpGateway>,
    /// The key-value store; `None` refuses every plugin with `[kv]` at load.
    pub kv: Option<Arc<KvStore>>,
    /// The audit log every grant change is recorded in before it takes
    /// effect; `None` (`[audit] enabled = false`, and commands that change
    /// no grant) records nothing.
    pub audit: Option<Arc<crate::audit::AuditTrail>>,
    /// The SQL gateway: one pool per `[databases.<alias>]`, opened at
    /// first use.
    pub sql: Arc<SqlGateway>,
}

/// A service that could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServicesError {
    /// The HTTP gateway (the platform's TLS roots).
    #[error("outbound HTTP: {0}")]
    Http(#[from] http::transport::TransportError),
}

impl Services {
    /// The services as the settings describe them, with the system's DNS
    /// resolver. The key-value store is the redb file in the data
    /// directory, or the PostgreSQL database `[kv] database` names; either
    /// is opened at its first use, so a database that is down makes calls
    /// `unavailable` rather than stopping the start.
    pub fn from_config(config: &crate::config::Config) -> Result<Services, ServicesError> {
        let store = match &config.kv.database {
            None => KvStore::redb(config.data_dir.join("kv")),
            // The alias exists (checked when the settings were loaded); its
            // URL is read when the store opens, so commands that never
            // store anything (`policy check`, `compile`) need no secret.
            Some(alias) => match config.databases.get(alias).map(|d| &d.target) {
                Some(crate::databases::DatabaseTarget::Postgres(source)) => {
                    KvStore::postgres_alias(alias, source.clone())
                }
                _ => KvStore::redb(config.data_dir.join("kv")),
            },
        };
        Ok(Services::with_dns(Arc::new(SystemLookup))?.with_kv(store).with_sql(SqlGateway::from_config(config)))
    }

    /// These services with `trail` as the audit log (`gatehouse run`).
    pub fn with_audit(self, trail: crate::audit::AuditTrail) -> Services {
        Services { audit: Some(Arc::new(trail)), ..self }
    }

    /// These services with `store` as the key-value store.
    pub fn with_kv(self, store: KvStore) -> Services {
        Services { kv: Some(Arc::new(store)), ..self }
    }

    /// These services with `gateway` as the SQL gateway.
    pub fn with_sql(self, gateway: SqlGateway) -> Services {
        Services { sql: Arc::new(gateway), ..self }
    }

    /// The services with another DNS resolver for outbound HTTP (tests and
    /// benchmarks point names at loopback servers without a DNS server),
    /// no key-value store and no database.
    pub fn with_dns(lookup: Arc<dyn Lookup>) -> Result<Services, ServicesError> {
        Ok(Services {
            http: Arc::new(HttpGateway::new(lookup)?),
            kv: None,
            sql: Arc::new(SqlGateway::new(&Default::default())),
            audit: None,
        })
    }
}
