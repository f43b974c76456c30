//! What a `Store` holds for one invocation: the sandboxed WASI context, the
//! resource table, the memory limiter and each service's per-call state.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::host_budget;
use super::limits::InvocationLimiter;
use crate::policy::{PluginPolicy, Stdio};
use crate::services::http::PluginHttp;
use crate::services::http::host::HttpHost;
use crate::services::kv::{KvHost, PluginKv};
use crate::services::log::stdio::{CapturedOutput, Stream};
use crate::services::log::{Logger, PluginTag};
use crate::services::sql::{PluginSql, SqlHost};
use crate::stop::Stop;

/// Most bytes one `wasi:random` call may ask for.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The services granted to one loaded plugin, shared by its invocations:
/// each is `None` when the policy has no section for it.
#[derive(Clone, Default)]
pub(crate) struct Granted {
    pub(crate) http: Option<Arc<PluginHttp>>,
    pub(crate) kv: Option<Arc<PluginKv>>,
    pub(crate) sql: Option<Arc<PluginSql>>,
}

pub(crate) struct PluginState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: InvocationLimiter,
    pub(crate) logger: Logger,
    pub(crate) http: HttpHost,
    http_ctx: WasiHttpCtx,
    pub(crate) kv: KvHost,
    /// Dropped with the store at the end of the invocation: every
    /// transaction the guest left open is rolled back then.
    pub(crate) sql: SqlHost,
}

impl PluginState {
    pub(crate) fn new(policy: &PluginPolicy, tag: &Arc<PluginTag>, granted: &Granted, stop: Stop) -> Self {
        let http = granted.http.clone();
        let logger = Logger::new(tag.clone());
        // No arguments, no environment variables, no preopened directories:
        // the builder grants nothing unless asked, and we never ask.
        let mut wasi = WasiCtxBuilder::new();
        // `get-random-bytes` fills its answer synchronously, where no
        // deadline can stop it: keep one call to milliseconds of work.
        wasi.max_random_size(MAX_RANDOM_BYTES);
        match policy.stdio {
            Stdio::Log => {
                wasi.stdout(CapturedOutput::new(logger.clone(), Stream::Stdout));
                wasi.stderr(CapturedOutput::new(logger.clone(), Stream::Stderr));
            }
            Stdio::Inherit => {
                wasi.inherit_stdout().inherit_stderr();
            }
            Stdio::Discard => {}
        }
        // What the guest can make the host hold between calls, from its
        // memory (see `host_budget`).
        let memory = policy.limits.memory;
        let mut table = ResourceTable::new();
        table.set_max_capacity(host_budget::max_handles(memory));
        let mut http_ctx = WasiHttpCtx::new();
        http_ctx.set_field_size_limit(host_budget::FIELD_SIZE_LIMIT);
        let open_requests = http
            .as_ref()
            .map_or(1, |h| host_budget::max_open_requests(memory, h.policy().max_request, h.policy().max_response));
        PluginState {
            wasi: wasi.build(),
            table,
            limiter: InvocationLimiter::new(memory),
            logger,
            http: HttpHost::new(http, open_requests),
            http_ctx,
            kv: KvHost::new(granted.kv.clone()),
            sql: SqlHost::new(granted.sql.clone(), stop),
        }
    }
}

impl PluginState {
    /// What the `wasi:keyvalue` doors reach: the plugin's grant and the
    /// table their handles live in.
    pub(crate) fn wasi_kv(&mut self) -> crate::services::kv::wasi::WasiKvView<'_> {
        crate::services::kv::wasi::WasiKvView { host: &mut self.kv, table: &mut self.table }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http }
    }
}
