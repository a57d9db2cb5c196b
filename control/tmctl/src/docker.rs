//! `docker ps|inspect|start|stop|restart|logs|stats|exec`: containers of every node, through
//! the local node (`DockerDial` on its control socket) to each node's agent, which decides
//! every call by the mesh policy for this node's identity.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tm_api::{Command, PeerInfo, Request, Response, Status, API_VERSION};
use tm_docker::proto::{self, split_target, Call, Container, Frame, Reply, Stats};
use tm_docker::view::{self, NodeAnswer};

use crate::{call, Target};

/// How long `ps`/`stats` wait for each node.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any non-stream call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Subcommand)]
pub enum DockerCommand {
    /// Every node's containers (NODE column); nodes that do not answer are listed as
    /// unavailable.
    Ps {
        /// Stopped containers too.
        #[arg(long, short)]
        all: bool,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// `docker inspect` of NODE/CONTAINER (JSON).
    Inspect { target: String },
    /// Start NODE/CONTAINER.
    Start { target: String },
    /// Stop NODE/CONTAINER.
    Stop { target: String },
    /// Restart NODE/CONTAINER.
    Restart { target: String },
    /// Logs of NODE/CONTAINER.
    Logs(LogsArgs),
    /// One-shot stats (CPU, memory, network, block I/O) of NODE/CONTAINER, or of every
    /// running container of every node.
    Stats {
        target: Option<String>,
        /// Only this node (without a target).
        #[arg(long, conflicts_with = "target")]
        node: Option<String>,
        /// Machine-readable (CPU seconds, memory bytes, up); no CPU % sample (cheap to poll).
        #[arg(long)]
        json: bool,
    },
    /// Run a command in NODE/CONTAINER (`-it` for an interactive TTY); exits with its code.
    Exec(ExecArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    pub target: String,
    /// Keep printing new lines.
    #[arg(long, short)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Only lines of the last DURATION (e.g. 10m).
    #[arg(long, value_parser = tm_api::parse_duration)]
    pub since: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Send this terminal's input.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a TTY (raw mode here, size follows this terminal).
    #[arg(short, long)]
    pub tty: bool,
    pub target: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// A connection to one node's agent, after the call line was sent and its reply read.
struct Session {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

/// Connects to `node`'s agent through the local node and makes `c`; returns the reply's data
/// and the connection (for streams).
fn open(target: &Target, node: &str, c: &Call, wait: Duration) -> Result<(Reply, Session)> {
    let path = target.path()?;
    let s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the node at {} (is `tunnelmesh up` running? use --socket)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(wait))?;
    let mut w = s.try_clone()?;
    let mut line = serde_json::to_vec(&Request {
        version: API_VERSION,
        command: Command::DockerDial {
            node: node.to_owned(),
        },
    })?;
    line.push(b'\n');
    w.write_all(&line)?;
    let mut r = BufReader::new(s);
    let l = proto::read_line(&mut r).map_err(|e| timeout_msg(e, node))?;
    let dial: Response =
        serde_json::from_slice(&l).context("the node's answer is not valid JSON")?;
    if !dial.ok {
        bail!(
            "{}",
            dial.error.unwrap_or_else(|| "docker dial failed".into())
        );
    }
    w.write_all(&c.to_line())?;
    let l = proto::read_line(&mut r).map_err(|e| timeout_msg(e, node))?;
    let reply: Reply = serde_json::from_slice(&l)
        .with_context(|| format!("node {node}: the agent's answer is not valid JSON"))?;
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "refused".into()));
    }
    Ok((reply, Session { r, w }))
}

fn timeout_msg(e: std::io::Error, node: &str) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            anyhow::anyhow!("node {node} did not answer in time")
        }
        _ => anyhow::anyhow!("node {node}: {e}"),
    }
}

fn data<T: serde::de::DeserializeOwned>(r: Reply) -> Result<T> {
    serde_json::from_value(r.data.unwrap_or_default()).context("the agent's answer")
}

