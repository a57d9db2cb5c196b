//! `tmctl`: the operator CLI of a TunnelMesh node.
use clap::Parser;
use tmctl::{OperatorCommand, Target};

/// Operate a local TunnelMesh node over its control socket.
#[derive(Parser)]
#[command(name = "tmctl", version, about)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    cmd: OperatorCommand,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = tmctl::run(&cli.target, &cli.cmd) {
        eprintln!("tmctl: {}", tmctl::error_line(&e));
        std::process::exit(1);
    }
}
