//! `tmctl ping PEER`: like `tailscale ping`. Each probe is one `Ping` request (the node sends
//! an ICMP echo through the tunnel and reports the path the reply came by); then one
//! full-size probe checks the tunnel MTU end to end.

use crate::{call_timeout, Target};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};
use tm_api::{Command, PingReply};

#[derive(Debug, Clone, Args)]
pub struct PingArgs {
    /// Peer name (`beta` or `beta.mesh`) or an address it owns (its mesh IP).
    pub peer: String,
    /// Number of probes.
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// How long to wait for each reply (e.g. 2s, 1m).
    #[arg(long, default_value = "5s", value_parser = tm_api::parse_duration)]
    pub timeout: u64,
    /// Do not send the final full-size probe (path MTU).
    #[arg(long)]
    pub no_mtu: bool,
    /// Machine-readable output (printed once all probes are done).
    #[arg(long)]
    pub json: bool,
}

/// One probe as reported by `--json`.
#[derive(Debug, Serialize)]
struct Probe {
    seq: u32,
    /// `None`: no reply within the timeout.
    reply: Option<PingReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    peer: String,
    sent: u32,
    received: u32,
    probes: Vec<Probe>,
    /// The tunnel MTU when a full-size probe got through; `None`: not known.
    path_mtu: Option<u16>,
}

pub fn run(target: &Target, a: &PingArgs, out: &mut impl Write) -> Result<()> {
    let timeout = Duration::from_secs(a.timeout);
    let one = |size: Option<u16>| -> Result<Result<PingReply, String>> {
        let cmd = Command::Ping {
            peer: a.peer.clone(),
            size,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match call_timeout(target, cmd, timeout + Duration::from_secs(5)) {
            Ok(v) => Ok(Ok(serde_json::from_value(v)?)),
            // The node answered with an error: a lost probe if it is a timeout, else fatal
            // (unknown peer, bad size: the same for every probe).
            Err(e) if e.to_string().starts_with("no reply") => Ok(Err(e.to_string())),
            Err(e) => Err(e),
        }
    };
    let mut probes = Vec::new();
    let mut rtts = Vec::new();
    let mut mtu = None;
    for seq in 1..=a.count {
        let t0 = Instant::now();
        let r = one(None)?;
        match &r {
            Ok(p) => {
                rtts.push(p.rtt_us);
                mtu = Some(p.tunnel_mtu);
                if !a.json {
                    writeln!(out, "{}", pong_line(p))?;
                }
            }
            Err(e) if !a.json => writeln!(out, "{e}")?,
            Err(_) => {}
        }
        let (reply, error) = match r {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        probes.push(Probe { seq, reply, error });
        out.flush()?;
        if seq < a.count {
            // One probe per second, as ping(8).
            std::thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
        }
    }
    let received = rtts.len() as u32;
    let mut path_mtu = None;
    if let (Some(m), false) = (mtu, a.no_mtu) {
        if m > tm_api::PING_SIZE {
            match one(Some(m))? {
                Ok(_) => {
                    path_mtu = Some(m);
                    if !a.json {
                        writeln!(out, "path MTU: {m} (a {m}-byte probe got through)")?;
                    }
                }
                Err(_) if !a.json => writeln!(
                    out,
                    "path MTU: unknown (a {m}-byte probe got no reply; {} bytes pass)",
                    tm_api::PING_SIZE
                )?,
                Err(_) => {}
            }
        }
    }
    if a.json {
        let s = Summary {
            peer: a.peer.clone(),
            sent: a.count,
            received,
            probes,
            path_mtu,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
    } else if received > 0 {
        writeln!(out, "{}", summary_line(a.count, &rtts))?;
    }
    if received == 0 {
        bail!(
            "no reply from {} to {} probe{} (timeout {}s each)",
            a.peer,
            a.count,
            if a.count == 1 { "" } else { "s" },
            a.timeout
        );
    }
    Ok(())
}

/// `pong from beta (100.64.0.2) via direct 192.0.2.3:51820 in 0.84 ms`
pub fn pong_line(p: &PingReply) -> String {
    let ep = match (p.path.as_str(), p.endpoint.as_deref()) {
        ("relay", Some("local")) => " (this coordinator)".to_string(),
        (_, Some(e)) => format!(" {e}"),
        (_, None) => String::new(),
    };
    format!(
        "pong from {} ({}) via {}{ep} in {} ({} bytes)",
        p.peer,
        p.address,
        p.path,
        ms(p.rtt_us),
        p.size
    )
}

fn summary_line(sent: u32, rtts: &[u64]) -> String {
    let lost = sent as usize - rtts.len();
    let (min, max) = (
        rtts.iter().copied().min().unwrap_or(0),
        rtts.iter().copied().max().unwrap_or(0),
    );
    let avg = rtts.iter().sum::<u64>() / rtts.len().max(1) as u64;
    format!(
        "{sent} sent, {} received, {}% lost; rtt min/avg/max {}/{}/{}",
        rtts.len(),
        lost * 100 / sent as usize,
        ms(min),
        ms(avg),
        ms(max)
    )
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let mut p = PingReply {
            peer: "beta".into(),
            address: "100.64.0.2".into(),
            path: "direct".into(),
            endpoint: Some("192.0.2.3:51820".into()),
            rtt_us: 840,
            size: 84,
            tunnel_mtu: 1420,
        };
        assert_eq!(
            pong_line(&p),
            "pong from beta (100.64.0.2) via direct 192.0.2.3:51820 in 0.84 ms (84 bytes)"
        );
        p.path = "relay".into();
        p.endpoint = Some("local".into());
        assert_eq!(
            pong_line(&p),
            "pong from beta (100.64.0.2) via relay (this coordinator) in 0.84 ms (84 bytes)"
        );
        assert_eq!(
            summary_line(4, &[1000, 3000, 2000]),
            "4 sent, 3 received, 25% lost; rtt min/avg/max 1.00 ms/2.00 ms/3.00 ms"
        );
    }
}
