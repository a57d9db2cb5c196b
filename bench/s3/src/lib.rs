//! S3 load generator for comparing tm-s3 with other S3 servers (s3s-fs) on loopback.
//!
//! What it does: opens N keep-alive HTTP/1.1 connections (hyper client, one per worker) to one
//! target, signs every request with AWS SigV4 using the REAL payload SHA-256 (so every server
//! hashes and verifies the same bytes), and runs one scenario:
//! - `put-small`: PUT unique 4 KiB objects `small/<n>` for a duration (or N ops);
//! - `get-small`: GET `small/<n mod keys>` (missing keys are uploaded first, untimed);
//! - `put-large`: PUT `large/<i>` (64 MiB each, unique content per MiB so content-addressed stores
//!   cannot deduplicate); bodies and hashes are generated before the clock starts;
//! - `get-large`: GET every `large/<i>` several times (missing ones uploaded first, untimed).
//!
//! Latencies go into an hdrhistogram (microseconds); a [`Report`] is one JSON line. [`table`]
//! turns JSON lines from several servers into a side-by-side markdown table.
//!
//! What it never does: talk to anything but the URL it is given, or assert on speed.
//!
//! Call order: [`Target::new`], [`ensure_bucket`], then [`run`] per scenario.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::json;

use tm_sigv4::{sha256_hex, Signer, EMPTY_SHA256};

/// One server under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label used in the output (e.g. `tm-s3`, `s3s-fs`).
    pub name: String,
    /// `host:port` (also the `Host` header).
    pub authority: String,
    /// Bucket used for every object.
    pub bucket: String,
    /// Send `x-amz-checksum-crc32` (computed here) with every PUT, as current SDKs do.
    pub checksum: bool,
    signer: Signer,
}

impl Target {
    /// Parses `url` (`http://host:port`, no path) and keeps the credentials.
    pub fn new(name: &str, url: &str, ak: &str, sk: &str, bucket: &str) -> anyhow::Result<Target> {
        let uri: http::Uri = url.parse().context("target URL")?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// targets are supported: {url}");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("target URL has no host:port: {url}"))?
            .to_string();
        Ok(Target {
            name: name.to_owned(),
            authority,
            bucket: bucket.to_owned(),
            checksum: false,
            signer: Signer::new(ak, sk, "us-east-1", "s3"),
        })
    }
}

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Unique small objects, PUT.
    PutSmall,
    /// Small objects, GET.
    GetSmall,
    /// Large objects, PUT.
    PutLarge,
    /// Large objects, GET.
    GetLarge,
}

impl Scenario {
    /// Every scenario in the order `run.sh` uses.
    pub const ALL: [Scenario; 4] = [
        Scenario::PutSmall,
        Scenario::GetSmall,
        Scenario::PutLarge,
        Scenario::GetLarge,
    ];

    /// Name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PutSmall => "put-small",
            Scenario::GetSmall => "get-small",
            Scenario::PutLarge => "put-large",
            Scenario::GetLarge => "get-large",
        }
    }

    fn is_small(self) -> bool {
        matches!(self, Scenario::PutSmall | Scenario::GetSmall)
    }
}

/// Workload sizes.
#[derive(Clone, Debug)]
pub struct Params {
    /// Concurrent connections for the small scenarios.
    pub conns: usize,
    /// Wall-clock length of the small scenarios.
    pub duration: Duration,
    /// Stop the small scenarios after this many operations (whichever comes first).
    pub ops: Option<u64>,
    /// Small object size in bytes.
    pub small_size: usize,
    /// Distinct keys read by `get-small`.
    pub get_keys: u64,
    /// Large object size in bytes.
    pub large_size: usize,
    /// Number of distinct large objects.
    pub large_count: usize,
    /// Concurrent connections for the large scenarios.
    pub large_conns: usize,
    /// How many times `get-large` reads each large object.
    pub large_rounds: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            conns: 16,
            duration: Duration::from_secs(10),
            ops: None,
            small_size: 4096,
            get_keys: 1000,
            large_size: 64 << 20,
            large_count: 8,
            large_conns: 4,
            large_rounds: 3,
        }
    }
}

/// Result of one scenario against one server.
#[derive(Clone, Debug)]
pub struct Report {
    /// Target label.
    pub server: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations (transport error or unexpected status/length).
    pub errors: u64,
    /// Payload bytes moved by successful operations.
    pub bytes: u64,
    /// Wall-clock seconds of the timed phase.
    pub secs: f64,
    /// Concurrent connections.
    pub conns: usize,
    /// Object size in bytes.
    pub object_size: usize,
    /// Latency histogram, microseconds.
    pub hist: Histogram<u64>,
    /// First error seen, for diagnosis.
    pub first_error: Option<String>,
}

