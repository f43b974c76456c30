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

    pub fn load(&self) -> PolicyLoad {
        policy::load_dir(self.dir.path(), &guest_dir()).expect("policy dir readable")
    }
}

/// Engine settings for tests: a small pool, and a code cache shared by all
/// tests so each guest is compiled once per engine configuration.
pub fn settings() -> RuntimeSettings {
    RuntimeSettings {
        max_instances: 64,
        max_memory: 512 << 20,
        cache_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-code-cache")),
        ..RuntimeSettings::default()
    }
}

/// A runtime with every policy of `policies` loaded; panics on any refusal.
pub async fn runtime(policies: &Policies) -> Runtime {
    let load = policies.load();
    assert!(load.errors.is_empty(), "policy errors: {:?}", load.errors);
    let mut runtime = Runtime::new(settings()).expect("engine");
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

/// Collects tracing events emitted on the current thread while the guard
/// returned by [`capture_logs`] lives.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<Event>>>);

impl Captured {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
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
        self.0.lock().unwrap().push(Event { target: meta.target().to_string(), level: *meta.level(), fields });
    }
}
