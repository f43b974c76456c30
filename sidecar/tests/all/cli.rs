//! The `gatehouse` binary, run as a user would.

use std::process::Output;

use crate::common::{Policies, guest_dir};

fn gatehouse(args: &[&str]) -> Output {
    crate::common::gatehouse_command().args(args).env("GATEHOUSE_LOG", "warn").output().expect("running gatehouse")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn policy_check_accepts_the_example_policies() {
    let guests = guest_dir();
    let examples = crate::common::repo_root().join("policies");
    let out = gatehouse(&["--plugins", guests.to_str().unwrap(), "policy", "check", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok    doc-enricher") && stdout.contains("0 problem(s)"), "{stdout}");
}

#[test]
fn policy_check_fails_naming_file_line_and_problem() {
    let policies = Policies::new();
    policies.write("typo.toml", "[plugin]\nname = \"typo\"\ncomponent = \"x.wasm\"\ncomponnet = \"y\"\n");
    let out = gatehouse(&["policy", "check", policies.dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let expected = format!("{}:4: unknown field `componnet`", policies.dir.path().join("typo.toml").display());
    assert!(stdout.contains(&expected), "expected `{expected}` in:\n{stdout}");
}

/// What is tried: a policy file whose name, and another whose TOML key,
/// carry a line break, a forged log line and an ANSI escape. Expected:
/// each problem stays one line of `policy check` output, no escape byte
/// reaches the terminal, and the name of a file that loads is escaped too.
#[test]
fn policy_check_output_cannot_be_forged_by_file_names_or_keys() {
    let policies = Policies::new();
    let forged = "2026-01-01T00:00:00Z ERROR gatehouse::admin: forged\u{1b}[31m";
    policies.write(&format!("a\n{forged}.toml"), "[plugin\n");
    policies.write("key.toml", &format!("[plugin]\n\"x\\n{}\" = 1\n", forged.replace('\u{1b}', "\\u001b")));
    let component = crate::common::guest("echo").display().to_string();
    policies.write(&format!("ok\n{forged}.toml"), &format!("[plugin]\nname = \"echo\"\ncomponent = {component:?}\n"));
    let out = gatehouse(&["policy", "check", policies.dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(!stdout.lines().any(|l| l.starts_with("2026-01-01")), "a forged line:\n{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains("forged")).count(), 3, "{stdout}");
}

#[test]
fn invoke_prints_the_output_document() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    let input = policies.dir.path().join("input.json");
    std::fs::write(&input, r#"{"text": "Alpha beta gamma."}"#).unwrap();
    let dir = policies.dir.path().to_str().unwrap();
    let out = gatehouse(&["--policies", dir, "invoke", "doc-enricher", "--input", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON document");
    assert_eq!(doc["enrichment"]["words"], 3);
}

#[test]
fn invoke_reports_a_typed_error_and_exits_non_zero() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    let input = policies.dir.path().join("input.json");
    std::fs::write(&input, "[1, 2]").unwrap();
    let dir = policies.dir.path().to_str().unwrap();
    let out = gatehouse(&["--policies", dir, "invoke", "doc-enricher", "--input", input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "error: invalid-input: plugin `doc-enricher` returned invalid-input: the JSON body must be an object"
        ),
        "{stderr}"
    );
}

#[test]
fn compile_fills_the_cache_and_a_second_run_hits_it() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let (data, config) = policies.settings("");
    let config = config.to_str().unwrap();
    let first = gatehouse(&["--config", config, "compile"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).starts_with("echo: Compiled -> "), "{}", text(&first.stdout));
    let cached: Vec<_> = std::fs::read_dir(data.path().join("data/cache")).unwrap().collect();
    assert_eq!(cached.len(), 1);
    let second = gatehouse(&["--config", config, "compile"]);
    assert!(text(&second.stdout).starts_with("echo: Hit -> "), "{}", text(&second.stdout));
}

#[test]
fn explain_url_says_allowed_or_denied_with_the_rule_and_the_addresses() {
    let policies = Policies::new();
    let component = crate::common::guest("fetcher").display().to_string();
    policies.write(
        "fetcher.toml",
        &format!(
            "[plugin]\nname = \"fetcher\"\ncomponent = {component:?}\n\n[http]\n\
             allow = [\"http://localhost:8080\", \"https://*.example.com\", \"http://0.0.0.0:8080\"]\n"
        ),
    );
    policies.plugin("echo", "echo", "");
    let dir = policies.dir.path().to_str().unwrap();
    let explain = |plugin: &str, url: &str| gatehouse(&["--policies", dir, "policy", "explain-url", plugin, url]);

    // An exact grant: resolved through the system resolver, loopback admitted.
    let out = explain("fetcher", "HTTP://LOCALHOST.:8080/status");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("url         http://localhost:8080/status"), "{stdout}");
    assert!(stdout.contains("rule        http://localhost:8080"), "{stdout}");
    assert!(stdout.contains("(exact grant)"), "{stdout}");
    assert!(stdout.contains("127.0.0.1 loopback (admitted)"), "{stdout}");
    assert!(stdout.contains("verdict     allowed"), "{stdout}");

    // Denied by the allowlist, naming the rule that nearly matched.
    let out = explain("fetcher", "http://localhost:9090/");
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("rule        (none matched)"), "{stdout}");
    assert!(
        stdout.contains(
            "denied: http://localhost:9090 is not allowed: the host is allowed only as http://localhost:8080"
        ),
        "{stdout}"
    );
    // The exact grant opens loopback only for the request it allows.
    assert!(stdout.contains("127.0.0.1 loopback (refused)"), "{stdout}");

    // Cloud metadata by IP literal: classified, and denied.
    let out = explain("fetcher", "http://169.254.169.254/latest/meta-data/");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("169.254.169.254 link-local (refused)"), "{}", text(&out.stdout));

    // Even an exact grant never opens the unspecified address.
    let out = explain("fetcher", "http://0.0.0.0:8080/");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains(
            "verdict     denied: 0.0.0.0 is refused by the SSRF guard: it resolves only to unspecified, \
             multicast or broadcast addresses, which are never allowed"
        ),
        "{}",
        text(&out.stdout)
    );

    // Credentials in the URL, a plugin without [http], an unknown plugin.
    let out = explain("fetcher", "https://user@api.example.com/");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("credentials"), "{}", text(&out.stdout));
    let out = explain("echo", "https://api.example.com/");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no [http] section"), "{}", text(&out.stdout));
    let out = explain("nobody", "https://api.example.com/");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no valid policy for plugin `nobody`"), "{}", text(&out.stderr));
}

#[test]
fn invoke_loads_only_the_plugin_it_runs() {
    // A sibling whose info() spins and a broken sibling file: neither is
    // loaded nor reported when another plugin is invoked.
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("slow", "hostile_slow_info", "timeout = \"10m\"");
    policies.write("typo.toml", "[plugin]\nname = \"typo\"\ncomponnet = \"x\"\n");
    let dir = policies.dir.path().to_str().unwrap();
    let out = crate::common::gatehouse_command()
        .args(["--policies", dir, "invoke", "echo"])
        .env("GATEHOUSE_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("slow") && !stderr.contains("typo"), "{stderr}");

    // Invoking a plugin whose policy is broken reports the problems.
    let out = gatehouse(&["--policies", dir, "invoke", "typo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("componnet"), "{}", text(&out.stderr));
}

#[test]
fn a_data_directory_others_may_write_is_refused_at_start() {
    // Attack: whoever can write the code cache can swap a pinned
    // component's compiled form for their own native code.
    use std::os::unix::fs::PermissionsExt;
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let (root, config) = policies.settings("");
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = || gatehouse(&["--config", config.to_str().unwrap(), "invoke", "echo"]);

    let out = run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("writable by its group or by others (mode 777)"), "{}", text(&out.stderr));

    // Fixed permissions: it starts, and the cache it creates is private.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cache = std::fs::metadata(data.join("cache")).unwrap().permissions().mode() & 0o777;
    assert_eq!(cache, 0o700);
}

#[test]
fn policy_check_is_the_load_without_serving() {
    // Each of these passes parsing but fails the load; check must say so,
    // one line each, resolving components the way `--policies DIR` does.
    let policies = Policies::new();
    let dir = policies.dir.path();
    std::fs::copy("/etc/passwd", dir.join("passwd.wasm")).unwrap();
    std::fs::write(dir.join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    std::fs::copy(crate::common::guest("hostile_socket"), dir.join("socket.wasm")).unwrap();
    std::fs::copy(crate::common::guest("echo"), dir.join("echo.wasm")).unwrap();
    let huge = dir.join("huge.wasm");
    std::fs::File::create(&huge).unwrap().set_len(200 << 20).unwrap();
    for (name, file) in [
        ("passwd", "passwd.wasm"),
        ("core", "core.wasm"),
        ("socket", "socket.wasm"),
        ("huge", "huge.wasm"),
        ("echo", "echo.wasm"),
    ] {
        policies.write(&format!("{name}.toml"), &format!("[plugin]\nname = \"{name}\"\ncomponent = \"{file}\"\n"));
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let out = crate::common::gatehouse_command()
        .args(["policy", "check", dir.to_str().unwrap()])
        .current_dir(elsewhere.path())
        .env_remove("GATEHOUSE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = |name: &str| {
        let lines: Vec<_> = stdout.lines().filter(|l| l.contains(&format!("{name}.toml"))).collect();
        assert_eq!(lines.len(), 1, "one line for {name}:\n{stdout}");
        lines[0].to_string()
    };
    assert!(line("passwd").contains("not WebAssembly"), "{stdout}");
    assert!(line("core").contains("core WebAssembly module") && line("core").contains("wasm32-wasip2"), "{stdout}");
    assert!(line("socket").contains("wasi:sockets"), "{stdout}");
    assert!(line("huge").contains("larger than the 128 MiB"), "{stdout}");
    assert!(line("echo").starts_with("ok"), "{stdout}");
    assert!(stdout.contains("1 plugin(s) valid, 4 problem(s)"), "{stdout}");
    assert!(text(&out.stderr).is_empty(), "nothing else is printed: {}", text(&out.stderr));
}

#[test]
fn compiling_happens_in_a_child_process_capped_at_compile_memory() {
    // Attack: a component that makes Cranelift allocate hundreds of MiB
    // (an outside review reached 3.2 GB with 400 KB). The compile memory
    // budget must stop it, refusing only that plugin.
    let policies = Policies::new();
    let dir = policies.dir.path();
    std::fs::write(dir.join("slow.wasm"), crate::sandbox::slow_to_compile()).unwrap();
    std::fs::copy(crate::common::guest("echo"), dir.join("echo.wasm")).unwrap();
    policies.write("slow.toml", "[plugin]\nname = \"slow\"\ncomponent = \"slow.wasm\"\n");
    policies.write("echo.toml", "[plugin]\nname = \"echo\"\ncomponent = \"echo.wasm\"\n");
    let settings = dir.join("gatehouse.toml");
    std::fs::write(
        &settings,
        "policy_dir = \".\"\ndata_dir = \"data\"\n[engine]\ncompile_memory = \"32 MiB\"\ncompile_timeout = \"60s\"\n",
    )
    .unwrap();
    // The sidecar's environment does not reach the capped child: with
    // these it could not start its threads (16 MiB stacks) or hung on a
    // panic's backtrace until the budget.
    let out = crate::common::gatehouse_command()
        .args(["--config", settings.to_str().unwrap(), "policy", "check"])
        .env("RUST_MIN_STACK", "16777216")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let slow = stdout.lines().find(|l| l.contains("slow.toml")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(slow.contains("compile memory budget of 32 MiB"), "{slow}");
    assert!(stdout.contains("ok    echo"), "{stdout}");

    // With room to compile, the same component loads: the refusal above
    // was the budget, not the component.
    std::fs::write(
        &settings,
        "policy_dir = \".\"\ndata_dir = \"data\"\n[engine]\ncompile_memory = \"3 GiB\"\ncompile_timeout = \"60s\"\n",
    )
    .unwrap();
    let out = crate::common::gatehouse_command()
        .args(["--config", settings.to_str().unwrap(), "policy", "check"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let slow = stdout.lines().find(|l| l.contains("slow")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(!slow.contains("compile memory budget"), "{slow}");
}

/// The README's "Writing a plugin" recipe, followed as an author outside
/// this repository would: its Cargo.toml, src/lib.rs and policy, taken
/// from the README itself (so the two cannot drift apart), in a directory
/// outside the workspace, with the WIT from `gatehouse wit`; then the
/// component is built for wasm32-wasip2, checked and invoked.
#[test]
fn an_out_of_tree_plugin_builds_from_the_readme_recipe() {
    let readme = std::fs::read_to_string(crate::common::repo_root().join("README.md")).unwrap();
    let project = tempfile::tempdir().unwrap();
    let mut files = 0;
    for part in readme.split("<!-- recipe: ").skip(1) {
        let (path, rest) = part.split_once(" -->").unwrap();
        let block = rest.split_once("```").unwrap().1;
        let body = block.split_once('\n').unwrap().1.split_once("```").unwrap().0;
        let target = project.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, body).unwrap();
        files += 1;
    }
    assert_eq!(files, 3, "the README recipe has Cargo.toml, src/lib.rs and a policy");
    // The recipe names the wit-bindgen version this repository's guests use.
    let guests = std::fs::read_to_string(crate::common::repo_root().join("guests/Cargo.toml")).unwrap();
    let pinned = guests.lines().find(|l| l.starts_with("wit-bindgen =")).unwrap();
    let recipe = std::fs::read_to_string(project.path().join("Cargo.toml")).unwrap();
    assert!(recipe.contains(pinned.split('#').next().unwrap().trim()), "{pinned} vs\n{recipe}");

    let wit = project.path().join("wit");
    let out = gatehouse(&["wit", wit.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wit.join("worlds.wit").is_file());

    // Built output goes to target/ of this repository (kept between runs),
    // reached through the project's own `target` link.
    let build_dir = crate::common::repo_root().join("target/out-of-tree-plugin");
    std::fs::create_dir_all(&build_dir).unwrap();
    std::os::unix::fs::symlink(&build_dir, project.path().join("target")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .current_dir(project.path())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build.stderr));

    let policies = project.path().join("policies");
    let check = gatehouse(&["--policies", policies.to_str().unwrap(), "policy", "check"]);
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
    let mut invoke = crate::common::gatehouse_command()
        .args(["--policies", policies.to_str().unwrap(), "invoke", "shouter"])
        .env("GATEHOUSE_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    invoke.stdin.take().unwrap().write_all(b"hello").unwrap();
    let out = invoke.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "HELLO\n");
}

/// A component path that does not resolve says against which directory it
/// was resolved and which setting chose that directory, for each way of
/// choosing it.
#[test]
fn an_unreadable_component_names_the_directory_and_the_setting() {
    let policies = Policies::new();
    policies.write("lost.toml", "[plugin]\nname = \"lost\"\ncomponent = \"build/lost.wasm\"\n");
    let dir = policies.dir.path().to_str().unwrap();
    let out = gatehouse(&["--policies", dir, "invoke", "lost"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "(`build/lost.wasm` is relative to the policy directory given to --policies (--plugins DIR looks elsewhere), `{dir}`)"
    );
    assert!(stderr.contains(&expected), "expected {expected} in {stderr}");

    let elsewhere = tempfile::tempdir().unwrap();
    let out = gatehouse(&["--policies", dir, "--plugins", elsewhere.path().to_str().unwrap(), "invoke", "lost"]);
    assert!(text(&out.stderr).contains("is relative to --plugins"), "{}", text(&out.stderr));

    let (_root, config) = policies.settings("");
    let out = gatehouse(&["--config", config.to_str().unwrap(), "invoke", "lost"]);
    let expected = format!("is relative to plugin_dir in {}", config.display());
    assert!(text(&out.stderr).contains(&expected), "{}", text(&out.stderr));
}

/// Problems of one file are listed in the order of its lines, whatever
/// order the checks found them in.
#[test]
fn policy_check_lists_a_files_problems_in_line_order() {
    let policies = Policies::new();
    policies.write(
        "bad.toml",
        "[plugin]\nname = \"Bad\"\ncomponent = \"missing.wasm\"\n[limits]\nmemory = \"1 KiB\"\n[http]\nallow = [\"localhost:8089\"]\n",
    );
    let out = gatehouse(&["policy", "check", policies.dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    let lines: Vec<usize> =
        stdout.lines().filter_map(|l| l.split("bad.toml:").nth(1)?.split(':').next()?.parse().ok()).collect();
    assert_eq!(lines, vec![2, 3, 5, 7], "{stdout}");
    assert!(stdout.contains("give the scheme too, as in `https://localhost:8089`"), "{stdout}");
}

/// `policy check` without a settings file writes nothing where it runs
/// (it used to create `.gatehouse/cache` in the current directory).
#[test]
fn policy_check_without_settings_writes_nothing() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let cwd = tempfile::tempdir().unwrap();
    let out = crate::common::gatehouse_command()
        .args(["policy", "check", policies.dir.path().to_str().unwrap()])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "policy check wrote into its directory");
}

/// `gatehouse compile` fails, naming the reason, for a component a load
/// would refuse (its imports are not granted), instead of reporting it
/// compiled.
#[test]
fn compile_fails_for_a_plugin_a_load_would_refuse() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    policies.plugin("socket", "hostile_socket", "");
    let (_data, config) = policies.settings("");
    let out = gatehouse(&["--config", config.to_str().unwrap(), "compile"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("echo: Compiled"), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("socket: compiled, but a load would refuse it") && stderr.contains("wasi:sockets"),
        "{stderr}"
    );
}

/// `policy explain-sql` through the real binary: allowed with kind and
/// tables (exit 0), denied with the rule and place (exit 1), usage and
/// policy problems (exit 2); the dialect from the settings' alias or
/// `--dialect`; the Spin door's transaction default; a hostile statement
/// and alias printed escaped.
#[test]
fn explain_sql_says_allowed_or_denied_with_the_rule_and_the_place() {
    let policies = Policies::new();
    let sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sql/policy.toml")).unwrap();
    let sql = sql.replace("[tables]", "[sql.main.tables]");
    policies.write("shop.toml", &format!("[plugin]\nname = \"shop\"\ncomponent = \"shop.wasm\"\n\n[sql.main]\n{sql}"));
    policies.write("bad.toml", "[plugin]\nname = \"bad\"\n\n[sql.main]\nstatements = [\"drop\"]\n");
    let dir = policies.dir.path().to_str().unwrap();
    let explain = |args: &[&str]| {
        let mut all = vec!["--policies", dir, "policy", "explain-sql"];
        all.extend_from_slice(args);
        gatehouse(&all)
    };

    let out = explain(&[
        "shop",
        "main",
        "--dialect",
        "postgres",
        "SELECT p.name FROM orders o JOIN products p ON p.id = o.product_id WHERE o.id = $1",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for line in [
        "alias       main (PostgreSQL)",
        "kind        select",
        "reads       orders, products",
        "writes      -",
        "parameters  1",
        "verdict     allowed",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    let out = explain(&["shop", "main", "--dialect", "sqlite", "DELETE FROM orders WHERE id = ? RETURNING id"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("kind        delete") && stdout.contains("writes      orders"), "{stdout}");

    let out = explain(&[
        "shop",
        "main",
        "--dialect",
        "sqlite",
        "SELECT id FROM products WHERE EXISTS (SELECT 1 FROM secrets)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("verdict     denied: table `secrets` is not granted for reading (in WHERE › EXISTS"),
        "{stdout}"
    );
    assert!(stdout.contains("(Table)"), "{stdout}");
    let out = explain(&["shop", "main", "--dialect", "postgres", "SELECT pg_sleep(10)"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("`pg_sleep`"), "{}", text(&out.stdout));

    // The door: Spin allows BEGIN by default, the custom door does not.
    assert_eq!(explain(&["shop", "main", "--dialect", "sqlite", "BEGIN TRANSACTION"]).status.code(), Some(1));
    let out = explain(&["shop", "main", "--dialect", "sqlite", "--door", "spin", "BEGIN TRANSACTION"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // Hostile text is escaped wherever it is printed.
    let out = explain(&["shop", "main", "--dialect", "sqlite", "SELECT * FROM \"x\u{1b}[2J\nverdict     allowed\""]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\u{1b}') && stdout.lines().filter(|l| l.starts_with("verdict")).count() == 1, "{stdout}");
    assert!(stdout.contains("\\u{1b}"), "{stdout}");

    // The dialect comes from the settings when they define the alias.
    let (_root, settings) = policies.settings("[databases.main]\nurl = \"postgres://u@127.0.0.1:1/app\"\n");
    let settings = settings.to_str().unwrap();
    let with_settings = |args: &[&str]| {
        let mut all = vec!["--config", settings, "--policies", dir, "policy", "explain-sql"];
        all.extend_from_slice(args);
        gatehouse(&all)
    };
    let out = with_settings(&["shop", "main", "SELECT id FROM products WHERE id = $1"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("main (PostgreSQL)"), "{}", text(&out.stdout));
    let out = with_settings(&["shop", "main", "--dialect", "sqlite", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is a PostgreSQL database in the settings"), "{}", text(&out.stderr));
    // A SQLite alias is read as SQLite (an outside review found it read as
    // PostgreSQL, whose `$1` SQLite does not take and whose names fold
    // differently).
    let (_root, settings) = policies.settings("[databases.main]\nsqlite = \"shop.db\"\n");
    let out = gatehouse(&[
        "--config",
        settings.to_str().unwrap(),
        "--policies",
        dir,
        "policy",
        "explain-sql",
        "shop",
        "main",
        "SELECT id FROM products WHERE id = ?1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("main (SQLite)"), "{}", text(&out.stdout));

    // Usage and policy problems: exit 2, saying what is wrong.
    for (args, expected) in [
        (&["shop", "main", "SELECT 1"][..], "--dialect sqlite|postgres"),
        (&["shop", "other", "--dialect", "sqlite", "SELECT 1"][..], "no [sql.other] section"),
        (&["nobody", "main", "--dialect", "sqlite", "SELECT 1"][..], "names plugin `nobody`"),
        (&["bad", "main", "--dialect", "sqlite", "SELECT 1"][..], ":5: [sql.main]: unknown statement kind `drop`"),
    ] {
        let out = explain(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains(expected), "{args:?}: {}", text(&out.stderr));
    }
}
