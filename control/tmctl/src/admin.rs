//! Identity administration commands (`token`, `node`, `audit`): answered by a coordinator to
//! local root over its control socket. (Forwarding them from members to the coordinator is
//! not implemented yet: run them on the coordinator.)

use anyhow::Result;
use clap::Subcommand;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};
use tm_api::{AuditInfo, Command, NewToken, NodeInfo, TokenInfo};

use crate::{call, Target};

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; it is printed once (only its hash is stored).
    Create {
        /// Tag given to every node that joins with it (repeatable), e.g. --tag tag:ci.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Lifetime, e.g. 30m, 24h, 7d (default: no expiry).
        #[arg(long, value_parser = tm_api::parse_duration)]
        expires: Option<u64>,
        /// Allow any number of joins (default: one node).
        #[arg(long)]
        reusable: bool,
        /// A token that admits another coordinator of this mesh (and only coordinators):
        /// `tunnelmesh join THIS_HOST:8443 --token ... --config coordinator.yaml` on it.
        #[arg(long)]
        coordinator: bool,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: joins and S3 requests with it are refused from now on.
    Revoke { id: String },
    /// Replace the default token: a new one is printed, the old one stops working for joins
    /// and S3 at once (joined nodes keep working).
    Rotate {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// List the mesh's nodes with their tags.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a tag to a node: `node tag beta tag:untrusted`.
    Tag { name: String, tag: String },
    /// Remove a tag from a node.
    Untag { name: String, tag: String },
    /// Remove a node from the mesh: its tunnels and its S3 keys stop at once.
    Remove { name: String },
}

fn when(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if unix >= now {
        format!("in {}", span(unix - now))
    } else {
        format!("{} ago", span(now - unix))
    }
}

fn span(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn tags(t: &[String]) -> String {
    if t.is_empty() {
        "-".into()
    } else {
        t.join(",")
    }
}

fn token_state(t: &TokenInfo) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if t.revoked_unix.is_some() {
        "revoked".into()
    } else if t.expires_unix.is_some_and(|e| e <= now) {
        "expired".into()
    } else if let (false, Some(by)) = (t.reusable, &t.used_by) {
        format!("used by {by}")
    } else {
        "valid".into()
    }
}

fn print_new(out: &mut impl Write, n: &NewToken, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(n)?)?;
    } else {
        writeln!(
            out,
            "token {} (shown only now; only its hash is kept):",
            n.info.id
        )?;
        writeln!(out, "{}", n.token)?;
    }
    Ok(())
}

pub fn token(target: &Target, cmd: &Option<TokenCommand>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        None => {
            let v = call(target, Command::Token)?;
            writeln!(out, "{}", v.as_str().unwrap_or_default())?;
        }
        Some(TokenCommand::Create {
            tags,
            expires,
            reusable,
            coordinator,
            json,
        }) => {
            let v = call(
                target,
                Command::TokenCreate {
                    tags: tags.clone(),
                    expires_secs: *expires,
                    reusable: *reusable,
                    coordinator: *coordinator,
                },
            )?;
            print_new(&mut out, &serde_json::from_value(v)?, *json)?;
        }
        Some(TokenCommand::Rotate { json }) => {
            let v = call(target, Command::TokenRotate)?;
            print_new(&mut out, &serde_json::from_value(v)?, *json)?;
        }
        Some(TokenCommand::Revoke { id }) => {
            call(target, Command::TokenRevoke { id: id.clone() })?;
            writeln!(out, "revoked token {id}")?;
        }
        Some(TokenCommand::List { json }) => {
            let v = call(target, Command::TokenList)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            let list: Vec<TokenInfo> = serde_json::from_value(v)?;
            writeln!(
                out,
                "{:<16} {:<8} {:<10} {:<24} {:<12} {:<12} STATE",
                "ID", "DEFAULT", "USE", "TAGS", "CREATED", "EXPIRES"
            )?;
            for t in list {
                writeln!(
                    out,
                    "{:<16} {:<8} {:<10} {:<24} {:<12} {:<12} {}",
                    t.id,
                    if t.default { "yes" } else { "" },
                    if t.reusable { "reusable" } else { "once" },
                    tags(&t.tags),
                    when(t.created_unix),
                    t.expires_unix.map_or_else(|| "never".into(), when),
                    token_state(&t)
                )?;
            }
        }
    }
    Ok(())
}

