//! `tunnelmesh gen ...` (hidden): shell completions and man pages for `tunnelmesh` and `tmctl`,
//! generated from the same clap definitions the binaries parse (used by scripts/install.sh).

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Bin {
    Tunnelmesh,
    Tmctl,
}

#[derive(Subcommand)]
pub enum Gen {
    /// Print the completion script of BIN for SHELL.
    Completions {
        shell: clap_complete::Shell,
        #[arg(long, value_enum, default_value = "tunnelmesh")]
        bin: Bin,
    },
    /// Write tunnelmesh.1 and tmctl.1 into DIR.
    Man { dir: PathBuf },
}

/// `tmctl`'s command line, as its binary builds it.
fn tmctl_command() -> clap::Command {
    let c = clap::Command::new("tmctl")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Operate a local TunnelMesh node over its control socket.");
    let c = tmctl::Target::augment_args(c);
    tmctl::OperatorCommand::augment_subcommands(c).subcommand_required(true)
}

fn command(bin: Bin) -> clap::Command {
    match bin {
        Bin::Tunnelmesh => crate::Cli::command(),
        Bin::Tmctl => tmctl_command(),
    }
}

pub fn run(g: Gen) -> Result<()> {
    match g {
        Gen::Completions { shell, bin } => {
            let mut c = command(bin);
            let name = c.get_name().to_string();
            clap_complete::generate(shell, &mut c, name, &mut std::io::stdout());
        }
        Gen::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for bin in [Bin::Tunnelmesh, Bin::Tmctl] {
                let c = command(bin);
                let path = dir.join(format!("{}.1", c.get_name()));
                let mut out = Vec::new();
                clap_mangen::Man::new(c).render(&mut out)?;
                std::fs::write(&path, out)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_command_lines_are_consistent() {
        command(Bin::Tunnelmesh).debug_assert();
        command(Bin::Tmctl).debug_assert();
    }
}
