//! `chiral`: a thin command line over the host library. Each command lives in its own module
//! under `cli/`; this file parses, sets up logging and the runtime, dispatches and turns the
//! outcome into an exit code (`cli::exit`).

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;
use cli::{
    args::{Cli, Command},
    exit::Exit,
};
use serde_json::json;

fn main() -> ExitCode {
    chiral_host::tune_allocator();
    chiral_host::raise_open_files_limit();
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let json = cli.command.json();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chiral: cannot start the runtime: {e}");
            return Exit::Failure.into();
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line on stderr; with --json, the same on stdout for scripts.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("chiral: {msg}");
            if json {
                println!("{}", json!({ "ok": false, "error": msg }));
            }
            Exit::of_error(&e).into()
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Get(a) => cli::get::run(g, a).await,
        Command::Seed(a) => cli::seed::run(g, a).await,
        Command::Seeds(a) => cli::seeds::run(g, a).await,
        Command::Stop(a) => cli::stop::run(g, a).await,
        Command::Remove(a) => cli::remove::run(g, a).await,
        Command::Plugins(a) => cli::plugins::run(g, a).await,
        Command::Create(a) => cli::create::run(g, a).await,
        Command::Node(a) => cli::node::run(g, a).await,
        Command::Search(a) => cli::search::run(g, a).await,
        Command::Demo(a) => cli::demo::run(g, a).await,
        Command::Daemon(a) => cli::daemon::run(g, a).await,
        Command::Wallet(a) => cli::wallet::run(g, a).await,
        Command::Payments(a) => cli::payments::run(g, a).await,
    }
}
