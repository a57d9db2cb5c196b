//! What the caller shows (sans-IO): the fan-out's per-node answers merged into one `ps` view,
//! with the nodes that did not answer listed as unavailable.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use crate::proto::{Container, Stats};

/// One node's answer to a fan-out call.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeAnswer<T> {
    /// It answered.
    Ok(T),
    /// It did not (timeout, refused, no Docker, denied): one line why.
    Unavailable(String),
}

/// A `ps` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRow {
    /// The node owning the container.
    pub node: String,
    /// The container.
    #[serde(flatten)]
    pub container: Container,
}

/// A node left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// Node name.
    pub node: String,
    /// One line.
    pub error: String,
}

/// `ps` across nodes (`--json` prints this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PsView {
    /// Every container shown, by node then name.
    pub containers: Vec<PsRow>,
    /// Nodes whose containers are missing.
    pub unavailable: Vec<Unavailable>,
    /// Nodes without a Docker agent (not counted as unavailable).
    #[serde(default)]
    pub without_docker: Vec<String>,
}

/// `stats` across nodes (`--json` prints this).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatsView {
    /// Every container's stats, by node then name.
    pub containers: Vec<Stats>,
    /// Nodes whose stats are missing.
    pub unavailable: Vec<Unavailable>,
    /// Nodes without a Docker agent (not counted as unavailable).
    #[serde(default)]
    pub without_docker: Vec<String>,
}

/// Splits answers into rows (`each`), unavailable nodes and nodes without an agent.
fn split<T>(
    answers: Vec<(String, NodeAnswer<Vec<T>>)>,
    mut each: impl FnMut(&str, T),
) -> (Vec<Unavailable>, Vec<String>) {
    let (mut un, mut none) = (Vec::new(), Vec::new());
    for (node, a) in answers {
        match a {
            NodeAnswer::Ok(v) => v.into_iter().for_each(|x| each(&node, x)),
            NodeAnswer::Unavailable(error) if error.contains(crate::proto::NO_AGENT) => {
                none.push(node)
            }
            NodeAnswer::Unavailable(error) => un.push(Unavailable { node, error }),
        }
    }
    un.sort_by(|a, b| a.node.cmp(&b.node));
    none.sort();
    (un, none)
}

/// Merges per-node container lists.
pub fn merge_ps(answers: Vec<(String, NodeAnswer<Vec<Container>>)>) -> PsView {
    let mut containers = Vec::new();
    let (unavailable, without_docker) = split(answers, |node, container| {
        containers.push(PsRow {
            node: node.to_owned(),
            container,
        })
    });
    containers.sort_by(|a, b| {
        (a.node.as_str(), a.container.name.as_str()).cmp(&(&b.node, &b.container.name))
    });
    PsView {
        containers,
        unavailable,
        without_docker,
    }
}

/// Merges per-node stats.
pub fn merge_stats(answers: Vec<(String, NodeAnswer<Vec<Stats>>)>) -> StatsView {
    let mut containers = Vec::new();
    let (unavailable, without_docker) = split(answers, |node, mut s: Stats| {
        s.node = node.to_owned();
        containers.push(s)
    });
    containers.sort_by(|a, b| (a.node.as_str(), a.name.as_str()).cmp(&(&b.node, &b.name)));
    StatsView {
        containers,
        unavailable,
        without_docker,
    }
}

/// The `ps` table; unavailable nodes are listed after it (one `NODE: unavailable (why)` line
/// each).
pub fn ps_table(v: &PsView) -> String {
    let mut s = format!(
        "{:<12} {:<24} {:<12} {:<20} {:<9} {}\n",
        "NODE", "NAME", "ID", "IMAGE", "STATE", "STATUS"
    );
    for r in &v.containers {
        let c = &r.container;
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:<12} {:<20} {:<9} {}",
            r.node,
            c.name,
            &c.id[..c.id.len().min(12)],
            c.image,
            c.state,
            c.status
        );
    }
    for u in &v.unavailable {
        let _ = writeln!(s, "{}: unavailable ({})", u.node, u.error);
    }
    if !v.without_docker.is_empty() {
        let _ = writeln!(s, "without Docker: {}", v.without_docker.join(", "));
    }
    s
}

/// Bytes as `12.3MiB`.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

/// The `stats` table.
pub fn stats_table(v: &StatsView) -> String {
    let mut s = format!(
        "{:<12} {:<24} {:>7} {:>10} {:>21} {:>21} {:>21}\n",
        "NODE", "NAME", "CPU %", "CPU SEC", "MEM USAGE / LIMIT", "NET RX / TX", "BLOCK R / W"
    );
    for c in &v.containers {
        let pct = c
            .cpu_percent
            .map_or_else(|| "-".into(), |p| format!("{p:.2}%"));
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:>7} {:>10.2} {:>21} {:>21} {:>21}",
            c.node,
            c.name,
            pct,
            c.cpu_seconds,
            format!("{} / {}", human(c.memory_bytes), human(c.memory_limit)),
            format!("{} / {}", human(c.net_rx), human(c.net_tx)),
            format!("{} / {}", human(c.block_read), human(c.block_write)),
        );
    }
    for u in &v.unavailable {
        let _ = writeln!(s, "{}: unavailable ({})", u.node, u.error);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> Container {
        Container {
            name: name.into(),
            id: format!("{name}0123456789abcdef"),
            image: "busybox".into(),
            state: "running".into(),
            status: "Up 1 minute".into(),
        }
    }

    #[test]
    fn ps_merges_and_lists_the_missing() {
        let v = merge_ps(vec![
            (
                "gamma".into(),
                NodeAnswer::Unavailable("no answer within 3s".into()),
            ),
            (
                "delta".into(),
                NodeAnswer::Unavailable("node delta runs no Docker agent (...)".into()),
            ),
            ("beta".into(), NodeAnswer::Ok(vec![c("web"), c("db")])),
            ("alpha".into(), NodeAnswer::Ok(vec![c("x")])),
        ]);
        let names: Vec<(&str, &str)> = v
            .containers
            .iter()
            .map(|r| (r.node.as_str(), r.container.name.as_str()))
            .collect();
        assert_eq!(names, [("alpha", "x"), ("beta", "db"), ("beta", "web")]);
        assert_eq!(v.unavailable.len(), 1);
        assert_eq!(v.without_docker, ["delta"]);
        let t = ps_table(&v);
        assert!(t.starts_with("NODE"), "{t}");
        assert!(t.contains("beta         web "), "{t}");
        assert!(
            t.ends_with("gamma: unavailable (no answer within 3s)\nwithout Docker: delta\n"),
            "{t}"
        );
        // The ID column is short.
        assert!(t.contains(" web012345678 "), "{t}");
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["containers"][0]["node"], "alpha");
        assert_eq!(j["containers"][0]["name"], "x");
        assert_eq!(j["unavailable"][0]["node"], "gamma");
    }

    #[test]
    fn stats_merge() {
        let s = Stats {
            name: "web".into(),
            up: true,
            cpu_seconds: 1.5,
            memory_bytes: 3 << 20,
            ..Default::default()
        };
        let v = merge_stats(vec![("beta".into(), NodeAnswer::Ok(vec![s]))]);
        assert_eq!(v.containers[0].node, "beta");
        let t = stats_table(&v);
        assert!(t.contains("3.0MiB"), "{t}");
        assert_eq!(human(10), "10B");
        assert_eq!(human(1536), "1.5KiB");
    }
}
