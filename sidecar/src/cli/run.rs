//! `gatehouse run`: the long-running sidecar. Binds the invoke and admin
//! listeners, loads the plugins (`/readyz` says when), then serves until
//! SIGTERM or SIGINT, draining in-flight requests. SIGHUP reloads the
//! policy directory, as `POST /admin/reload` does.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gatehouse::Runtime;
use gatehouse::api::{self, Api, ServeLimits};
use gatehouse::audit::AuditTrail;
use gatehouse::audit::trail::Location;
use gatehouse::config::Config;
use gatehouse::databases::Databases;
use gatehouse::services::Services;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How long, once the drain is over, the invocations still running get to
/// end after their stops are raised: one row's unchecked work (see the
/// README's SQL deadlines) and the unwinding of the guest.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    // First of all, before the addresses are printed and the plugins load
    // (which can take seconds): a signal's default action would end the
    // process, SIGHUP included. A SIGHUP that arrives during the first
    // load reloads once it is done.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let server = &config.server;
    let mut tokens = Vec::new();
    for (name, source) in server.admin_token_sources() {
        let what = if name == gatehouse::config::ADMIN_TOKEN_NAME && server.admin_token.is_some() {
            "[server] admin_token".to_string()
        } else {
            format!("[server.admin_tokens.{name}]")
        };
        let token = source.read().map_err(|e| anyhow::anyhow!("{what}: cannot read {e}"))?;
        // An empty token would make every bearer header (or none) match.
        if token.trim().is_empty() {
            anyhow::bail!("{what} is empty: set a non-empty token (or remove it on loopback)");
        }
        tokens.push((name.to_string(), token.trim().to_string()));
    }
    let mut services = Services::from_config(config)?;
    if config.audit.enabled {
        // Before anything is served: a log that cannot be opened, or whose
        // store no longer matches its last checkpoint, stops the start.
        let location = Location::of(config, true).context("the audit log cannot be opened")?;
        let trail = AuditTrail::open_at(location, &config.audit)
            .and_then(|trail| trail.remembering(config.data_dir.join(gatehouse::audit::trail::WITNESS_FILE)))
            .context("the audit log cannot be opened")?;
        let store = trail.location().shown();
        tracing::info!(%store, origin = trail.origin(), entries = trail.metrics().checkpoint_size(), "audit log open");
        services = services.with_audit(trail);
    }
    let services = Arc::new(services);
    // The embedded application database, when the settings name it, gets
    // its schema before any plugin runs (a failure is logged; calls retry
    // the open). Otherwise it is made at its first use.
    if config.databases.contains_key(gatehouse::services::sql::pool::APP_ALIAS) {
        services.sql.open_app().await;
    }
    let runtime = Arc::new(Runtime::new(config.runtime.clone(), services.clone())?);
    let databases = Arc::new(Databases::open(&config.databases)?);
    let api = Arc::new(Api::new(runtime, services, config, databases));

    let listener = TcpListener::bind(server.listen).await.with_context(|| format!("binding {}", server.listen))?;
    let invoke_addr = listener.local_addr()?;
    let admin = match server.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding admin {addr}"))?),
        None => None,
    };
    println!("gatehouse: invoke API on http://{invoke_addr}");
    if let Some(admin) = &admin {
        let auth = if tokens.is_empty() { "loopback only, no token" } else { "bearer token" };
        println!("gatehouse: admin API on http://{} ({auth})", admin.local_addr()?);
    }

    let (stop, stopped) = watch::channel(false);
    let limits = ServeLimits {
        max_connections: server.max_connections,
        header_timeout: server.request_timeout,
        write_timeout: server.request_timeout,
        drain_timeout: server.drain_timeout,
    };
    let wait = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    if let Some(trail) = api.services.audit.clone()
        && matches!(trail.location(), Location::Postgres(_))
    {
        servers.spawn(follow_shared_log(trail, wait(stopped.clone())));
    }
    servers.spawn(api::serve(listener, api::invoke::router(api.clone()), limits, wait(stopped.clone())));
    if let Some(admin) = admin {
        servers.spawn(api::serve(admin, api::admin::router(api.clone(), tokens), limits, wait(stopped.clone())));
    }

    // SIGTERM or SIGINT during a load (the first one, or a reload on
    // SIGHUP) stops the process without waiting for it: compilations can
    // take a long time, and their workers die with the process.
    let stopping = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let mut stopping = std::pin::pin!(stopping);
    let first = async {
        api.reload("start").await;
        // Logs each database as reachable or not.
        api.databases.check().await;
    };
    let interrupted = tokio::select! {
        () = first => false,
        () = &mut stopping => true,
    };
    if !interrupted {
        try_line(&api, invoke_addr);
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    let reload = async {
                        api.reload("SIGHUP").await;
                    };
                    tokio::select! {
                        () = reload => {}
                        () = &mut stopping => break,
                    }
                }
                () = &mut stopping => break,
            }
        }
    }
    tracing::info!(timeout = ?server.drain_timeout, "stopping: draining in-flight requests");
    let _ = stop.send(true);
    while servers.join_next().await.is_some() {}
    // What the drain left running is stopped now, rather than when the
    // runtime's threads are torn down under it.
    api.runtime.stop_all(STOP_WAIT).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prints a line to try, with a plugin that did load.
fn try_line(api: &Api, invoke_addr: std::net::SocketAddr) {
    let plugins = api.runtime.summaries();
    if plugins.iter().any(|p| p.name == "doc-enricher") {
        println!(
            "try: curl -s -H 'content-type: application/json' --data '{{\"text\": \"Hello, world.\"}}' \
             http://{invoke_addr}/v1/plugins/doc-enricher/invoke"
        );
    } else if let Some(plugin) = plugins.iter().find(|p| p.kind == "plugin") {
        println!("try: curl -s --data-binary @input.json http://{invoke_addr}/v1/plugins/{}/invoke", plugin.name);
    }
    if plugins.iter().any(|p| p.name == "kv-counter") {
        println!(
            "try: curl -s --data visit http://{invoke_addr}/v1/plugins/kv-counter/invoke   \
             (counts in the key-value store; then: gatehouse kv get kv-counter visits)"
        );
    }
}

/// Reads the shared log's head every `FOLLOW_INTERVAL` (see
/// `AuditTrail::follow`); says once when the log stops extending what
/// this sidecar saw, and once when it does again.
async fn follow_shared_log(trail: std::sync::Arc<AuditTrail>, stopped: impl std::future::Future<Output = ()>) {
    let mut stopped = std::pin::pin!(stopped);
    let mut failing = false;
    loop {
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(gatehouse::audit::trail::FOLLOW_INTERVAL) => {}
        }
        let trail = trail.clone();
        let outcome = tokio::task::spawn_blocking(move || trail.follow()).await;
        match outcome {
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::error!(error = %e, "the shared audit log cannot be followed");
            }
            Ok(Ok(())) if failing => {
                failing = false;
                tracing::info!("the shared audit log is readable again");
            }
            _ => {}
        }
    }
}
