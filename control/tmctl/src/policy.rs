//! `policy set|get|check|explain`: the mesh policy, answered by a coordinator (admin).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use tm_api::{Command, PolicyExplanation, PolicyInfo};

use crate::{call, Target};

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (HuJSON), run its tests, and put it in force everywhere; refused
    /// with the failing place or test, and then nothing changes.
    Set { file: PathBuf },
    /// Print the policy in force (the file as set; `--json`: with its hash).
    Get {
        #[arg(long)]
        json: bool,
    },
    /// Validate a file and run its tests against the mesh; changes nothing.
    Check { file: PathBuf },
    /// The decision and deciding rule (file:line) for one request.
    Explain(ExplainArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Who asks: a node name, `tag:x`, or `token:ID`.
    #[arg(long)]
    pub src: String,
    /// An S3 request on this bucket (with --op read|list|put|delete|admin, and --key).
    #[arg(long, group = "surface")]
    pub s3: Option<String>,
    /// The object key or list prefix of an S3 request.
    #[arg(long, requires = "s3")]
    pub key: Option<String>,
    /// An NFS request on this share (with --op mount|read|write).
    #[arg(long, group = "surface")]
    pub nfs: Option<String>,
    /// The admin capability (tokens, nodes, tags, policy, audit).
    #[arg(long, group = "surface")]
    pub admin: bool,
    /// A Docker request on NODE/CONTAINER (with --op VERB: list, inspect, logs, start, ...).
    #[arg(long, group = "surface")]
    pub docker: Option<String>,
    /// A packet to HOST:PORT/PROTO.
    #[arg(long, group = "surface")]
    pub dst: Option<String>,
    /// The operation (S3, NFS and Docker requests).
    #[arg(long)]
    pub op: Option<String>,
    #[arg(long)]
    pub json: bool,
}

impl ExplainArgs {
    /// The request in the words the coordinator reads (`s3 put bucket/key`, ...).
    pub fn words(&self) -> Result<Vec<String>> {
        let op = || -> Result<String> {
            self.op
                .clone()
                .context("--op is required for --s3, --nfs and --docker")
        };
        Ok(if let Some(b) = &self.s3 {
            let path = match &self.key {
                Some(k) => format!("{b}/{k}"),
                None => b.clone(),
            };
            vec!["s3".into(), op()?, path]
        } else if let Some(s) = &self.nfs {
            vec!["nfs".into(), op()?, s.clone()]
        } else if self.admin {
            vec!["admin".into()]
        } else if let Some(d) = &self.docker {
            vec!["docker".into(), op()?, d.clone()]
        } else if let Some(d) = &self.dst {
            vec!["ip".into(), d.clone()]
        } else {
            bail!("say what is asked: --s3 BUCKET, --nfs SHARE, --admin, --docker NODE/CONTAINER or --dst HOST:PORT/PROTO")
        })
    }
}

fn read(file: &Path) -> Result<(String, String)> {
    let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
    if meta.len() > 1 << 20 {
        bail!(
            "{}: {} bytes; a policy file is at most 1 MiB",
            file.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: not a readable UTF-8 file", file.display()))?;
    Ok((file.display().to_string(), text))
}

fn print_info(out: &mut impl Write, i: &PolicyInfo) -> Result<()> {
    for w in &i.warnings {
        writeln!(out, "warning: {w}")?;
    }
    writeln!(out, "{}", i.status)?;
    Ok(())
}

pub fn policy(target: &Target, cmd: &PolicyCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        PolicyCommand::Set { file } => {
            let (file, text) = read(file)?;
            let v = call(target, Command::PolicySet { file, text })?;
            let i: PolicyInfo = serde_json::from_value(v)?;
            print_info(&mut out, &i)?;
            writeln!(out, "{} tests passed; in force: {}", i.tests, i.hash)?;
        }
        PolicyCommand::Check { file } => {
            let (file, text) = read(file)?;
            let v = call(target, Command::PolicyCheck { file, text })?;
            let i: PolicyInfo = serde_json::from_value(v)?;
            print_info(&mut out, &i)?;
        }
        PolicyCommand::Get { json } => {
            let v = call(target, Command::PolicyGet)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            let i: PolicyInfo = serde_json::from_value(v)?;
            match i.text {
                Some(t) => write!(out, "{t}")?,
                None => writeln!(out, "{}", i.status)?,
            }
        }
        PolicyCommand::Explain(a) => {
            let request = a.words()?;
            let v = call(
                target,
                Command::PolicyExplain {
                    src: a.src.clone(),
                    request,
                },
            )?;
            if a.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            let e: PolicyExplanation = serde_json::from_value(v)?;
            match &e.rule {
                Some(r) => writeln!(out, "{} (rule {r}): {}", e.decision, e.reason)?,
                None => writeln!(out, "{}: {}", e.decision, e.reason)?,
            }
            for m in e.matched.iter().skip(1) {
                writeln!(out, "  also matches: {m}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cli::parse;
    use crate::OperatorCommand;

    fn words(args: &[&str]) -> Result<Vec<String>> {
        match parse(args).map_err(|e| anyhow::anyhow!("{e}"))? {
            OperatorCommand::Policy(PolicyCommand::Explain(a)) => a.words(),
            c => bail!("wrong command {c:?}"),
        }
    }

    #[test]
    fn explain_lines_as_the_issue_writes_them() {
        let w = words(&[
            "policy",
            "explain",
            "--src",
            "beta",
            "--s3",
            "build-artifacts",
            "--op",
            "put",
        ])
        .unwrap();
        assert_eq!(w, ["s3", "put", "build-artifacts"]);
        let w = words(&[
            "policy", "explain", "--src", "beta", "--nfs", "default", "--op", "mount",
        ])
        .unwrap();
        assert_eq!(w, ["nfs", "mount", "default"]);
        let w = words(&[
            "policy", "explain", "--src", "beta", "--s3", "b", "--key", "x/y", "--op", "get",
        ])
        .unwrap();
        assert_eq!(w, ["s3", "get", "b/x/y"]);
        assert_eq!(
            words(&["policy", "explain", "--src", "beta", "--admin"]).unwrap(),
            ["admin"]
        );
        let e = words(&["policy", "explain", "--src", "beta", "--s3", "b"]).unwrap_err();
        assert!(e.to_string().contains("--op is required"), "{e}");
        assert!(
            parse(&["policy", "explain", "--src", "b", "--s3", "x", "--nfs", "y"]).is_err(),
            "one surface at a time"
        );
        assert!(words(&["policy", "explain", "--src", "beta"]).is_err());
        assert!(matches!(
            parse(&["policy", "set", "p.hujson"]).unwrap(),
            OperatorCommand::Policy(PolicyCommand::Set { .. })
        ));
    }
}
