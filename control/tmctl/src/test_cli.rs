//! Parsing operator command lines in unit tests, as `tmctl` and `tunnelmesh` parse them.

use clap::Parser;

use crate::OperatorCommand;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: OperatorCommand,
}

/// Parses `args` (without the program name) as an operator command.
pub(crate) fn parse(args: &[&str]) -> Result<OperatorCommand, clap::Error> {
    Cli::try_parse_from(std::iter::once("tmctl").chain(args.iter().copied())).map(|c| c.cmd)
}
