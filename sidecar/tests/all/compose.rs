//! The compose setup, checked without a Docker engine: `compose.yaml`, the
//! `Dockerfile` and the settings they mount must agree (paths, ports,
//! environment, build stages, copied files), the policies baked into the
//! image must load, and the sidecar must run with exactly those settings
//! (their container paths mapped onto the repository).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gatehouse::config::Config;
use gatehouse::secrets::SecretSource;
use yaml_rust2::{Yaml, YamlLoader};

use crate::common::guest_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("compose/compose.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
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

    // Services the demos name exist.
    for service in ["postgres", "upstream"] {
        assert!(!compose["services"][service].is_badvalue(), "{service}");
    }
}

/// The image's policy directory: the repository's policies plus the
/// compose ones, as the Dockerfile copies them.
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

#[test]
fn the_sidecar_runs_with_the_compose_settings() {
    // The compose settings, with their container paths mapped onto this
    // machine: the image's policies, the guests built here, a private data
    // directory, and ports chosen by the kernel.
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

    let check = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["--config", settings.to_str().unwrap(), "policy", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(stdout.contains("ok    upstream-fetcher") && stdout.contains("ok    hello-proxy"), "{stdout}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["--config", settings.to_str().unwrap(), "run"])
        .env("GATEHOUSE_ADMIN_TOKEN", "compose-test")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let addr = first.rsplit("http://").next().unwrap().to_string();
    let ready = (0..500).any(|_| {
        let ok = std::net::TcpStream::connect(&addr).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.starts_with("HTTP/1.1 200")
        });
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        ok
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the sidecar never became ready on {addr}");
}
