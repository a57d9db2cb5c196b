//! UDP ping-pong latency probe (run it through the tunnel).
//!
//! `latency-probe echo ADDR:PORT` answers every datagram to its sender.
//! `latency-probe ping ADDR:PORT [COUNT] [INTERVAL_US] [LABEL]` sends COUNT 64-byte probes
//! (default 2000, one per 1000 us), each carrying a sequence number and a send timestamp,
//! waits up to 1 s for each echo, and prints one line: label, sent, received, and the
//! round-trip p50 / p99 / p99.9 / max in microseconds (hdrhistogram, 3 significant
//! digits). Lost probes are reported, not counted in the percentiles.
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

fn echo(addr: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind(addr)?;
    let mut b = [0u8; 2048];
    loop {
        let (n, from) = s.recv_from(&mut b)?;
        s.send_to(&b[..n], from)?;
    }
}

fn ping(to: SocketAddr, count: u64, interval: Duration, label: &str) -> std::io::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("valid bounds");
    let t0 = Instant::now();
    let mut b = [0u8; 64];
    let mut got = 0u64;
    for seq in 0..count {
        let due = t0 + interval * seq as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let sent = Instant::now();
        let mut p = [0u8; 64];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        s.send(&p)?;
        let deadline = sent + Duration::from_secs(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.set_read_timeout(Some(left))?;
            match s.recv(&mut b) {
                Ok(n) if n >= 8 => {
                    let r = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                    if r == seq {
                        let us = sent.elapsed().as_micros() as u64;
                        hist.record(us.max(1)).expect("within bounds");
                        got += 1;
                        break;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
    }
    println!(
        "{label}: sent {count} received {got} rtt_us p50 {} p99 {} p99.9 {} max {}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok(())
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: latency-probe echo ADDR:PORT | ping ADDR:PORT [COUNT] [INTERVAL_US] [LABEL]";
    let addr = a.get(1).and_then(|s| s.parse::<SocketAddr>().ok());
    let r = match (a.first().map(String::as_str), addr) {
        (Some("echo"), Some(addr)) => echo(addr),
        (Some("ping"), Some(to)) => {
            let count = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
            let us = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let label = a.get(4).map_or("probe", String::as_str);
            ping(to, count, Duration::from_micros(us), label)
        }
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latency-probe: {e}");
            ExitCode::from(1)
        }
    }
}
