//! Shared fixtures: guest paths, policy directories, runtimes, log capture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gatehouse::policy::{self, PolicyLoad};
use gatehouse::{Runtime, RuntimeSettings};
use tempfile::TempDir;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Where `./dev guests` puts the guest components.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"))
}

/// The real `gatehouse` binary, started in a scratch directory under
/// `target/` (not the source tree), so whatever it writes relative to its
/// working directory (`.gatehouse/` without a settings file) lands there.
pub fn gatehouse_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command.current_dir(scratch_dir());
    command
}

/// A directory under `target/` for files the binary writes relative to
/// where it runs; one per test process.
pub fn scratch_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")).path()
}

/// The repository root (for its example policies and files).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Path of one guest component; fails the test with a hint if it is missing.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_dir().join(format!("{name}.wasm"));
    assert!(path.is_file(), "guest component {} is missing: run `./dev guests` first", path.display());
    path
}

/// A temporary policy directory whose components resolve to the guests.
pub struct Policies {
    pub dir: TempDir,
}

impl Policies {
    pub fn new() -> Self {
        Policies { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// Writes `policies/<file>` and returns its path.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("writing policy");
        path
    }

    /// A `gatehouse.toml` for these policies, in a fresh directory that
    /// also holds the data directory (`data`): the policy directory, the
    /// guests as the plugin directory, then `extra` (more keys or tables).
    /// Returns the directory (keep it alive) and the file.
    pub fn settings(&self, extra: &str) -> (TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let file = root.path().join("gatehouse.toml");
        let text = format!(
            "policy_dir = {:?}\nplugin_dir = {:?}\ndata_dir = \"data\"\n{extra}\n",
            self.dir.path().display().to_string(),
            guest_dir().display().to_string()
        );
        std::fs::write(&file, text).expect("writing settings");
        (root, file)
    }

    /// Writes a policy for `name` running guest `guest` with `limits`
    /// (the body of a `[limits]` table).
    pub fn plugin(&self, name: &str, guest_name: &str, limits: &str) -> PathBuf {
        let component = guest(guest_name);
        self.write(
            &format!("{name}.toml"),
            &format!(
                "[plugin]\nname = \"{name}\"\ncomponent = {:?}\n\n[limits]\n{limits}\n",
                component.display().to_string()
            ),
        )
    }

    /// Writes a policy for `name` running the `hello-proxy` wasi:http
    /// component with `limits` (the body of a `[limits]` table) and an
    /// `[http]` grant of a port nothing listens on.
    pub fn proxy(&self, name: &str, limits: &str) -> PathBuf {
        let component = guest("hello_proxy");
        self.write(
            &format!("{name}.toml"),
            &format!(
                "[plugin]\nname = \"{name}\"\ncomponent = {:?}\n[limits]\n{limits}\n[http]\nallow = [\"http://localhost:9\"]\n",
                component.display().to_string()
            ),
        )
    }

    pub fn load(&self) -> PolicyLoad {
        policy::load_dir(self.dir.path(), &guest_dir()).expect("policy dir readable")
    }
}

/// Engine settings for tests: a small pool, and a code cache for this run
/// of the suite (`./dev test` makes a fresh one in `GATEHOUSE_TEST_CACHE`,
/// so each guest is compiled once per run and no artifact of an earlier
/// build is trusted); without it, a cache for this test process only.
pub fn settings() -> RuntimeSettings {
    static PROCESS_CACHE: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    let cache = match std::env::var_os("GATEHOUSE_TEST_CACHE") {
        Some(dir) => PathBuf::from(dir),
        // A directory inside a private one: the sidecar refuses a cache
        // whose parent (here /tmp) others may write.
        None => PROCESS_CACHE.get_or_init(|| tempfile::tempdir().expect("temp dir")).path().join("cache"),
    };
    RuntimeSettings { max_instances: 64, max_memory: 512 << 20, cache_dir: Some(cache), ..RuntimeSettings::default() }
}

/// The services with the system resolver, for runtimes that make no
/// outbound request to a test name.
pub fn services() -> Arc<gatehouse::services::Services> {
    Arc::new(
        gatehouse::services::Services::with_dns(Arc::new(gatehouse::services::http::resolve::SystemLookup)).unwrap(),
    )
}

/// A hand-written hostile component: `guests/hostile-shapes/plugin.wat`
/// with `guests/hostile-shapes/<shape>.wat` spliced in, assembled into
/// `dir/<shape>.wasm`.
pub fn shape(dir: &Path, shape: &str) -> PathBuf {
    let shapes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/hostile-shapes");
    let plugin = std::fs::read_to_string(shapes.join("plugin.wat")).expect("plugin.wat");
    let part = std::fs::read_to_string(shapes.join(format!("{shape}.wat"))).expect("shape file");
    let text = plugin.replace(";; HOSTILE SHAPE", &part);
    let bytes = wat::parse_str(&text).unwrap_or_else(|e| panic!("{shape}.wat: {e}"));
    let path = dir.join(format!("{shape}.wasm"));
    std::fs::write(&path, bytes).expect("writing component");
    path
}

/// A runtime with every policy of `policies` loaded; panics on any refusal.
pub async fn runtime(policies: &Policies) -> Runtime {
    let load = policies.load();
    assert!(load.errors.is_empty(), "policy errors: {:?}", load.errors);
    let runtime = Runtime::new(settings(), crate::common::services()).expect("engine");
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "refused: {:?}", report.refused);
    runtime
}

/// One captured tracing event.
#[derive(Debug, Clone)]
pub struct Event {
    pub target: String,
    pub level: tracing::Level,
    pub fields: BTreeMap<String, String>,
}

/// Collects tracing events emitted on any thread of the process while the
/// guard returned by [`capture_logs`] lives (nextest runs each test in a
/// process of its own, so these are the test's events).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<Event>>>);

impl Captured {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// Stops a capture when dropped.
pub struct CaptureGuard(Captured);

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        ACTIVE.lock().unwrap().retain(|c| !Arc::ptr_eq(&c.0, &(self.0).0));
    }
}

static ACTIVE: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

/// Starts capturing every event, from every thread (a global subscriber is
/// installed on first use, so multi-thread runtimes are captured too).
pub fn capture_logs() -> (Captured, CaptureGuard) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Dispatch);
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
    let captured = Captured::default();
    ACTIVE.lock().unwrap().push(captured.clone());
    (captured.clone(), CaptureGuard(captured))
}

/// The global layer: hands each event to every active capture.
struct Dispatch;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Dispatch {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let active = ACTIVE.lock().unwrap().clone();
        if active.is_empty() {
            return;
        }
        struct Fields<'a>(&'a mut BTreeMap<String, String>);
        impl Visit for Fields<'_> {
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0.insert(field.name().to_string(), value.to_string());
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_string(), format!("{value:?}"));
            }
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let meta = event.metadata();
        let event = Event { target: meta.target().to_string(), level: *meta.level(), fields };
        for capture in active {
            capture.0.lock().unwrap().push(event.clone());
        }
    }
}
