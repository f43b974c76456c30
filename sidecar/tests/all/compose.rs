//! The compose setup, checked without a Docker engine: `compose.yaml`, the
//! `Dockerfile` and the settings they mount must agree (paths, ports,
//! environment, build stages, copied files), the policies baked into the
//! image must load, and the sidecar must run with exactly those settings
//! (their container paths mapped onto the repository) against a
//! PostgreSQL started here with the role, password and database that
//! compose.yaml gives its `postgres` service, keeping its key-value store
//! there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse::config::Config;
use gatehouse::databases::{DatabaseTarget, UrlSource};
use gatehouse::secrets::SecretSource;
use yaml_rust2::{Yaml, YamlLoader};

use crate::common::guest_dir;
use crate::postgres::TestPostgres;
use crate::sidecar::{Sidecar, request};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("compose/compose.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// An environment value of a compose service as compose would pass it
/// with nothing set in the shell: `${VAR:-default}` becomes `default`.
fn env_value(service: &Yaml, variable: &str) -> String {
    let raw = service["environment"][variable].as_str().unwrap_or_else(|| panic!("{variable} is not set"));
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("closing brace");
        let (_, default) = rest[start + 2..end].split_once(":-").expect("a ${VAR:-default}");
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out + rest
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("compose/Dockerfile")).unwrap();
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `(source, destination)` of every `COPY` without `--from`, and of every
/// `COPY --from=<stage>` as `(stage:source, destination)`.
fn copies(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words[0].strip_prefix("--from=") {
                Some(stage) => (format!("{stage}:{}", words[1]), words[2].to_string()),
                None => (words[0].to_string(), words[1].to_string()),
            }
        })
        .collect()
}

