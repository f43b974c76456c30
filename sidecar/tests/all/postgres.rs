//! A throwaway PostgreSQL server from the system's binaries: `initdb` in a
//! temporary directory, a free loopback port, password (SCRAM) logins over
//! TCP like a real deployment. PostgreSQL refuses to run as root, so as
//! root its commands run as the `postgres` user, in a directory it owns.
//! `./dev test` installs the server when it is missing. (The key-value
//! benchmark includes this file too, for a durable cluster.)

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster; stopped and deleted on drop.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The loopback TCP port it listens on.
    pub port: u16,
    /// The login role and database the test asked for.
    pub user: String,
    pub password: String,
    pub database: String,
    /// Whether commits are flushed (`fsync`, `synchronous_commit`): off
    /// for tests, on for benchmarks that measure durable writes.
    durable: bool,
    /// See [`TestPostgres::stop_when_this_process_dies`]; killed on drop.
    watcher: Option<std::process::Child>,
}

impl TestPostgres {
    /// A cluster with one login role `user` (password `password`) that
    /// owns the database `database`.
    pub fn start(user: &str, password: &str, database: &str) -> TestPostgres {
        Self::start_with(user, password, database, false)
    }

    /// The same, with the server's default durability: every commit is
    /// flushed to disk before it is answered.
    #[allow(dead_code, reason = "used by the key-value benchmark, which includes this file")]
    pub fn start_durable(user: &str, password: &str, database: &str) -> TestPostgres {
        Self::start_with(user, password, database, true)
    }

    fn start_with(user: &str, password: &str, database: &str, durable: bool) -> TestPostgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("gatehouse-pg-").tempdir().unwrap();
        if as_root() {
            run("chown", &["-R", "postgres:postgres", dir.path().to_str().unwrap()]);
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut postgres = TestPostgres {
            bin,
            port,
            user: user.into(),
            password: password.into(),
            database: database.into(),
            dir,
            durable,
            watcher: None,
        };
        let data = postgres.data();
        let auth = ["--auth-local=trust", "--auth-host=scram-sha-256"];
        postgres.pg(
            "initdb",
            &[&["-D", &data, "-U", "postgres", "--no-sync", "-E", "UTF8", "--no-locale"][..], &auth].concat(),
        );
        postgres.resume();
        postgres.watcher = Some(postgres.stop_when_this_process_dies());
        let quoted = password.replace('\'', "''");
        postgres.psql(&format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{quoted}'"));
        postgres.psql(&format!("CREATE DATABASE \"{database}\" OWNER \"{user}\""));
        postgres
    }

    /// `postgres://user:password@127.0.0.1:port/database`.
    pub fn url(&self) -> String {
        format!("postgres://{}:{}@127.0.0.1:{}/{}", self.user, self.password, self.port, self.database)
    }

    /// Stops the server (fast shutdown: open connections are closed).
    pub fn pause(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the server, on the same port, and waits until it accepts.
    pub fn resume(&self) {
        let flush = if self.durable { "" } else { " -c fsync=off -c synchronous_commit=off" };
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1{flush}", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log");
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "-t", "30", "start"],
        );
    }

    /// Serves TLS with a certificate for `localhost` that `ca` signs (see
    /// [`test_ca`]), and accepts TCP logins over TLS only (`hostssl`), so
    /// a login that succeeds was encrypted.
    pub fn require_tls(&self, ca: &TestCa) {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, ca).unwrap();
        let (cert_pem, key_pem) = (leaf.pem() + &ca.pem(), key.serialize_pem());
        let data = Path::new(&self.data()).to_path_buf();
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if as_root() {
            for file in ["server.crt", "server.key", "pg_hba.conf"] {
                run("chown", &["postgres:postgres", data.join(file).to_str().unwrap()]);
            }
        }
        self.psql("ALTER SYSTEM SET ssl = on");
        self.psql("SELECT pg_reload_conf()");
    }

    /// Runs one statement as the superuser over the Unix socket.
    pub fn psql(&self, statement: &str) -> String {
        self.psql_in("postgres", statement)
    }

    /// Runs one statement as the superuser in `database`.
    pub fn psql_in(&self, database: &str, statement: &str) -> String {
        let out = self.pg(
            "psql",
            &[
                "-h",
                self.dir.path().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                statement,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A test killed at its timeout never drops its cluster, and the
    /// server (which `pg_ctl` starts in a session of its own) would run on.
    /// A shell in its own process group, out of reach of the signal that
    /// kills the test, waits for this process to go, then stops the
    /// server and removes its directory. A drop does both itself and kills
    /// the shell.
    fn stop_when_this_process_dies(&self) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let pg_ctl = self.bin.join("pg_ctl");
        let as_postgres = if as_root() { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {as_postgres}'{pg_ctl}' -D '{data}' -m immediate stop; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data(),
            dir = self.dir.path().display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_string()
    }

    /// Runs one of the server's programs (as `postgres` when we are root)
    /// and fails the test, with its output, when it fails.
    fn pg(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let program = program.to_str().unwrap();
        if as_root() {
            run("runuser", &[&["-u", "postgres", "--", program], args].concat())
        } else {
            run(program, args)
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = if as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--", self.bin.join("pg_ctl").to_str().unwrap()])
                .args(["-D", &self.data(), "-m", "immediate", "stop"])
                .output()
        } else {
            Command::new(self.bin.join("pg_ctl")).args(["-D", &self.data(), "-m", "immediate", "stop"]).output()
        };
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
    }
}

fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).current_dir("/").output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether server binaries are there (benchmarks skip without them).
#[allow(dead_code, reason = "used by the key-value benchmark, which includes this file")]
pub fn available() -> bool {
    find_bin_dir().is_some()
}

/// `GATEHOUSE_PG_BIN`, or the newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    find_bin_dir().expect(
        "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (./dev test installs them; \
         or set GATEHOUSE_PG_BIN)",
    )
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GATEHOUSE_PG_BIN") {
        return Some(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin).join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A certificate authority of a TLS test.
pub type TestCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

/// A self-signed certificate authority named `name`.
pub fn test_ca(name: &str) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}
