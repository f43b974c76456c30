//! `gatehouse demo`: load the example plugins and run each on a sample.
//!
//! Plugins get `<policy_dir>/samples/<plugin>.json` when it exists and a
//! short article otherwise. For the example `fetcher` plugin, whose policy
//! grants `http://localhost:8089` only, the demo serves a small upstream on
//! that loopback port while it runs, so the whole path (guest, policy,
//! guarded resolver, pooled client, server) runs without any network.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use gatehouse::Document;
use gatehouse::config::Config;

use super::commands::start;

/// The article fed to plugins without a sample of their own.
const ARTICLE: &str = include_str!("sample-article.json");
/// Where the demo upstream listens (the example fetcher policy's grant).
const UPSTREAM_PORT: u16 = 8089;

pub async fn demo(config: &Config) -> anyhow::Result<ExitCode> {
    let _upstream = start_upstream().await;
    let runtime = start(config, None).await?;
    // wasi:http components are served by `gatehouse run`, not invoked.
    let (plugins, served): (Vec<_>, Vec<_>) = runtime.summaries().into_iter().partition(|p| p.kind == "plugin");
    for proxy in served {
        println!("== {} (wasi:http component): skipped; `gatehouse run` serves it at /p/{}/\n", proxy.name, proxy.name);
    }
    if plugins.is_empty() {
        anyhow::bail!("no plugin loaded from {}", config.policy_dir.display());
    }
    let mut failed = false;
    for plugin in plugins {
        let name = plugin.name;
        println!("== {name} {} — {}", plugin.version, plugin.description);
        let sample = config.policy_dir.join("samples").join(format!("{name}.json"));
        let body = match std::fs::read(&sample) {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ARTICLE.as_bytes().to_vec(),
            Err(e) => anyhow::bail!("reading {}: {e}", sample.display()),
        };
        let input = Document { content_type: "application/json".into(), body };
        match runtime.invoke(&name, input).await {
            Ok(output) => println!("{}\n", String::from_utf8_lossy(&output.body)),
            Err(e) => {
                println!("error: {}: {e}\n", e.kind());
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Serves `GET /quote` on 127.0.0.1:8089 until dropped. If the port is
/// taken, says so and carries on: the fetcher then shows whatever that
/// server answers, or `unavailable`.
async fn start_upstream() -> Option<AbortOnDrop> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, UPSTREAM_PORT));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("warning: demo upstream not started on {addr}: {e}");
            return None;
        }
    };
    let app = axum::Router::new().route(
        "/quote",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                r#"{"quote": "Trust, but verify.", "served_by": "the gatehouse demo upstream on 127.0.0.1:8089"}"#,
            )
        }),
    );
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("warning: demo upstream stopped: {e}");
        }
    });
    Some(AbortOnDrop(server))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
