//! What an operator sees: readiness that means "serving what the policy
//! directory asks for", refused plugins and policy files with their
//! reasons on the admin API, one summary line per (re)load whatever asked
//! for it, unloads logged, and routes that say which door a plugin has.

use std::time::{Duration, Instant};

use crate::common::Policies;
use crate::sidecar::{Sidecar, json, request};

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn admin_plugins(sidecar: &Sidecar) -> serde_json::Value {
    let (status, _, body) = sidecar.get(&sidecar.admin, "/admin/plugins");
    assert_eq!(status, 200, "{}", text(&body));
    json(&body)
}

fn reload(sidecar: &Sidecar) -> u16 {
    request(&sidecar.admin, "POST", "/admin/reload", &[], b"").0
}

/// Waits until the sidecar's log contains `needle` (log lines are written
/// by another thread of the sidecar than the one that answered).
fn wait_for_log(sidecar: &Sidecar, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let log = sidecar.stderr();
        if log.contains(needle) {
            return log;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no `{needle}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readyz_waits_for_every_policy_to_be_served_and_names_what_is_not() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("socket", "hostile_socket", "");
    policies.write("typo.toml", "[plugin]\nname = \"typo\"\ncomponnet = \"x\"\n");
    let sidecar = Sidecar::start_unready(&policies, "", &[]);

    // Loaded, yet not ready: one plugin and one file are refused. The
    // body names them, without the reasons (the invoke listener may face
    // more callers than the operators).
    let (status, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
    assert_eq!(status, 503);
    assert_eq!(text(&body), "policy file `typo.toml` refused\nplugin `socket` refused\n");
    assert_eq!(sidecar.invoke("echo", "hi").0, 200, "what did load is served meanwhile");

    // The admin API has the reasons.
    let plugins = admin_plugins(&sidecar);
    let refused = plugins["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{plugins}");
    assert_eq!(refused[0]["plugin"], "socket");
    assert!(refused[0]["reason"].as_str().unwrap().contains("wasi:sockets"), "{plugins}");
    assert!(refused[0]["serving"].is_null());
    let files = plugins["refused_policy_files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{plugins}");
    assert!(files[0]["policy_file"].as_str().unwrap().ends_with("typo.toml"), "{plugins}");
    assert_eq!(files[0]["line"], 3);
    assert!(files[0]["reason"].as_str().unwrap().contains("unknown field `componnet`"), "{plugins}");

    // Fixed: ready.
    std::fs::remove_file(policies.dir.path().join("socket.toml")).unwrap();
    std::fs::remove_file(policies.dir.path().join("typo.toml")).unwrap();
    assert_eq!(reload(&sidecar), 200);
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    assert_eq!(admin_plugins(&sidecar)["refused"].as_array().unwrap().len(), 0);

    // A new version refused while the old one keeps serving: still ready,
    // and the refusal is listed with the version in force.
    let socket = crate::common::guest("hostile_socket").display().to_string();
    policies.write("echo.toml", &format!("[plugin]\nname = \"echo\"\ncomponent = {socket:?}\n"));
    assert_eq!(reload(&sidecar), 422);
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    let plugins = admin_plugins(&sidecar);
    assert_eq!(plugins["refused"][0]["plugin"], "echo");
    assert_eq!(plugins["refused"][0]["serving"], "0.1.0", "{plugins}");

    // The same when the new file does not even parse: the plugin keeps
    // serving, and the refusal is listed with it.
    policies.write("echo.toml", "[plugin]\nname = \"echo\"\ncomponnet = \"x\"\n");
    assert_eq!(reload(&sidecar), 422);
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    let plugins = admin_plugins(&sidecar);
    assert_eq!(plugins["refused"][0]["serving"], "0.1.0", "{plugins}");
    assert!(plugins["refused"][0]["reason"].as_str().unwrap().contains("componnet"), "{plugins}");
    assert_eq!(plugins["refused_policy_files"].as_array().unwrap().len(), 0, "{plugins}");
}

/// The commonest mistake, a component path that does not resolve, is a
/// refusal of that plugin: named on /readyz, `unavailable` to callers
/// (not "no such plugin"), and listed with its reason on the admin API.
#[test]
fn a_missing_component_is_a_refused_plugin() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.write("lost.toml", "[plugin]\nname = \"lost\"\ncomponent = \"nowhere/lost.wasm\"\n");
    let sidecar = Sidecar::start_unready(&policies, "", &[]);
    let (status, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
    assert_eq!((status, text(&body).as_str()), (503, "plugin `lost` refused\n"));
    let (status, _, body) = sidecar.invoke("lost", "x");
    assert_eq!((status, json(&body)["kind"].as_str()), (503, Some("unavailable")), "{}", text(&body));
    let plugins = admin_plugins(&sidecar);
    assert!(plugins["refused"][0]["reason"].as_str().unwrap().contains("cannot be read"), "{plugins}");
}

/// Attack: a new policy file that sorts first claims the name of a
/// plugin another file defines, to take it over. Both files are refused;
/// the version in force keeps serving, and the sidecar stays ready.
#[test]
fn a_second_file_claiming_a_plugin_name_takes_nothing_over() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let hog = crate::common::guest("hostile_memory").display().to_string();
    policies.write("aa.toml", &format!("[plugin]\nname = \"echo\"\ncomponent = {hog:?}\n"));
    assert_eq!(reload(&sidecar), 422);
    assert_eq!(sidecar.invoke("echo", "same").2, b"same", "still the original echo");
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    let plugins = admin_plugins(&sidecar);
    let reason = plugins["refused"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("is claimed by") && reason.contains("aa.toml"), "{plugins}");
    assert!(!sidecar.stderr().contains("reloaded with a new policy"), "{}", sidecar.stderr());

    // The same when the plugin's own file stops parsing first, so that the
    // new file is the only one naming it (found by an outside review).
    std::fs::remove_file(policies.dir.path().join("aa.toml")).unwrap();
    policies.write("echo.toml", "[plugin\nname = ");
    policies.write("new.toml", &format!("[plugin]\nname = \"echo\"\ncomponent = {hog:?}\n"));
    assert_eq!(reload(&sidecar), 422);
    assert_eq!(sidecar.invoke("echo", "same").2, b"same", "still the original echo");
    let plugins = admin_plugins(&sidecar);
    assert!(plugins["plugins"][0]["policy_file"].as_str().unwrap().ends_with("echo.toml"), "{plugins}");
}

#[test]
fn an_unreadable_policy_directory_is_not_ready() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::launch(&policies, "", &[]);
    std::fs::remove_dir_all(policies.dir.path()).unwrap();
    // Racing the first load: whichever load sees the directory gone.
    let started = Instant::now();
    loop {
        assert_eq!(reload(&sidecar), 422);
        let (status, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
        if text(&body) == "the policy directory cannot be read\n" {
            assert_eq!(status, 503);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status} {}", text(&body));
    }
    let plugins = admin_plugins(&sidecar);
    assert!(plugins["policy_dir_error"].as_str().unwrap().contains("cannot read the policy directory"), "{plugins}");
}

#[test]
fn ready_when_started_is_ready_with_whatever_loaded() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("socket", "hostile_socket", "");
    let sidecar = Sidecar::start(&policies, "ready_when = \"started\"", &[]);
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    assert_eq!(admin_plugins(&sidecar)["refused"][0]["plugin"], "socket");
}

#[test]
fn every_reload_logs_one_summary_and_only_what_changed() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("doc-enricher", "doc_enricher", "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    wait_for_log(&sidecar, "trigger=\"start\"");
    let loaded_lines = |log: &str| log.lines().filter(|l| l.contains("plugin loaded")).count();
    assert_eq!(loaded_lines(&sidecar.stderr()), 2);

    // An admin reload with nothing changed: a summary, no "loaded" again.
    assert_eq!(reload(&sidecar), 200);
    let log = wait_for_log(&sidecar, "trigger=\"admin API\"");
    assert_eq!(loaded_lines(&log), 2, "{log}");
    assert!(!log.contains("reloaded with a new policy"), "{log}");

    // A changed limit is a reload of that plugin; a deleted policy is an unload.
    policies.plugin("echo", "echo", "timeout = \"3s\"");
    std::fs::remove_file(policies.dir.path().join("doc-enricher.toml")).unwrap();
    sidecar.signal("HUP");
    let log = wait_for_log(&sidecar, "trigger=\"SIGHUP\"");
    let reloaded: Vec<_> = log.lines().filter(|l| l.contains("reloaded with a new policy")).collect();
    assert!(reloaded.len() == 1 && reloaded[0].contains("plugin=echo"), "{log}");
    let unloaded: Vec<_> = log.lines().filter(|l| l.contains("plugin unloaded")).collect();
    assert!(unloaded.len() == 1 && unloaded[0].contains("plugin=doc-enricher"), "{log}");
}

#[test]
fn each_door_names_the_other_when_called_on_the_wrong_one() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.proxy("hello", "");
    let sidecar = Sidecar::start(&policies, "", &[]);

    let (status, _, body) = sidecar.invoke("hello", "x");
    assert_eq!(status, 404);
    assert!(json(&body)["message"].as_str().unwrap().contains("serves it at /p/hello/"), "{}", text(&body));
    let (status, _, body) = sidecar.get(&sidecar.invoke, "/p/echo/");
    assert_eq!(status, 404);
    assert!(json(&body)["message"].as_str().unwrap().contains("POST /v1/plugins/echo/invoke"), "{}", text(&body));

    // Counted as the caller's wrong turn, not as a missing plugin.
    let metrics = text(&sidecar.get(&sidecar.invoke, "/metrics").2);
    assert!(metrics.contains("plugin=\"hello\"") && metrics.contains("outcome=\"wrong-interface\""), "{metrics}");
    assert!(!metrics.lines().any(|l| l.contains("plugin=\"hello\"") && l.contains("not-found")), "{metrics}");
    assert!(!metrics.lines().any(|l| l.contains("plugin=\"echo\"") && l.contains("not-found")), "{metrics}");
}

#[test]
fn admin_refusals_are_json_errors_like_every_other_answer() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sidecar = Sidecar::start(&policies, "admin_token = { env = \"T\" }", &[("T", "s3cret")]);
    for (headers, status) in [
        (vec![], 401),
        (vec![("authorization", "Bearer wrong")], 401),
        (vec![("authorization", "Bearer s3cret"), ("origin", "https://evil.example")], 403),
    ] {
        let (got, response_headers, body) = request(&sidecar.admin, "GET", "/admin/plugins", &headers, b"");
        assert_eq!(got, status);
        assert_eq!(crate::sidecar::header(&response_headers, "content-type"), Some("application/json"));
        assert_eq!(json(&body)["kind"], "denied", "{}", text(&body));
    }
}

#[test]
fn run_takes_its_listeners_from_the_command_line() {
    use std::io::BufRead;
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let (_data, config) = policies.settings("");
    let mut child = crate::common::gatehouse_command()
        .args(["--config", config.to_str().unwrap(), "run", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("gatehouse: invoke API on http://127.0.0.1:"), "{first}");
    assert!(!first.ends_with(":8080"), "{first}");
    assert!(second.starts_with("try:"), "no admin listener: {second}");

    // The command line is held to the settings file's rules.
    let out = crate::common::gatehouse_command()
        .args(["--config", config.to_str().unwrap(), "run", "--admin-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not a loopback address: set [server] admin_token"), "{}", text(&out.stderr));
}