impl Report {
    /// Successful operations per second.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    /// Payload throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    /// One JSON object (printed as one line).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "server": self.server,
            "scenario": self.scenario.name(),
            "ops": self.ops,
            "errors": self.errors,
            "bytes": self.bytes,
            "secs": self.secs,
            "conns": self.conns,
            "object_size": self.object_size,
            "ops_per_s": self.ops_per_s(),
            "mb_per_s": self.mb_per_s(),
            "p50_us": self.hist.value_at_quantile(0.50),
            "p99_us": self.hist.value_at_quantile(0.99),
            "max_us": self.hist.max(),
            "first_error": self.first_error,
        })
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Deterministic pseudo-random bytes (splitmix64) so every object has distinct content.
fn fill(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for c in out.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        c.copy_from_slice(&z.to_le_bytes()[..c.len()]);
    }
}

/// Body of small object `n`.
pub fn small_body(n: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    fill(n, &mut v);
    Bytes::from(v)
}

/// Body of large object `i` (seeds far from the small ones).
pub fn large_body(i: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    fill(i | (1 << 63), &mut v);
    Bytes::from(v)
}

/// Response summary: status, payload bytes read, and `Content-Length` if any.
struct Resp {
    status: StatusCode,
    body_len: u64,
}

/// One keep-alive HTTP/1.1 connection that reconnects after errors.
struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(target: Arc<Target>) -> Conn {
        Conn {
            target,
            sender: None,
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let s = tokio::net::TcpStream::connect(&self.target.authority)
            .await
            .with_context(|| format!("connect {}", self.target.authority))?;
        s.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `method /bucket[/key]` with `body` (hash `sha`) and reads the whole response body.
    async fn request(
        &mut self,
        method: &str,
        key: Option<&str>,
        body: Bytes,
        sha: &str,
    ) -> anyhow::Result<Resp> {
        let r = self.request_inner(method, key, body, sha).await;
        if r.is_err() {
            self.sender = None;
        }
        r
    }

    async fn request_inner(
        &mut self,
        method: &str,
        key: Option<&str>,
        body: Bytes,
        sha: &str,
    ) -> anyhow::Result<Resp> {
        let t = &self.target;
        let path = match key {
            Some(k) => format!("/{}/{k}", t.bucket),
            None => format!("/{}", t.bucket),
        };
        let mut headers = vec![
            ("host".to_owned(), t.authority.clone()),
            ("x-amz-content-sha256".to_owned(), sha.to_owned()),
        ];
        if t.checksum && method == "PUT" && key.is_some() {
            use base64::Engine as _;
            let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, &body) as u32;
            headers.push((
                "x-amz-checksum-crc32".to_owned(),
                base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()),
            ));
        }
        let (authorization, _) =
            t.signer
                .sign_headers(method, &path, &[], &mut headers, sha, SystemTime::now());
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header("authorization", authorization);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if method == "PUT" {
            b = b
                .header("content-length", body.len())
                .header("content-type", "application/octet-stream");
        }
        let req = b.body(Full::new(body))?;
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("sender was just set");
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut body_len = 0u64;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f?.into_data() {
                body_len += d.len() as u64;
            }
        }
        Ok(Resp { status, body_len })
    }
}

/// Creates the bucket (an existing bucket owned by us is fine).
pub async fn ensure_bucket(target: &Target) -> anyhow::Result<()> {
    let mut c = Conn::new(Arc::new(target.clone()));
    let r = c.request("PUT", None, Bytes::new(), EMPTY_SHA256).await?;
    match r.status {
        StatusCode::OK | StatusCode::CONFLICT => Ok(()),
        s => bail!(
            "create bucket {} on {}: HTTP {s}",
            target.bucket,
            target.name
        ),
    }
}

#[derive(Default)]
struct WorkerOut {
    ops: u64,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
}

