//! The subcommands. Each returns the process exit code; `Err` is reserved
//! for bad settings (exit 2).

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use gatehouse::config::Config;
use gatehouse::policy::{self, PolicyLoad};
use gatehouse::services::http::explain::explain;
use gatehouse::services::http::resolve::SystemLookup;
use gatehouse::{Document, Runtime};

/// The load, dry: parse every policy, then compile each component
/// (through the code cache), check its imports against its grants, resolve
/// its secrets and read its `info()`, exactly as `run` would, without
/// serving. One line per plugin or problem, on stdout.
pub async fn policy_check(config: &Config) -> anyhow::Result<ExitCode> {
    let load = read_policies(config)?;
    let runtime = runtime(config)?;
    let report = runtime.load(&load.set).await;
    let mut bad = load.errors.len();
    for error in &load.errors {
        println!("error {error}");
    }
    for (name, policy) in &load.set.plugins {
        match report.refused.iter().find(|e| &e.plugin == name) {
            None => println!("ok    {name} ({})", gatehouse::policy::shown(&policy.file)),
            Some(refused) => {
                bad += 1;
                println!("error {}: plugin `{name}` refused: {}", refused.file, refused.reason);
            }
        }
    }
    let ok = load.set.plugins.len() + load.errors.len() - bad;
    println!("{ok} plugin(s) valid, {bad} problem(s)");
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn explain_url(config: &Config, plugin: &str, url: &str) -> anyhow::Result<ExitCode> {
    let load = read_policies(config)?;
    let Some(policy) = load.set.plugins.get(plugin) else {
        report_policy_errors(&load);
        anyhow::bail!("no valid policy for plugin `{plugin}` in {}", config.policy_dir.display());
    };
    let e = explain(policy.http.as_ref(), url, &SystemLookup).await;
    println!("plugin      {plugin} ({})", gatehouse::policy::shown(&policy.file));
    println!("url         {}", e.normalized.as_deref().unwrap_or(url));
    println!("rule        {}", e.rule.as_deref().unwrap_or("(none matched)"));
    if e.rule.is_some() {
        let zone = if e.private_granted { "any single address (exact grant)" } else { "public addresses only" };
        println!("may reach   {zone}");
    }
    match &e.addresses {
        Ok(addrs) => {
            for a in addrs {
                let verdict = if a.admitted { "admitted" } else { "refused" };
                println!("address     {} {} ({verdict})", a.ip, a.class);
            }
        }
        Err(why) => println!("address     {why}"),
    }
    Ok(match &e.verdict {
        Ok(()) => {
            println!("verdict     allowed");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("verdict     denied: {why}");
            ExitCode::FAILURE
        }
    })
}

pub async fn invoke(
    config: &Config,
    plugin: &str,
    input: &Path,
    content_type: Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = if input == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).context("reading stdin")?;
        body
    } else {
        std::fs::read(input).with_context(|| format!("reading {}", input.display()))?
    };
    let content_type = content_type.unwrap_or_else(|| {
        let json = input.extension().is_some_and(|ext| ext == "json");
        if json { "application/json" } else { "text/plain" }.to_string()
    });
    let runtime = start(config, Some(plugin)).await?;
    match runtime.invoke(plugin, Document { content_type, body }).await {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&output.body)?;
            if !output.body.ends_with(b"\n") {
                stdout.write_all(b"\n")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", e.kind());
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn compile(config: &Config) -> anyhow::Result<ExitCode> {
    let load = read_policies(config)?;
    report_policy_errors(&load);
    let runtime = runtime(config)?;
    let mut failed = !load.errors.is_empty();
    for (name, policy) in &load.set.plugins {
        match runtime.precompile(policy) {
            Ok((path, outcome)) => println!("{name}: {outcome:?} -> {}", path.display()),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Loads policies and plugins, reporting (not failing on) refused ones.
/// With `only`, loads just that plugin when its policy is valid, so one
/// invocation neither waits for nor reports on unrelated plugins; if its
/// policy is not among the valid ones, every policy problem is reported,
/// since one of them is probably why.
pub(super) async fn start(config: &Config, only: Option<&str>) -> anyhow::Result<Runtime> {
    let mut load = read_policies(config)?;
    if let Some(name) = only
        && load.set.plugins.contains_key(name)
    {
        load.set.plugins.retain(|plugin, _| plugin == name);
        load.errors.clear();
    }
    report_policy_errors(&load);
    let runtime = runtime(config)?;
    // Each refusal is logged by the runtime (once).
    runtime.load(&load.set).await;
    Ok(runtime)
}

/// The runtime with the services the settings describe.
fn runtime(config: &Config) -> anyhow::Result<Runtime> {
    let services = std::sync::Arc::new(gatehouse::services::Services::from_config(config)?);
    Ok(Runtime::new(config.runtime.clone(), services)?)
}

fn read_policies(config: &Config) -> anyhow::Result<PolicyLoad> {
    let components = policy::ComponentDir { path: &config.plugin_dir, origin: &config.plugin_dir_origin };
    Ok(policy::load_dir_in(&config.policy_dir, components)?)
}

fn report_policy_errors(load: &PolicyLoad) {
    for error in &load.errors {
        eprintln!("error: policy refused: {error}");
    }
}