/// The nodes to fan out to: this node and the peers whose netmap entry declares a Docker
/// agent (or just `only`).
fn nodes(target: &Target, only: Option<&String>) -> Result<Vec<String>> {
    if let Some(n) = only {
        return Ok(vec![n.clone()]);
    }
    let me: Status = serde_json::from_value(call(target, Command::Status)?)?;
    let peers: Vec<PeerInfo> = serde_json::from_value(call(target, Command::Peers)?)?;
    let mut v = vec![me.name];
    v.extend(peers.into_iter().filter(|p| p.docker).map(|p| p.name));
    v.sort();
    v.dedup();
    Ok(v)
}

/// Calls every node in parallel; a node that does not answer within [`NODE_TIMEOUT`] is
/// unavailable.
fn fan_out<T: serde::de::DeserializeOwned + Send + 'static>(
    target: &Target,
    nodes: Vec<String>,
    c: &Call,
) -> Vec<(String, NodeAnswer<Vec<T>>)> {
    let (tx, rx) = mpsc::channel();
    for n in &nodes {
        let (tx, t, c, n) = (tx.clone(), target.clone(), c.clone(), n.clone());
        std::thread::spawn(move || {
            let a = match open(&t, &n, &c, NODE_TIMEOUT).and_then(|(r, _)| data::<Vec<T>>(r)) {
                Ok(v) => NodeAnswer::Ok(v),
                Err(e) => NodeAnswer::Unavailable(crate::error_line(&e)),
            };
            let _ = tx.send((n, a));
        });
    }
    drop(tx);
    let deadline = Instant::now() + NODE_TIMEOUT + Duration::from_millis(500);
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(x) => out.push(x),
            Err(_) => break,
        }
    }
    for n in nodes {
        if !out.iter().any(|(m, _)| *m == n) {
            let why = format!("no answer within {}s", NODE_TIMEOUT.as_secs());
            out.push((n, NodeAnswer::Unavailable(why)));
        }
    }
    out
}

/// With `--node`, that node's failure is the command's.
fn only_node_answered<T>(only: Option<&String>, answers: &[(String, NodeAnswer<T>)]) -> Result<()> {
    match (only, answers) {
        (Some(_), [(_, NodeAnswer::Unavailable(e))]) => bail!("{e}"),
        _ => Ok(()),
    }
}

/// Runs a `docker` command.
pub fn docker(target: &Target, cmd: &DockerCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        DockerCommand::Ps { all, node, json } => {
            let nodes = nodes(target, node.as_ref())?;
            let answers = fan_out::<Container>(target, nodes, &Call::Ps { all: *all });
            only_node_answered(node.as_ref(), &answers)?;
            let v = view::merge_ps(answers);
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                write!(out, "{}", view::ps_table(&v))?;
            }
        }
        DockerCommand::Inspect { target: t } => {
            let (node, c) = split_target(t).map_err(anyhow::Error::msg)?;
            let (r, _) = open(
                target,
                node,
                &Call::Inspect {
                    container: c.into(),
                },
                CALL_TIMEOUT,
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(&r.data)?)?;
        }
        DockerCommand::Start { target: t }
        | DockerCommand::Stop { target: t }
        | DockerCommand::Restart { target: t } => {
            let (node, c) = split_target(t).map_err(anyhow::Error::msg)?;
            let container = c.to_owned();
            let (call, done) = match cmd {
                DockerCommand::Start { .. } => (Call::Start { container }, "started"),
                DockerCommand::Stop { .. } => (Call::Stop { container }, "stopped"),
                _ => (Call::Restart { container }, "restarted"),
            };
            let (r, _) = open(target, node, &call, CALL_TIMEOUT)?;
            let name: String = data(r)?;
            writeln!(out, "{done} {node}/{name}")?;
        }
        DockerCommand::Logs(a) => {
            let (node, c) = split_target(&a.target).map_err(anyhow::Error::msg)?;
            let call = Call::Logs {
                container: c.into(),
                follow: a.follow,
                tail: a.tail,
                since_secs: a.since,
            };
            let (_, mut s) = open(target, node, &call, CALL_TIMEOUT)?;
            // A followed stream may be silent for long.
            s.r.get_ref().set_read_timeout(None)?;
            drop(s.w);
            copy_frames(&mut s.r, node)?;
        }
        DockerCommand::Stats {
            target: t,
            node,
            json,
        } => {
            let answers = match t {
                Some(t) => {
                    let (node, c) = split_target(t).map_err(anyhow::Error::msg)?;
                    let call = Call::Stats {
                        container: Some(c.into()),
                        percent: !*json,
                    };
                    let (r, _) = open(target, node, &call, CALL_TIMEOUT)?;
                    vec![(node.to_owned(), NodeAnswer::Ok(data::<Vec<Stats>>(r)?))]
                }
                None => {
                    let nodes = nodes(target, node.as_ref())?;
                    let call = Call::Stats {
                        container: None,
                        percent: !*json,
                    };
                    let answers = fan_out::<Stats>(target, nodes, &call);
                    only_node_answered(node.as_ref(), &answers)?;
                    answers
                }
            };
            let v = view::merge_stats(answers);
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                write!(out, "{}", view::stats_table(&v))?;
            }
        }
        DockerCommand::Exec(a) => {
            out.flush()?;
            let code = exec(target, a)?;
            // A code outside 0..=255 (never 0) is reported as 255.
            std::process::exit(if (0..=255).contains(&code) {
                code as i32
            } else {
                255
            });
        }
    }
    Ok(())
}

