//! Engine stats -> [`Stats`] (sans-IO: the engine's JSON in, our numbers out).

use bollard::models::ContainerStatsResponse;

use crate::proto::Stats;

/// The numbers of one engine stats answer; `percent`: also CPU % from its two samples.
pub fn from_engine(s: &ContainerStatsResponse, percent: bool) -> Stats {
    let total = |c: &Option<bollard::models::ContainerCpuStats>| {
        c.as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
    };
    let cpu_ns = total(&s.cpu_stats).unwrap_or(0);
    let cpu_percent = if percent {
        let sys = |c: &Option<bollard::models::ContainerCpuStats>| {
            c.as_ref().and_then(|c| c.system_cpu_usage)
        };
        match (
            total(&s.cpu_stats),
            total(&s.precpu_stats),
            sys(&s.cpu_stats),
            sys(&s.precpu_stats),
        ) {
            (Some(c1), Some(c0), Some(s1), Some(s0)) if s1 > s0 && c1 >= c0 => {
                let cpus = s
                    .cpu_stats
                    .as_ref()
                    .and_then(|c| c.online_cpus)
                    .filter(|n| *n > 0)
                    .unwrap_or(1);
                Some((c1 - c0) as f64 / (s1 - s0) as f64 * cpus as f64 * 100.0)
            }
            _ => Some(0.0),
        }
    } else {
        None
    };
    let (mut memory_bytes, mut memory_limit) = (0, 0);
    if let Some(m) = &s.memory_stats {
        let cache = m.stats.as_ref().and_then(|st| {
            st.get("total_inactive_file")
                .or_else(|| st.get("inactive_file"))
                .copied()
        });
        memory_bytes = m.usage.unwrap_or(0).saturating_sub(cache.unwrap_or(0));
        memory_limit = m.limit.unwrap_or(0);
    }
    let (mut net_rx, mut net_tx) = (0, 0);
    for n in s.networks.iter().flat_map(|m| m.values()) {
        net_rx += n.rx_bytes.unwrap_or(0);
        net_tx += n.tx_bytes.unwrap_or(0);
    }
    let (mut block_read, mut block_write) = (0, 0);
    for e in s
        .blkio_stats
        .iter()
        .flat_map(|b| b.io_service_bytes_recursive.iter().flatten())
    {
        match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => block_read += e.value.unwrap_or(0),
            Some("write") => block_write += e.value.unwrap_or(0),
            _ => {}
        }
    }
    Stats {
        node: String::new(),
        name: String::new(),
        up: false,
        cpu_seconds: cpu_ns as f64 / 1e9,
        cpu_percent,
        memory_bytes,
        memory_limit,
        net_rx,
        net_tx,
        block_read,
        block_write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_numbers() {
        let j = serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000u64}, "system_cpu_usage": 2_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000u64}, "system_cpu_usage": 1_000_000_000u64},
            "memory_stats": {"usage": 10_000_000u64, "limit": 100_000_000u64, "stats": {"total_inactive_file": 1_000_000u64}},
            "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
            "blkio_stats": {"io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "Read", "value": 4096},
                {"major": 8, "minor": 0, "op": "Write", "value": 8192},
                {"major": 8, "minor": 0, "op": "Total", "value": 12288}]}
        });
        let s: ContainerStatsResponse = serde_json::from_value(j).unwrap();
        let v = from_engine(&s, true);
        assert_eq!(v.cpu_seconds, 3.0);
        assert_eq!(v.cpu_percent, Some(100.0));
        assert_eq!(v.memory_bytes, 9_000_000);
        assert_eq!(v.memory_limit, 100_000_000);
        assert_eq!((v.net_rx, v.net_tx), (11, 22));
        assert_eq!((v.block_read, v.block_write), (4096, 8192));
        assert_eq!(from_engine(&s, false).cpu_percent, None);
        // An empty answer (a stopped container) is all zeros, not an error.
        let z = from_engine(&ContainerStatsResponse::default(), true);
        assert_eq!(z.cpu_seconds, 0.0);
        assert_eq!(z.cpu_percent, Some(0.0));
    }
}