impl WorkerOut {
    fn fail(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// Makes sure objects `prefix/<i>` for `i in 0..n` exist with the expected size, uploading the
/// missing ones with `conns` connections. Untimed.
async fn preload(
    target: &Arc<Target>,
    conns: usize,
    n: u64,
    size: usize,
    large: bool,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let next = next.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(target);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let key = if large {
                    format!("large/{i}")
                } else {
                    format!("small/{i}")
                };
                // A GET tells us the stored length (HEAD bodies are empty).
                let r = c
                    .request("GET", Some(&key), Bytes::new(), EMPTY_SHA256)
                    .await?;
                if r.status == StatusCode::OK && r.body_len == size as u64 {
                    continue;
                }
                let body = if large {
                    tokio::task::spawn_blocking(move || large_body(i, size)).await?
                } else {
                    small_body(i, size)
                };
                let sha = sha256_hex(&body);
                let r = c.request("PUT", Some(&key), body, &sha).await?;
                if r.status != StatusCode::OK {
                    bail!("preload PUT {key}: HTTP {}", r.status);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Runs `scenario` against `target` and returns its report.
pub async fn run(target: &Target, scenario: Scenario, p: &Params) -> anyhow::Result<Report> {
    let target = Arc::new(target.clone());
    if scenario.is_small() {
        run_small(target, scenario, p).await
    } else {
        run_large(target, scenario, p).await
    }
}

async fn run_small(target: Arc<Target>, scenario: Scenario, p: &Params) -> anyhow::Result<Report> {
    let put = scenario == Scenario::PutSmall;
    if !put {
        preload(&target, p.conns, p.get_keys, p.small_size, false).await?;
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + p.duration;
    let mut tasks = Vec::new();
    for _ in 0..p.conns.max(1) {
        let next = next.clone();
        let target = target.clone();
        let (ops_limit, size, keys) = (p.ops, p.small_size, p.get_keys.max(1));
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(target);
            let mut h = new_hist();
            let mut out = WorkerOut::default();
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if ops_limit.is_some_and(|o| n >= o) {
                    break;
                }
                let (key, body, sha) = if put {
                    let body = small_body(n, size);
                    let sha = sha256_hex(&body);
                    (format!("small/{n}"), body, sha)
                } else {
                    (
                        format!("small/{}", n % keys),
                        Bytes::new(),
                        EMPTY_SHA256.to_owned(),
                    )
                };
                let method = if put { "PUT" } else { "GET" };
                let t0 = Instant::now();
                let r = c.request(method, Some(&key), body, &sha).await;
                let us = t0.elapsed().as_micros() as u64;
                match r {
                    Ok(r) if r.status == StatusCode::OK && (put || r.body_len == size as u64) => {
                        out.ops += 1;
                        out.bytes += size as u64;
                        h.saturating_record(us.max(1));
                    }
                    Ok(r) => out.fail(format!(
                        "{method} {key}: HTTP {} len {}",
                        r.status, r.body_len
                    )),
                    Err(e) => out.fail(format!("{method} {key}: {e:#}")),
                }
            }
            (h, out)
        }));
    }
    collect(target, scenario, p.conns, p.small_size, start, tasks).await
}

async fn run_large(target: Arc<Target>, scenario: Scenario, p: &Params) -> anyhow::Result<Report> {
    let put = scenario == Scenario::PutLarge;
    let count = p.large_count.max(1);
    let size = p.large_size;
    // Work list: object indices (PUT: each once; GET: each `large_rounds` times).
    let work: Vec<u64> = if put {
        (0..count as u64).collect()
    } else {
        preload(&target, p.large_conns, count as u64, size, true).await?;
        (0..(count * p.large_rounds.max(1)) as u64)
            .map(|i| i % count as u64)
            .collect()
    };
    // PUT bodies and their hashes are prepared before the clock starts.
    let mut bodies: Vec<Option<(Bytes, String)>> = vec![None; count];
    if put {
        let mut gen = Vec::new();
        for i in 0..count as u64 {
            gen.push(tokio::task::spawn_blocking(move || {
                let b = large_body(i, size);
                let sha = sha256_hex(&b);
                (b, sha)
            }));
        }
        for (i, g) in gen.into_iter().enumerate() {
            bodies[i] = Some(g.await?);
        }
    }
    let bodies = Arc::new(bodies);
    let work = Arc::new(work);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..p.large_conns.max(1) {
        let (next, work, bodies, target) =
            (next.clone(), work.clone(), bodies.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(target);
            let mut h = new_hist();
            let mut out = WorkerOut::default();
            loop {
                let w = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&i) = work.get(w) else { break };
                let key = format!("large/{i}");
                let (method, body, sha) = match &bodies[i as usize] {
                    Some((b, sha)) if put => ("PUT", b.clone(), sha.clone()),
                    _ => ("GET", Bytes::new(), EMPTY_SHA256.to_owned()),
                };
                let t0 = Instant::now();
                let r = c.request(method, Some(&key), body, &sha).await;
                let us = t0.elapsed().as_micros() as u64;
                match r {
                    Ok(r) if r.status == StatusCode::OK && (put || r.body_len == size as u64) => {
                        out.ops += 1;
                        out.bytes += size as u64;
                        h.saturating_record(us.max(1));
                    }
                    Ok(r) => out.fail(format!(
                        "{method} {key}: HTTP {} len {}",
                        r.status, r.body_len
                    )),
                    Err(e) => out.fail(format!("{method} {key}: {e:#}")),
                }
            }
            (h, out)
        }));
    }
    collect(target, scenario, p.large_conns, size, start, tasks).await
}

