//! What a guest can do to the sidecar's log and terminal. Attacks tried,
//! and what must happen:
//! - a log message, a field key and value, and a stdout line carrying
//!   `\n`, `\r` and ANSI escapes followed by a fake sidecar log line
//!   (hostile-log `forge`): escaped, so no forged line appears, both in the
//!   captured events and in the real binary's stderr;
//! - 100,000 log calls of 4 KiB and 80 KB of `y\n` on stdout in one
//!   invocation (hostile-log `flood`): at most the documented events and
//!   bytes per invocation, then one summary of what was dropped, and the
//!   stdout capture cut at 64 KiB with one notice;
//! - an error message of 1 MiB starting with a line break and a forged CLI
//!   error line (hostile-log `error`): printed by `gatehouse invoke` on one
//!   line, escaped and bounded;
//! - a guest looking for the host's environment, arguments, stdin and
//!   files (hostile-snoop), with a secret in the sidecar's environment:
//!   everything empty or refused.

use std::path::Path;
use std::process::Stdio;

use gatehouse::Document;
use gatehouse::services::log::{MAX_BYTES_PER_INVOCATION, MAX_EVENTS_PER_INVOCATION};

use crate::common::{Event, Policies, capture_logs, runtime};

fn doc(text: &str) -> Document {
    Document { content_type: "text/plain".into(), body: text.as_bytes().to_vec() }
}

fn plugin_events(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.target == "gatehouse::plugin").collect()
}