pub fn node(target: &Target, cmd: &NodeCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        NodeCommand::List { json } => {
            let v = call(target, Command::NodeList)?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            let list: Vec<NodeInfo> = serde_json::from_value(v)?;
            writeln!(out, "{:<20} {:<16} {:<12} TAGS", "NAME", "MESH IP", "ROLE")?;
            for n in list {
                writeln!(
                    out,
                    "{:<20} {:<16} {:<12} {}",
                    n.name,
                    n.mesh_ip,
                    if n.is_coordinator {
                        "coordinator"
                    } else {
                        "member"
                    },
                    tags(&n.tags)
                )?;
            }
        }
        NodeCommand::Tag { name, tag } => {
            let v = call(
                target,
                Command::NodeTag {
                    name: name.clone(),
                    tag: tag.clone(),
                },
            )?;
            let n: NodeInfo = serde_json::from_value(v)?;
            writeln!(out, "{name}: tags {}", tags(&n.tags))?;
        }
        NodeCommand::Untag { name, tag } => {
            let v = call(
                target,
                Command::NodeUntag {
                    name: name.clone(),
                    tag: tag.clone(),
                },
            )?;
            let n: NodeInfo = serde_json::from_value(v)?;
            writeln!(out, "{name}: tags {}", tags(&n.tags))?;
        }
        NodeCommand::Remove { name } => {
            call(target, Command::NodeRemove { name: name.clone() })?;
            writeln!(
                out,
                "removed node {name}: its tunnels and S3 keys no longer work"
            )?;
        }
    }
    Ok(())
}

pub fn audit(target: &Target, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let v = call(target, Command::Audit)?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let list: Vec<AuditInfo> = serde_json::from_value(v)?;
    writeln!(
        out,
        "{:<12} {:<12} {:<14} {:<16} DETAIL",
        "WHEN", "WHO", "ACTION", "TARGET"
    )?;
    for e in list {
        writeln!(
            out,
            "{:<12} {:<12} {:<14} {:<16} {}",
            when(e.unix),
            e.who,
            e.action,
            e.target,
            e.detail
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cli::parse;
    use crate::OperatorCommand;

    #[test]
    fn admin_command_lines() {
        let c = parse(&[
            "token",
            "create",
            "--tag",
            "tag:ci",
            "--tag",
            "tag:b",
            "--expires",
            "24h",
            "--reusable",
            "--json",
        ])
        .expect("parses");
        let OperatorCommand::Token {
            cmd:
                Some(TokenCommand::Create {
                    tags,
                    expires,
                    reusable,
                    coordinator,
                    json,
                }),
        } = c
        else {
            panic!("wrong command: {c:?}")
        };
        assert_eq!(tags, ["tag:ci", "tag:b"]);
        assert_eq!(expires, Some(86400));
        assert!(reusable && json && !coordinator);
        assert!(matches!(
            parse(&["token"]).expect("bare token"),
            OperatorCommand::Token { cmd: None }
        ));
        let e = parse(&["token", "create", "--expires", "24"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unit"), "{e}");
        assert!(matches!(
            parse(&["node", "tag", "beta", "tag:x"]).expect("node tag"),
            OperatorCommand::Node(NodeCommand::Tag { .. })
        ));
        assert!(parse(&["node", "remove"]).is_err(), "a name is required");
        assert!(matches!(
            parse(&["audit", "--json"]).expect("audit"),
            OperatorCommand::Audit { json: true }
        ));
        assert!(matches!(
            parse(&["token", "revoke", "tk1"]).expect("revoke"),
            OperatorCommand::Token {
                cmd: Some(TokenCommand::Revoke { .. })
            }
        ));
    }
}
