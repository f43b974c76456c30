//! A running `gatehouse run` (the real binary) and a raw HTTP/1.1 client
//! for it, shared by the server, compose and database tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Policies;

/// A running `gatehouse run` with its two addresses.
pub struct Sidecar {
    pub child: Child,
    pub invoke: String,
    pub admin: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread copying stderr; joined by [`Sidecar::wait_exit`] so that
    /// the last lines are in `stderr` once the process has gone.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the binary on `policies` with `server` settings appended to
    /// `[server]`, and waits until it is ready.
    pub fn start(policies: &Policies, server: &str, env: &[(&str, &str)]) -> Sidecar {
        let sidecar = Sidecar::start_unready(policies, server, env);
        sidecar.wait_ready();
        sidecar
    }

    /// [`Sidecar::start`], waiting only until the plugins are loaded (an
    /// invocation no longer answers 503), not for `/readyz`.
    pub fn start_unready(policies: &Policies, server: &str, env: &[(&str, &str)]) -> Sidecar {
        let sidecar = Sidecar::launch(policies, server, env);
        sidecar.wait_loaded();
        sidecar
    }

    /// Writes the settings and starts the binary, without waiting for the
    /// plugins to load.
    pub fn launch(policies: &Policies, server: &str, env: &[(&str, &str)]) -> Sidecar {
        let (data, config) = policies.settings(&format!(
            "[engine]\nmax_instances = 256\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}"
        ));
        Sidecar::spawn(&config, env, data)
    }

    /// Runs `gatehouse --config <config> run` and returns once it has
    /// printed both addresses (the admin listener must be on). `data` is
    /// kept until the sidecar is dropped.
    pub fn spawn(config: &Path, env: &[(&str, &str)], data: tempfile::TempDir) -> Sidecar {
        let mut child = crate::common::gatehouse_command()
            .args(["--config", config.to_str().unwrap(), "run"])
            .envs(env.iter().copied())
            .env("GATEHOUSE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr_reader = {
            let mut pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = |prefix: &str| {
            let line = lines.next().expect("gatehouse printed its addresses").unwrap();
            let at = line.find(prefix).unwrap_or_else(|| panic!("{prefix} in {line}")) + prefix.len();
            line[at..].split_whitespace().next().unwrap().to_string()
        };
        let invoke = address("invoke API on http://");
        let admin = address("admin API on http://");
        // Keep reading: a closed pipe would fail the sidecar's next print.
        std::thread::spawn(move || lines.for_each(drop));
        Sidecar { child, invoke, admin, stderr, stderr_reader: Some(stderr_reader), _data: data }
    }

    /// Waits (up to 30 s) until the first load is done: an invocation no
    /// longer answers 503.
    pub fn wait_loaded(&self) {
        let started = Instant::now();
        while self.invoke("no-such-plugin", "").0 == 503 {
            assert!(started.elapsed() < Duration::from_secs(30), "not loaded: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 30 s) until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let started = Instant::now();
        while self.get(&self.invoke, "/readyz").0 != 200 {
            assert!(started.elapsed() < Duration::from_secs(30), "not ready: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the process to exit, then for its last
    /// stderr lines: `stderr()` after an exit seen by `try_wait` alone may
    /// still miss them.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(started.elapsed() < limit, "still running after {limit:?}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().unwrap();
        }
        exit
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn get(&self, addr: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        request(addr, "GET", path, &[], b"")
    }

    /// `gatehouse_plugin_in_flight` of `plugin`, from `/metrics`.
    pub fn in_flight(&self, plugin: &str) -> u32 {
        let metrics = String::from_utf8(self.get(&self.invoke, "/metrics").2).unwrap();
        let prefix = format!("gatehouse_plugin_in_flight{{plugin=\"{plugin}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}"));
        line[prefix.len()..].parse().unwrap()
    }

    /// Waits up to 10 s for `plugin` to have `count` calls in flight.
    pub fn wait_in_flight(&self, plugin: &str, count: u32, what: &str) {
        let started = Instant::now();
        while self.in_flight(plugin) != count {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn invoke(&self, plugin: &str, body: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        request(
            &self.invoke,
            "POST",
            &format!("/v1/plugins/{plugin}/invoke"),
            &[("content-type", "text/plain")],
            body.as_bytes(),
        )
    }

    pub fn signal(&self, name: &str) {
        assert!(Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap().success());
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection: status, headers, body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading it all.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    (status, headers, body)
}

/// Decodes a `chunked` body (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}