fn breaks_a_line(text: &str) -> bool {
    text.contains(['\n', '\r', '\u{1b}', '\u{2028}'])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_text_cannot_forge_a_log_line() {
    let policies = Policies::new();
    policies.plugin("log", "hostile_log", "");
    let runtime = runtime(&policies).await;
    let (logs, _guard) = capture_logs();
    runtime.invoke("log", doc("forge")).await.unwrap();
    drop(runtime);

    let events = logs.events();
    let events = plugin_events(&events);
    assert!(events.len() >= 2, "the log call and the stdout line: {events:#?}");
    for event in &events {
        for (name, value) in &event.fields {
            assert!(!breaks_a_line(value), "field {name} of {event:?}");
        }
    }
    let messages: Vec<&str> = events.iter().map(|e| e.fields["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.starts_with("ok\\n2026-01-01T00:00:00.000000Z ERROR")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("line\\r\\u{1b}[2K")), "{messages:?}");
    // Fields are a JSON object of escaped keys and values.
    let forged = events
        .iter()
        .filter_map(|e| e.fields.get("fields"))
        .filter_map(|f| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(f).ok())
        .find_map(|object| object.get("key\\nERROR gatehouse::runtime: forged").cloned());
    assert_eq!(forged, Some(serde_json::json!("v\\u{1b}[31mred\\r")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_volume_is_bounded_per_invocation() {
    let policies = Policies::new();
    policies.plugin("log", "hostile_log", "timeout = \"10s\"");
    let runtime = runtime(&policies).await;
    let (logs, _guard) = capture_logs();
    runtime.invoke("log", doc("flood")).await.unwrap();
    drop(runtime);

    let events = logs.events();
    let events = plugin_events(&events);
    let notices = ["guest output truncated", "log budget of the invocation exceeded; later events dropped"];
    let guest_events: Vec<_> = events.iter().filter(|e| !notices.contains(&e.fields["message"].as_str())).collect();
    let bytes: usize = guest_events.iter().map(|e| e.fields["message"].len()).sum();
    assert!(guest_events.len() as u64 <= MAX_EVENTS_PER_INVOCATION + 1, "{} events", guest_events.len());
    assert!(bytes as u64 <= MAX_BYTES_PER_INVOCATION, "{bytes} bytes");
    let summary = events
        .iter()
        .find(|e| e.fields["message"].contains("log budget of the invocation exceeded"))
        .unwrap_or_else(|| panic!("no summary among {} events", events.len()));
    let fields: serde_json::Value = serde_json::from_str(&summary.fields["fields"]).unwrap();
    let dropped = fields["dropped_events"].as_u64().unwrap_or_else(|| panic!("{fields}"));
    // 100,000 log calls and the captured stdout lines, less what was kept.
    assert!(dropped >= 100_000 - MAX_EVENTS_PER_INVOCATION, "{fields}");
    assert!(
        events.iter().any(|e| e.fields["message"] == "guest output truncated"),
        "the 64 KiB stdout capture was cut with a notice"
    );
}

fn gatehouse(args: &[&str], dir: &Path, stdin: &str) -> std::process::Output {
    let mut child = crate::common::gatehouse_command()
        .args(["--policies", dir.to_str().unwrap()])
        .args(args)
        .env("GATEHOUSE_LOG", "info")
        .env("GATEHOUSE_SNOOP_SECRET", "hunter2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running gatehouse");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_binary_prints_guest_text_on_lines_of_its_own_making() {
    let policies = Policies::new();
    policies.plugin("log", "hostile_log", "timeout = \"10s\"");
    let dir = policies.dir.path();

    let out = gatehouse(&["invoke", "log"], dir, "forge");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        assert!(!line.contains('\u{1b}') && !line.contains('\r'), "raw control characters: {line:?}");
        assert!(!line.starts_with("2026-01-01T00:00:00"), "a forged line: {line:?}");
    }
    assert!(stderr.contains("forged by the guest"), "the attempt is still visible, escaped: {stderr}");

    let out = gatehouse(&["invoke", "log"], dir, "flood");
    assert!(out.status.success());
    // 256 events of at most a 4 KiB message, plus the sidecar's own lines.
    assert!(out.stderr.len() < 1_300_000, "{} bytes of log from one invocation", out.stderr.len());

    let out = gatehouse(&["invoke", "log"], dir, "error");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one error line, the sidecar's: {error_lines:?}");
    assert!(error_lines[0].starts_with("error: denied: plugin `log` returned denied: refused\\nerror: plugin billing"));
    assert!(error_lines[0].len() < 5000 && error_lines[0].contains("more bytes]"), "{}", error_lines[0].len());
}

#[test]
fn a_guest_finds_no_environment_arguments_input_or_files() {
    let policies = Policies::new();
    policies.plugin("snoop", "hostile_snoop", "");
    std::fs::write(policies.dir.path().join("secret.txt"), "hunter2").unwrap();
    let out = gatehouse(&["invoke", "snoop"], policies.dir.path(), "stdin of the sidecar");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!report.contains("hunter2") && !report.contains("SNOOP"), "{report}");
    let line = |prefix: &str| report.lines().find(|l| l.starts_with(prefix)).unwrap_or_default().to_string();
    assert_eq!(line("env"), "env ");
    assert_eq!(line("args"), "args ");
    assert!(line("stdin").starts_with("stdin 0 bytes"), "{report}");
    let opened: Vec<_> = report.lines().filter(|l| l.contains("OPEN")).collect();
    assert!(opened.is_empty(), "the guest reached the host's files: {opened:?}");
    assert_eq!(report.lines().filter(|l| l.contains("refused")).count(), 11, "{report}");
}

#[test]
fn json_logs_are_one_object_a_line_with_the_plugins_fields_as_an_object() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    policies.plugin("log", "hostile_log", "");
    let dir = policies.dir.path().to_str().unwrap();
    let run = |plugin: &str, input: &str| {
        let mut child = crate::common::gatehouse_command()
            .args(["--log-format", "json", "--policies", dir, "invoke", plugin, "--content-type", "application/json"])
            .env("GATEHOUSE_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stderr)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect::<Vec<_>>()
    };
    let lines = run("doc-enricher", r#"{"text": "One two three."}"#);
    let event = lines.iter().find(|l| l["target"] == "gatehouse::plugin").expect("the plugin's event");
    assert_eq!(event["fields"]["words"], "3", "{event}");
    assert_eq!(event["plugin"], "doc-enricher");
    assert_eq!(event["level"], "INFO");

    // Forged lines stay inside their JSON strings; every line parses.
    let lines = run("log", "forge");
    assert!(lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("forged by the guest"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_volume_is_bounded_per_plugin_over_time() {
    // Attack: many invocations, each within its own budget, 4 at a time
    // (3,000 calls once wrote 782 MB in 3.9 s). What one plugin writes is
    // bounded per second across its invocations, and what was dropped is
    // reported once the next second opens.
    use gatehouse::services::log::window::WINDOW;
    use gatehouse::services::log::{MAX_BYTES_PER_PLUGIN_SECOND, MAX_EVENTS_PER_PLUGIN_SECOND};
    let policies = Policies::new();
    policies.plugin("log", "hostile_log", "timeout = \"10s\"\nconcurrency = 4");
    let runtime = std::sync::Arc::new(runtime(&policies).await);
    let (logs, _guard) = capture_logs();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let runtime = runtime.clone();
                tokio::spawn(async move { runtime.invoke("log", doc("flood")).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }
    let flooded = started.elapsed();
    let during = logs.events().len();
    tokio::time::sleep(WINDOW).await;
    runtime.invoke("log", doc("forge")).await.unwrap();

    let events = logs.events();
    let flood = plugin_events(&events[..during]);
    // Windows the flood touched: each admits its budget once.
    let windows = flooded.as_secs() + 1 + u64::from(flooded.subsec_nanos() > 0);
    let bytes: usize =
        flood.iter().map(|e| e.fields["message"].len() + e.fields.get("fields").map_or(0, String::len)).sum();
    let offered = 40 * MAX_BYTES_PER_INVOCATION;
    assert!(
        flood.len() as u64 <= windows * (MAX_EVENTS_PER_PLUGIN_SECOND + 1),
        "{} events in {flooded:?}",
        flood.len()
    );
    assert!(
        bytes as u64 <= windows * (MAX_BYTES_PER_PLUGIN_SECOND + 4096),
        "{bytes} bytes in {flooded:?} (the invocations offered {offered})"
    );
    let report = plugin_events(&events)
        .into_iter()
        .find(|e| e.fields["message"] == "log budget of the plugin exceeded; events dropped")
        .expect("the dropped events are reported");
    let fields: serde_json::Value = serde_json::from_str(&report.fields["fields"]).unwrap();
    assert!(fields["dropped_events"].as_u64().unwrap() > 0, "{fields}");
}
