//! Compiling in a child process with a memory limit.
//!
//! Cranelift's memory use grows faster than the component: an outside
//! review made a 400 KB component take 3.2 GB to compile. A time budget
//! cannot stop that (the sidecar would be killed by the kernel first), so
//! when a worker binary is configured the compilation runs in a child
//! process (`gatehouse __compile`) whose data segment is capped with
//! `RLIMIT_DATA`; past the cap its allocation fails, the child dies, and
//! only that plugin is refused.
//!
//! The child builds the same engine from the same settings, so the artifact
//! it returns carries the parent's compatibility hash; the parent checks
//! that when it loads it, as for any cached artifact.
//!
//! A child never outlives its use: it is killed at the compile budget's
//! deadline, and it dies with the sidecar (`PR_SET_PDEATHSIG`), so a
//! hostile component cannot leave compilers running after its refusal or
//! after SIGTERM.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::RuntimeSettings;

/// The arguments that give the child the parent's engine settings.
pub(super) fn settings_args(settings: &RuntimeSettings) -> Vec<String> {
    vec![
        settings.max_memory.to_string(),
        settings.max_instances.to_string(),
        settings.keep_resident.to_string(),
        u8::from(settings.pooling).to_string(),
        settings.compile_memory.to_string(),
    ]
}

/// How often a compile worker is checked for having finished.
const POLL: Duration = Duration::from_millis(10);

/// Compiles `bytes` in a child process running `worker`, killed at
/// `deadline` if it has not finished by then.
pub(super) fn compile(
    worker: &Path,
    settings: &RuntimeSettings,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<Vec<u8>, String> {
    let mut command = Command::new(worker);
    command
        .arg("__compile")
        .args(settings_args(settings))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Nothing of the sidecar's environment, which would change the child
    // under its memory cap: `RUST_MIN_STACK` (16 MiB thread stacks: the
    // compiler's threads could not start within 32 MiB) or
    // `RUST_BACKTRACE=1` (a panic's backtrace is symbolized, which
    // allocates, fails inside the panic's own lock, and the child hung
    // until the budget instead of failing at once).
    command.env_clear().env("RUST_BACKTRACE", "0");
    die_with_parent(&mut command);
    let mut child =
        command.spawn().map_err(|e| format!("cannot start the compiler process {}: {e}", worker.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    // Written and read from threads: the child may fail before reading it
    // all, and a full pipe would stall it.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        match child.try_wait().map_err(|e| format!("the compiler process failed: {e}"))? {
            Some(status) => break status,
            None if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = (writer.join(), stdout.join(), stderr.join());
                return Err("the compiler process was stopped at the compile budget ([engine] compile_timeout)".into());
            }
            None => std::thread::sleep(POLL),
        }
    };
    let _ = writer.join();
    let output = std::process::Output {
        status,
        stdout: stdout.join().map_err(|_| "reading the compiler's output failed")?,
        stderr: stderr.join().map_err(|_| "reading the compiler's output failed")?,
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = crate::guest_text::escape(said.trim(), crate::guest_text::LINE);
    if said.contains("memory allocation") || said.contains("out of memory") || said.is_empty() {
        return Err(format!(
            "compiling it needed more than the compile memory budget of {} MiB ([engine] compile_memory)",
            settings.compile_memory >> 20
        ));
    }
    Err(format!("compilation failed: {said}"))
}

/// Makes the child receive SIGKILL when the thread that started it ends
/// (with the sidecar, whatever way it ends); a child whose parent is
/// already gone by then exits at once.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs between fork and exec and only makes two
    // system calls, which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::ErrorKind::NotConnected.into());
            }
            Ok(())
        });
    }
}

/// The child's side: caps its data segment, reads a component on stdin,
/// writes the compiled artifact on stdout.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let (Some(max_memory), Some(max_instances), Some(keep_resident), Some(pooling), Some(limit)) =
        (number(0), number(1), number(2), number(3), number(4))
    else {
        eprintln!("usage: gatehouse __compile MAX_MEMORY MAX_INSTANCES KEEP_RESIDENT POOLING COMPILE_MEMORY");
        return std::process::ExitCode::from(2);
    };
    let settings = RuntimeSettings {
        max_memory,
        max_instances: u32::try_from(max_instances).unwrap_or(u32::MAX),
        keep_resident,
        pooling: pooling != 0,
        ..RuntimeSettings::default()
    };
    let engine = match super::engine::new_engine(&settings) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("{e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the component: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // The engine and the input are in place: from here on, only the
    // compiler allocates, within `limit` more bytes of data.
    let cap = data_in_use().saturating_add(limit);
    let rlimit = rustix::process::Rlimit { current: Some(cap), maximum: Some(cap) };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Data, rlimit) {
        eprintln!("cannot limit the compiler's memory: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match engine.precompile_component(&bytes) {
        Ok(artifact) => match std::io::stdout().write_all(&artifact) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("writing the artifact: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The process's data segment now (`VmData`), in bytes.
fn data_in_use() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmData:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