async fn collect(
    target: Arc<Target>,
    scenario: Scenario,
    conns: usize,
    object_size: usize,
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, WorkerOut)>>,
) -> anyhow::Result<Report> {
    let mut hist = new_hist();
    let mut total = WorkerOut::default();
    for t in tasks {
        let (h, o) = t.await?;
        hist.add(&h).map_err(|e| anyhow!("histogram merge: {e}"))?;
        total.ops += o.ops;
        total.errors += o.errors;
        total.bytes += o.bytes;
        if total.first_error.is_none() {
            total.first_error = o.first_error;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Report {
        server: target.name.clone(),
        scenario,
        ops: total.ops,
        errors: total.errors,
        bytes: total.bytes,
        secs,
        conns,
        object_size,
        hist,
        first_error: total.first_error,
    })
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0)
}

/// Renders JSON report lines as markdown: one row per (scenario, server) and a summary with the
/// headline metric of the first server divided by the second (ops/s for small, MB/s for large).
pub fn table(jsonl: &str) -> anyhow::Result<String> {
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parse JSON lines")?;
    let mut servers: Vec<String> = Vec::new();
    for r in &rows {
        let s = r["server"].as_str().unwrap_or("?").to_owned();
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    let mut out = String::new();
    out.push_str(
        "| scenario | server | conns | ops | errors | ops/s | MB/s | p50 ms | p99 ms | max ms |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for sc in Scenario::ALL {
        for r in rows.iter().filter(|r| r["scenario"] == sc.name()) {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} |\n",
                sc.name(),
                r["server"].as_str().unwrap_or("?"),
                num(r, "conns"),
                num(r, "ops"),
                num(r, "errors"),
                num(r, "ops_per_s"),
                num(r, "mb_per_s"),
                num(r, "p50_us") / 1000.0,
                num(r, "p99_us") / 1000.0,
                num(r, "max_us") / 1000.0,
            ));
        }
    }
    if servers.len() >= 2 {
        let (a, b) = (&servers[0], &servers[1]);
        out.push_str(&format!(
            "\n| scenario | metric | {a} | {b} | {a} / {b} | target |\n|---|---|---:|---:|---:|---|\n"
        ));
        for sc in Scenario::ALL {
            let (metric, key, target) = match sc {
                Scenario::PutSmall => ("ops/s", "ops_per_s", ">= 1x"),
                Scenario::GetSmall => ("ops/s", "ops_per_s", ">= 2x"),
                Scenario::PutLarge => ("MB/s", "mb_per_s", "(none)"),
                Scenario::GetLarge => ("MB/s", "mb_per_s", ">= 2x"),
            };
            let find = |s: &str| {
                rows.iter()
                    .find(|r| r["scenario"] == sc.name() && r["server"] == s)
                    .map(|r| num(r, key))
            };
            if let (Some(x), Some(y)) = (find(a), find(b)) {
                let ratio = if y > 0.0 { x / y } else { f64::INFINITY };
                out.push_str(&format!(
                    "| {} | {metric} | {x:.1} | {y:.1} | {ratio:.2}x | {target} |\n",
                    sc.name()
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_distinct_and_deterministic() {
        assert_eq!(small_body(7, 4096), small_body(7, 4096));
        assert_ne!(small_body(7, 4096), small_body(8, 4096));
        let a = large_body(0, 4 << 20);
        let b = large_body(1, 4 << 20);
        // Every 1 MiB chunk differs between objects and within an object.
        for c in 0..4 {
            let r = c << 20..(c + 1) << 20;
            assert_ne!(a[r.clone()], b[r]);
        }
        assert_ne!(a[..1 << 20], a[1 << 20..2 << 20]);
    }

    #[test]
    fn table_has_ratio_row() {
        let l = "{\"server\":\"a\",\"scenario\":\"get-small\",\"ops_per_s\":300.0,\"mb_per_s\":1.0}\n\
                 {\"server\":\"b\",\"scenario\":\"get-small\",\"ops_per_s\":100.0,\"mb_per_s\":1.0}\n";
        let t = table(l).expect("table");
        assert!(
            t.contains("| get-small | ops/s | 300.0 | 100.0 | 3.00x | >= 2x |"),
            "{t}"
        );
        assert!(t.contains("| get-small | a |"), "{t}");
    }

    #[test]
    fn target_parsing() {
        let t = Target::new("x", "http://127.0.0.1:9000", "a", "b", "bk").expect("parse");
        assert_eq!(t.authority, "127.0.0.1:9000");
        assert!(Target::new("x", "https://127.0.0.1:9000", "a", "b", "bk").is_err());
    }
}
