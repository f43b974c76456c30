//! What a `Store` holds for one invocation: the sandboxed WASI context, the
//! resource table, the memory limiter and each service's per-call state.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::policy::{PluginPolicy, Stdio};
use crate::services::http::PluginHttp;
use crate::services::http::host::HttpHost;
use crate::services::log::stdio::{CapturedOutput, Stream};
use crate::services::log::{Logger, PluginTag};

pub(crate) struct PluginState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) logger: Logger,
    pub(crate) http: HttpHost,
    http_ctx: WasiHttpCtx,
}

impl PluginState {
    pub(crate) fn new(policy: &PluginPolicy, tag: &Arc<PluginTag>, http: Option<Arc<PluginHttp>>) -> Self {
        let logger = Logger::new(tag.clone());
        // No arguments, no environment variables, no preopened directories:
        // the builder grants nothing unless asked, and we never ask.
        let mut wasi = WasiCtxBuilder::new();
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
        PluginState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(policy.limits.memory),
            logger,
            http: HttpHost::new(http),
            http_ctx: WasiHttpCtx::new(),
        }
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

/// Enforces the policy's memory limit and remembers whether it had to, so
/// that the trap a refused `memory.grow` usually leads to (allocation
/// failure aborts a Rust guest) is reported as `quota-exceeded`.
pub(crate) struct MemoryLimiter {
    max_memory: usize,
    exceeded: bool,
}

/// Table elements one instance may grow to; generous for real guests.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    fn new(max_memory: u64) -> Self {
        MemoryLimiter { max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX), exceeded: false }
    }

    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