/// Prints output frames until the stream's last frame.
fn copy_frames(r: &mut impl Read, node: &str) -> Result<Option<i64>> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        match proto::read_frame(r).map_err(|e| anyhow::anyhow!("node {node}: {e}"))? {
            Some(Frame::Stdout(d)) => {
                stdout.write_all(&d)?;
                stdout.flush()?;
            }
            Some(Frame::Stderr(d)) => {
                stderr.write_all(&d)?;
            }
            Some(Frame::End) => return Ok(None),
            Some(Frame::Exit(c)) => return Ok(Some(c)),
            Some(Frame::Error(e)) => bail!("{e}"),
            Some(_) => {}
            None => bail!("node {node}: the stream ended without its last frame"),
        }
    }
}

/// Restores the terminal's settings when dropped.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let old = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = old.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode(old))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

fn winsize() -> Option<(u16, u16)> {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|w| (w.ws_col, w.ws_row))
        .filter(|(c, r)| *c > 0 && *r > 0)
}

/// `exec`: returns the command's exit code.
fn exec(target: &Target, a: &ExecArgs) -> Result<i64> {
    let (node, c) = split_target(&a.target).map_err(anyhow::Error::msg)?;
    let tty = a.tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let (cols, rows) = if tty {
        winsize().unwrap_or((80, 24))
    } else {
        (0, 0)
    };
    let call = Call::Exec {
        container: c.into(),
        cmd: a.cmd.clone(),
        stdin: a.interactive,
        tty,
        cols,
        rows,
    };
    let (_, mut s) = open(target, node, &call, CALL_TIMEOUT)?;
    s.r.get_ref().set_read_timeout(None)?;
    let w = Arc::new(Mutex::new(s.w));
    let send = {
        let w = w.clone();
        move |f: Frame| -> bool {
            let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
            proto::write_frame(&mut *g, &f).is_ok()
        }
    };
    let raw = if tty { RawMode::enter() } else { None };
    if a.interactive {
        let send = send.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        send(Frame::StdinEof);
                        return;
                    }
                    Ok(n) => {
                        if !send(Frame::Stdin(buf[..n].to_vec())) {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let send = send.clone();
        std::thread::spawn(move || {
            let mut last = winsize();
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let now = winsize();
                if now != last {
                    if let Some((cols, rows)) = now {
                        if !send(Frame::Resize { cols, rows }) {
                            return;
                        }
                    }
                    last = now;
                }
            }
        });
    }
    let res = copy_frames(&mut s.r, node);
    drop(raw);
    match res? {
        Some(code) => Ok(code),
        None => bail!("node {node}: the exec ended without an exit code"),
    }
}
