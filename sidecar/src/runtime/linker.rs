//! What a plugin may import, as one table of contents. Every entry here is
//! also listed in [`super::imports`], which refuses a component whose
//! imports go beyond what its policy grants before it is instantiated.

use wasmtime::Engine;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings as wasi;
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

use super::host_budget;
use super::state::PluginState;
use crate::bindings::gatehouse::services as gatehouse;
use crate::services::http::host::HttpClientService;
use crate::services::kv::wasi::WasiKv;
use crate::services::kv::{KvService, wasi_draft, wasi_draft2};
use crate::services::log::LogService;
use crate::services::sql::{SpinSqlService, SqlService, spin};

pub(super) fn new_linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    let l = &mut linker;
    type S = PluginState;

    // wasi:io: the streams and pollables the other WASI interfaces hand out.
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<S, Io>(l, |s| &mut s.table)?;
    wasmtime_wasi_io::bindings::wasi::io::poll::add_to_linker::<S, Io>(l, |s| &mut s.table)?;
    wasmtime_wasi_io::bindings::wasi::io::streams::add_to_linker::<S, Io>(l, |s| &mut s.table)?;

    // wasi:clocks and wasi:random: harmless, and every language runtime needs them.
    wasi::clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, S::clocks)?;
    wasi::clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, S::clocks)?;
    wasi::random::random::add_to_linker::<S, WasiRandom>(l, S::random)?;
    wasi::random::insecure::add_to_linker::<S, WasiRandom>(l, S::random)?;
    wasi::random::insecure_seed::add_to_linker::<S, WasiRandom>(l, S::random)?;

    // wasi:cli: empty environment and arguments, empty stdin, stdout and
    // stderr captured into the plugin's log (see `PluginState::new`).
    wasi::cli::environment::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::exit::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::stdin::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::stdout::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::stderr::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::terminal_input::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::terminal_output::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, S::cli)?;
    wasi::cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, S::cli)?;

    // wasi:filesystem: the types, so standard libraries link, but no
    // preopened directories, so there is nothing to open.
    wasi::filesystem::types::add_to_linker::<S, WasiFilesystem>(l, S::filesystem)?;
    wasi::filesystem::preopens::add_to_linker::<S, WasiFilesystem>(l, S::filesystem)?;

    // gatehouse:services
    gatehouse::log::add_to_linker::<S, LogService>(l, |s| &mut s.logger)?;

    // Outbound HTTP, two doors onto one gateway (`services::http`). Linked
    // for everyone, usable only with an [http] grant (see `imports`).
    gatehouse::http_client::add_to_linker::<S, HttpClientService>(l, |s| &mut s.http)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
    cap_request_strings(l)?;

    // The key-value store (`services::kv`), three doors onto one service,
    // usable only with a [kv] grant.
    gatehouse::kv::add_to_linker::<S, KvService>(l, |s| &mut s.kv)?;
    wasi_draft::bindings::Imports::add_to_linker::<S, WasiKv>(l, S::wasi_kv)?;
    wasi_draft2::bindings::Imports::add_to_linker::<S, WasiKv>(l, S::wasi_kv)?;

    // The SQL gateway (`services::sql`), three doors onto one gateway,
    // usable only with a [sql.<alias>] grant.
    gatehouse::sql::add_to_linker::<S, SqlService>(l, |s| &mut s.sql)?;
    spin::v2::fermyon::spin::sqlite::add_to_linker::<S, SpinSqlService>(l, |s| &mut s.sql)?;
    spin::v3::spin::sqlite::sqlite::add_to_linker::<S, SpinSqlService>(l, |s| &mut s.sql)?;

    Ok(linker)
}

/// Links wasi:io against the store's resource table.
struct Io;

impl HasData for Io {
    type Data<'a> = &'a mut ResourceTable;
}

/// wasmtime-wasi-http keeps the method and the authority a guest sets on an
/// `outgoing-request` as they come, whether or not the request is ever
/// sent: up to one host call's data each, times every handle the guest
/// holds (an outside review made an 8 MiB plugin hold 390 MB). These two
/// setters are replaced by ones that refuse a string longer than
/// [`host_budget::MAX_REQUEST_STRING`] and otherwise do what wasmtime's do.
fn cap_request_strings(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::WasiHttpView;
    use wasmtime_wasi_http::p2::bindings::http::types::{HostOutgoingRequest, Method, OutgoingRequest};

    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store, (request, method): (Resource<OutgoingRequest>, Method)| {
            if matches!(&method, Method::Other(s) if s.len() > host_budget::MAX_REQUEST_STRING) {
                return Ok((Err(()),));
            }
            let state: &mut PluginState = store.data_mut();
            HostOutgoingRequest::set_method(&mut state.http(), request, method).map(|r| (r,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store, (request, authority): (Resource<OutgoingRequest>, Option<String>)| {
            if authority.as_ref().is_some_and(|a| a.len() > host_budget::MAX_REQUEST_STRING) {
                return Ok((Err(()),));
            }
            let state: &mut PluginState = store.data_mut();
            HostOutgoingRequest::set_authority(&mut state.http(), request, authority).map(|r| (r,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
