//! The `gatehouse` binary: the CLI edge of the library (see `cli`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