#[test]
fn compose_dockerfile_and_settings_agree() {
    let compose = compose();
    let sidecar = &compose["services"]["gatehouse"];
    let build = &sidecar["build"];
    assert_eq!(build["context"].as_str(), Some(".."));
    assert_eq!(build["dockerfile"].as_str(), Some("compose/Dockerfile"));
    let lines = dockerfile();

    // Every stage a COPY --from names exists; every local COPY source does.
    let stages: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .map(String::from)
        .collect();
    assert_eq!(stages, BTreeSet::from(["guests".to_string(), "sidecar".to_string()]));
    let copies = copies(&lines);
    for (source, _) in &copies {
        match source.split_once(':') {
            Some((stage, _)) => assert!(stages.contains(stage), "COPY --from={stage}"),
            None => assert!(repo().join(source).exists(), "COPY {source}: not in the repository"),
        }
    }

    // The mounted settings file exists, loads, and names what the image has.
    let mount = sidecar["volumes"].as_vec().unwrap().iter().find_map(|v| {
        let v = v.as_str()?;
        v.contains("/etc/gatehouse/gatehouse.toml").then(|| v.split(':').next().unwrap().to_string())
    });
    let settings = repo().join("compose").join(mount.expect("the settings file is mounted"));
    let config = Config::load(&settings).unwrap();
    let destinations: BTreeSet<&str> = copies.iter().map(|(_, d)| d.trim_end_matches('/')).collect();
    assert!(destinations.contains(config.policy_dir.to_str().unwrap()), "{:?}", config.policy_dir);
    assert!(destinations.contains(config.plugin_dir.to_str().unwrap()), "{:?}", config.plugin_dir);
    assert!(destinations.contains("/etc/gatehouse/gatehouse.toml"));
    assert!(lines.iter().any(|l| l.contains("--config") && l.contains("/etc/gatehouse/gatehouse.toml")));
    // The data directory belongs to the user the image runs as.
    assert!(lines.iter().any(|l| l == "USER gatehouse"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--home-dir /var/lib/gatehouse") && l.contains("chmod 0700 /var/lib/gatehouse"))
    );
    assert_eq!(config.data_dir, Path::new("/var/lib/gatehouse"));

    // Published ports are the ports the settings listen on.
    let published: BTreeSet<u16> = sidecar["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let listening = BTreeSet::from([config.server.listen.port(), config.server.admin_listen.unwrap().port()]);
    assert_eq!(published, listening);
    let exposed: BTreeSet<u16> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    assert_eq!(exposed, listening);

    // The admin token's variable is set by compose.
    let Some(SecretSource::Env(variable)) = &config.server.admin_token else { panic!("admin token from env") };
    assert!(sidecar["environment"][variable.as_str()].as_str().is_some(), "{variable} is not set in compose.yaml");

    // Each database URL comes from a variable compose sets, and names the
    // postgres service as the role, password and database it creates; the
    // sidecar starts once that service is healthy.
    let postgres = &compose["services"]["postgres"];
    assert!(config.databases.contains_key("shared"));
    for (alias, settings) in &config.databases {
        let DatabaseTarget::Postgres(UrlSource::Secret(SecretSource::Env(variable))) = &settings.target else {
            panic!("[databases.{alias}] url from env")
        };
        let url = url::Url::parse(&env_value(sidecar, variable)).unwrap();
        assert_eq!((url.host_str(), url.port()), (Some("postgres"), Some(5432)), "{alias}");
        assert_eq!(url.username(), env_value(postgres, "POSTGRES_USER"));
        assert_eq!(url.password(), Some(env_value(postgres, "POSTGRES_PASSWORD").as_str()));
        assert_eq!(url.path(), format!("/{}", env_value(postgres, "POSTGRES_DB")));
    }
    assert_eq!(sidecar["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    // The key-value store is the shared database, not a file in the image.
    assert_eq!(config.kv.database.as_deref(), Some("shared"));

    // Services the demos name exist.
    for service in ["postgres", "upstream"] {
        assert!(!compose["services"][service].is_badvalue(), "{service}");
    }
}

/// The image's policy directory: the repository's policies plus the
/// compose ones, as the Dockerfile copies them.
/// The data directory the settings file in `settings`'s directory names.
fn sidecar_state(settings: &Path) -> PathBuf {
    settings.parent().unwrap().join("state")
}

fn image_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for source in [repo().join("policies"), repo().join("compose/policies")] {
        for entry in std::fs::read_dir(source).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    dir
}

/// What is tried: the compose settings, with their container paths mapped
/// onto this machine (the image's policies, the guests built here, a
/// private data directory, kernel-chosen ports) and the `postgres` host
/// pointed at a local server; `policy check` passes; the sidecar is ready
/// only while the database answers, keeps serving plugins while it does
/// not, and is ready again once it is back. `kv-counter` keeps its count
/// in that database (the row is read back with psql, and no redb file is
/// made): `unavailable` (503) while it is down, counting on from where it
/// was once it is back.
#[test]
fn the_compose_settings_run_against_a_local_postgresql() {
    let compose = compose();
    let service = &compose["services"]["postgres"];
    let postgres = TestPostgres::start(
        &env_value(service, "POSTGRES_USER"),
        &env_value(service, "POSTGRES_PASSWORD"),
        &env_value(service, "POSTGRES_DB"),
    );
    let url = env_value(&compose["services"]["gatehouse"], "GATEHOUSE_DATABASE_URL")
        .replace("@postgres:5432/", &format!("@127.0.0.1:{}/", postgres.port));

    let policies = image_policies();
    let data = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("compose/gatehouse.toml")).unwrap();
    let text = text
        .replace("/opt/gatehouse/policies", policies.path().to_str().unwrap())
        .replace("/opt/gatehouse/plugins", guest_dir().to_str().unwrap())
        .replace("/var/lib/gatehouse", data.path().join("state").to_str().unwrap())
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:8081", "127.0.0.1:0");
    let settings = data.path().join("gatehouse.toml");
    std::fs::write(&settings, text).unwrap();

    let check = crate::common::gatehouse_command()
        .args(["--config", settings.to_str().unwrap(), "policy", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(stdout.contains("ok    upstream-fetcher") && stdout.contains("ok    hello-proxy"), "{stdout}");
    assert!(stdout.contains("ok    kv-counter"), "{stdout}");

    let token = "compose-test";
    let env = [("GATEHOUSE_ADMIN_TOKEN", token), ("GATEHOUSE_DATABASE_URL", url.as_str())];
    let sidecar = Sidecar::spawn(&settings, &env, data);
    sidecar.wait_ready();
    let up = |sidecar: &Sidecar| {
        let metrics = String::from_utf8(sidecar.get(&sidecar.invoke, "/metrics").2).unwrap();
        metrics.lines().find_map(|l| l.strip_prefix("gatehouse_database_up{database=\"shared\"} ")).map(String::from)
    };
    assert_eq!(up(&sidecar).as_deref(), Some("1"));
    let hello = |sidecar: &Sidecar| request(&sidecar.invoke, "GET", "/p/hello-proxy/", &[], b"").0;
    assert_eq!(hello(&sidecar), 200);
    let visit = |sidecar: &Sidecar| {
        let (status, _, body) = request(&sidecar.invoke, "POST", "/v1/plugins/kv-counter/invoke", &[], b"visit");
        (status, crate::sidecar::json(&body))
    };
    let stored = || {
        postgres.psql_in(
            "gatehouse",
            "SELECT convert_from(value, 'UTF8') FROM gatehouse_kv_data WHERE plugin = 'kv-counter' AND key = 'visits'",
        )
    };
    for expected in [1, 2] {
        let (status, answer) = visit(&sidecar);
        assert_eq!((status, &answer["visits"]), (200, &serde_json::json!(expected)), "{answer}");
    }
    assert_eq!(stored().trim(), "2");
    assert!(!sidecar_state(&settings).join("kv").exists(), "a redb store was made beside PostgreSQL");

    // The database goes away: not ready, naming the alias; the reason is
    // on the admin API; plugins keep serving.
    postgres.pause();
    let started = Instant::now();
    let body = loop {
        let (status, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
        if status == 503 {
            break String::from_utf8(body).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still ready with the database stopped");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body, "database `shared` unreachable\n");
    assert_eq!(up(&sidecar).as_deref(), Some("0"));
    let bearer = format!("Bearer {token}");
    let (status, _, body) = request(&sidecar.admin, "GET", "/admin/databases", &[("authorization", &bearer)], b"");
    assert_eq!(status, 200);
    let databases = crate::sidecar::json(&body);
    let shared = &databases["databases"][0];
    assert_eq!((shared["alias"].as_str(), shared["up"].as_bool()), (Some("shared"), Some(false)), "{databases}");
    assert_eq!(shared["target"], format!("gatehouse@127.0.0.1:{}/gatehouse", postgres.port));
    assert!(shared["problem"].as_str().is_some_and(|p| !p.is_empty()), "{databases}");
    assert_eq!(hello(&sidecar), 200);
    let (status, answer) = visit(&sidecar);
    assert_eq!((status, answer["kind"].as_str()), (503, Some("unavailable")), "{answer}");

    // Back: ready again, without a restart, and the count goes on.
    postgres.resume();
    sidecar.wait_ready();
    assert_eq!(up(&sidecar).as_deref(), Some("1"));
    let (status, answer) = visit(&sidecar);
    assert_eq!((status, &answer["visits"]), (200, &serde_json::json!(3)), "{answer}");
    assert_eq!(stored().trim(), "3");
    assert!(sidecar.stderr().contains("database reachable"), "{}", sidecar.stderr());
}
