//! The agent (thin I/O around [`crate::authz`] and [`crate::proto`]): one connection, one
//! call, decided on the node's compiled policy artifact before anything touches the engine
//! (through bollard). Streams (`logs`, `exec`) re-decide on every policy change and end within
//! the time the change takes to arrive when the caller loses the capability or the mesh.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, LogsOptions, RestartContainerOptions,
    StartContainerOptions, StatsOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tm_policy::{Artifact, Identity, Verb};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Mutex};

use crate::authz::{authorize, caller_name, check, identity_of, visible};
use crate::proto::{Call, Container, Frame, Reply, Stats};
use crate::{read_frame_async, read_line_async};

/// The node's policy artifact as it arrives (`None`: none yet, every call is refused).
pub type PolicyRx = watch::Receiver<Option<Arc<Artifact>>>;

/// One audit entry: a start/stop/restart, or an exec session (at its start without `end_unix`
/// and exit code, and at its end with both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The caller, e.g. `node gamma`.
    pub who: String,
    /// `docker.restart`, `docker.exec`, ...
    pub action: String,
    /// `NODE/CONTAINER`.
    pub target: String,
    /// The command (exec).
    pub command: Option<String>,
    /// When it started (Unix seconds).
    pub start_unix: u64,
    /// When it ended (exec end).
    pub end_unix: Option<u64>,
    /// The exec's exit code, or None.
    pub exit_code: Option<i64>,
    /// `ok`, or the error line.
    pub result: String,
}

impl AuditRecord {
    /// The entry's `detail` text: `cmd=... start=... end=... exit=... result=...`.
    pub fn detail(&self) -> String {
        let mut s = String::new();
        if let Some(c) = &self.command {
            s.push_str(&format!("cmd={c:?} "));
        }
        s.push_str(&format!("start={}", self.start_unix));
        if let Some(e) = self.end_unix {
            s.push_str(&format!(" end={e}"));
        }
        if let Some(c) = self.exit_code {
            s.push_str(&format!(" exit={c}"));
        }
        s.push_str(&format!(" result={}", self.result));
        s
    }
}

/// Where audit entries go (the coordinator's log; the daemon decides how).
pub type AuditSink = Arc<dyn Fn(AuditRecord) + Send + Sync>;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A TCP connection through the tunnel from this mesh address.
    Mesh(IpAddr),
    /// The node's own control socket (local root).
    Local,
}

/// Every engine call but the streams' body ends within this.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(15);
/// Stats requests in flight at once (each waits for the engine's collection tick).
const STATS_AT_ONCE: usize = 64;
/// The call line must arrive within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How an exec session runs.
struct ExecOpts {
    stdin: bool,
    tty: bool,
    cols: u16,
    rows: u16,
}

/// The agent of one node.
pub struct Agent {
    node: String,
    socket: PathBuf,
    docker: Mutex<Option<Docker>>,
    policy: PolicyRx,
    audit: AuditSink,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn engine_err(e: bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match &e {
        E::DockerResponseServerError { message, .. } => {
            format!("the Docker engine refused: {}", message.trim())
        }
        E::RequestTimeoutError => "the Docker engine did not answer in time".into(),
        E::HyperLegacyError { .. } | E::SocketNotFoundError(_) | E::IOError { .. } => {
            format!("the Docker engine is not reachable ({e})")
        }
        E::HyperResponseError { .. } => format!("the Docker engine closed the connection ({e})"),
        _ => format!("the Docker engine: {e}"),
    }
}

impl Agent {
    /// An agent for node `node` using the engine at `socket`.
    pub fn new(node: String, socket: PathBuf, policy: PolicyRx, audit: AuditSink) -> Agent {
        Agent {
            node,
            socket,
            docker: Mutex::new(None),
            policy,
            audit,
        }
    }

    /// The engine client (connected and its API version negotiated on first use).
    async fn docker(&self) -> Result<Docker, String> {
        let mut g = self.docker.lock().await;
        if let Some(d) = g.as_ref() {
            return Ok(d.clone());
        }
        let unreachable = |e: String| {
            format!(
                "the Docker engine is not reachable at {} on node {}: {e}",
                self.socket.display(),
                self.node
            )
        };
        if !self.socket.exists() {
            return Err(unreachable(
                "no such socket (is Docker installed and running?)".into(),
            ));
        }
        let path = self.socket.to_string_lossy().into_owned();
        let d = Docker::connect_with_unix(
            &path,
            ENGINE_TIMEOUT.as_secs(),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(e.to_string()))?;
        let d = tokio::time::timeout(ENGINE_TIMEOUT, d.negotiate_version())
            .await
            .map_err(|_| unreachable("no answer".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        *g = Some(d.clone());
        Ok(d)
    }

    async fn containers(&self, d: &Docker, all: bool) -> Result<Vec<Container>, String> {
        let l = tokio::time::timeout(
            ENGINE_TIMEOUT,
            d.list_containers(Some(ListContainersOptions {
                all,
                ..Default::default()
            })),
        )
        .await
        .map_err(|_| "the Docker engine did not answer in time".to_string())?
        .map_err(engine_err)?;
        Ok(l.into_iter()
            .map(|c| Container {
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                id: c.id.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
            })
            .collect())
    }

    /// Serves one connection from `caller` to its end.
    pub async fn serve_conn<S>(self: Arc<Self>, stream: S, caller: Caller)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        let line = match tokio::time::timeout(CALL_TIMEOUT, read_line_async(&mut r)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let _ = w
                    .write_all(&Reply::err(format!("bad request: {e}")).to_line())
                    .await;
                return;
            }
            Err(_) => {
                let _ = w
                    .write_all(&Reply::err("no request within 10 s").to_line())
                    .await;
                return;
            }
        };
        let reply = match Call::parse(&line) {
            Err(e) => Reply::err(e),
            Ok(call) => match self.run(call, caller, r, &mut w).await {
                Ok(None) => return,
                Ok(Some(rep)) => rep,
                Err(e) => Reply::err(e),
            },
        };
        let _ = w.write_all(&reply.to_line()).await;
        let _ = w.shutdown().await;
    }

    /// Runs a call: `Ok(Some(reply))` to send, `Ok(None)` when a stream was served.
    async fn run<R, W>(
        &self,
        call: Call,
        caller: Caller,
        r: BufReader<R>,
        w: &mut W,
    ) -> Result<Option<Reply>, String>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Unpin,
    {
        let art = self.policy.borrow().clone().ok_or_else(|| {
            format!(
                "node {} has no policy from its coordinator yet; Docker calls are refused",
                self.node
            )
        })?;
        let who = match caller {
            Caller::Local => Identity::LocalRoot,
            Caller::Mesh(ip) => identity_of(&art, ip)
                .ok_or_else(|| format!("refused: {ip} is not a mesh member"))?,
        };
        let node = self.node.as_str();
        let verb = call.verb();
        // Decide before the engine is touched when the call names a container that the caller
        // may not use whatever it resolves to (cheap refusals, no engine needed).
        let d = self.docker().await?;
        let list = self.containers(&d, true).await?;
        let ok = |v: serde_json::Value| {
            Ok(Some(Reply {
                ok: true,
                data: Some(v),
                error: None,
            }))
        };
        match call {
            Call::Ps { all } => {
                let l: Vec<Container> = list
                    .into_iter()
                    .filter(|c| all || c.state == "running")
                    .collect();
                let v = visible(&art, &who, node, &l, Verb::List)?;
                ok(serde_json::to_value(v).map_err(|e| e.to_string())?)
            }
            Call::Inspect { container } => {
                let c = authorize(&art, &who, node, &list, &container, verb)?;
                let i = tokio::time::timeout(
                    ENGINE_TIMEOUT,
                    d.inspect_container(&c.id, None::<InspectContainerOptions>),
                )
                .await
                .map_err(|_| "the Docker engine did not answer in time".to_string())?
                .map_err(engine_err)?;
                ok(serde_json::to_value(i).map_err(|e| e.to_string())?)
            }
            Call::Start { container } | Call::Stop { container } | Call::Restart { container } => {
                let c = authorize(&art, &who, node, &list, &container, verb)?.clone();
                let start = now_unix();
                let res = tokio::time::timeout(ENGINE_TIMEOUT, async {
                    match verb {
                        Verb::Start => {
                            d.start_container(&c.id, None::<StartContainerOptions>)
                                .await
                        }
                        Verb::Stop => {
                            d.stop_container(
                                &c.id,
                                Some(StopContainerOptions {
                                    t: Some(5),
                                    ..Default::default()
                                }),
                            )
                            .await
                        }
                        _ => {
                            d.restart_container(
                                &c.id,
                                Some(RestartContainerOptions {
                                    t: Some(5),
                                    ..Default::default()
                                }),
                            )
                            .await
                        }
                    }
                })
                .await
                .map_err(|_| "the Docker engine did not answer in time".to_string())
                .and_then(|r| r.map_err(engine_err));
                (self.audit)(AuditRecord {
                    who: caller_name(&art, &who),
                    action: format!("docker.{}", verb.name()),
                    target: format!("{node}/{}", c.name),
                    command: None,
                    start_unix: start,
                    end_unix: None,
                    exit_code: None,
                    result: res.as_ref().map_or_else(Clone::clone, |_| "ok".into()),
                });
                res?;
                ok(serde_json::Value::String(c.name))
            }
            Call::Stats { container, percent } => {
                let targets: Vec<Container> = match container {
                    Some(q) => vec![authorize(&art, &who, node, &list, &q, verb)?.clone()],
                    None => {
                        let running: Vec<Container> =
                            list.into_iter().filter(|c| c.state == "running").collect();
                        visible(&art, &who, node, &running, verb)?
                    }
                };
                // The engine answers a stats request at its next collection tick (about 1 s,
                // even one-shot after the first): ask for many containers at once.
                let mut out: Vec<Stats> = Vec::with_capacity(targets.len());
                for chunk in targets.chunks(STATS_AT_ONCE) {
                    let asks: Vec<_> = chunk.iter().map(|c| self.stats(&d, c, percent)).collect();
                    for r in futures_util::future::join_all(asks).await {
                        out.push(r?);
                    }
                }
                ok(serde_json::to_value(out).map_err(|e| e.to_string())?)
            }
            Call::Logs {
                container,
                follow,
                tail,
                since_secs,
            } => {
                let c = authorize(&art, &who, node, &list, &container, verb)?.clone();
                w.write_all(&Reply::ok(&c.name).to_line())
                    .await
                    .map_err(|e| e.to_string())?;
                let opts = LogsOptions {
                    follow,
                    stdout: true,
                    stderr: true,
                    tail: tail.map_or_else(|| "all".into(), |t| t.to_string()),
                    since: since_secs
                        .map(|s| now_unix().saturating_sub(s).min(i32::MAX as u64) as i32)
                        .unwrap_or(0),
                    ..Default::default()
                };
                let logs = d.logs(&c.id, Some(opts));
                let rev = self.revoked(who, c.name.clone(), verb);
                let mut last = pump(logs, r, w, rev).await;
                if last == Frame::End {
                    last = self.why_logs_ended(&d, &c).await;
                }
                finish(w, last).await;
                Ok(None)
            }
            Call::Exec {
                container,
                cmd,
                stdin,
                tty,
                cols,
                rows,
            } => {
                let c = authorize(&art, &who, node, &list, &container, verb)?.clone();
                let opts = ExecOpts {
                    stdin,
                    tty,
                    cols,
                    rows,
                };
                self.exec(&d, &art, who, c, cmd, opts, r, w).await?;
                Ok(None)
            }
        }
    }

    /// A log stream ended cleanly: all sent ([`Frame::End`]) if the container is not running
    /// (or was not followed), else the engine went away mid-stream (an error, never a silent
    /// success).
    async fn why_logs_ended(&self, d: &Docker, c: &Container) -> Frame {
        let i = tokio::time::timeout(
            Duration::from_secs(3),
            d.inspect_container(&c.id, None::<InspectContainerOptions>),
        )
        .await;
        match i {
            // The engine answers: the container stopped (or restarts), or everything was sent.
            Ok(Ok(_)) => Frame::End,
            Ok(Err(e)) => Frame::Error(format!(
                "the log stream of {} ended: {}",
                c.name,
                engine_err(e)
            )),
            Err(_) => Frame::Error(format!(
                "the log stream of {} ended and the Docker engine does not answer",
                c.name
            )),
        }
    }

    async fn stats(&self, d: &Docker, c: &Container, percent: bool) -> Result<Stats, String> {
        let mut st = d.stats(
            &c.id,
            Some(StatsOptions {
                stream: false,
                one_shot: !percent,
            }),
        );
        let s = tokio::time::timeout(ENGINE_TIMEOUT, st.next())
            .await
            .map_err(|_| "the Docker engine did not answer in time".to_string())?
            .ok_or_else(|| format!("no stats for {}", c.name))?
            .map_err(engine_err)?;
        let mut out = crate::stats::from_engine(&s, percent);
        out.name = c.name.clone();
        out.up = c.state == "running";
        Ok(out)
    }

    /// Resolves when `who` loses `verb` on `name` (or the node stops): the line to end with.
    fn revoked(
        &self,
        who: Identity,
        name: String,
        verb: Verb,
    ) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.policy.clone();
        let node = self.node.clone();
        async move {
            loop {
                if rx.changed().await.is_err() {
                    return format!("node {node} is stopping");
                }
                let art = rx.borrow_and_update().clone();
                if let Some(a) = art {
                    if let Err(e) = check(&a, &who, &node, &name, verb) {
                        tracing::info!(
                            container = %name,
                            verb = verb.name(),
                            caller = %who,
                            "docker session ended by the policy: {e}"
                        );
                        return format!("revoked: {e}");
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec<R, W>(
        &self,
        d: &Docker,
        art: &Artifact,
        who: Identity,
        c: Container,
        cmd: Vec<String>,
        ExecOpts {
            stdin,
            tty,
            cols,
            rows,
        }: ExecOpts,
        r: BufReader<R>,
        w: &mut W,
    ) -> Result<(), String>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Unpin,
    {
        let start = now_unix();
        let mut rec = AuditRecord {
            who: caller_name(art, &who),
            action: "docker.exec".into(),
            target: format!("{}/{}", self.node, c.name),
            command: Some(cmd.join(" ")),
            start_unix: start,
            end_unix: None,
            exit_code: None,
            result: "started".into(),
        };
        let created = tokio::time::timeout(
            ENGINE_TIMEOUT,
            d.create_exec(
                &c.id,
                CreateExecOptions {
                    cmd: Some(cmd.clone()),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    ..Default::default()
                },
            ),
        )
        .await
        .map_err(|_| "the Docker engine did not answer in time".to_string())
        .and_then(|r| r.map_err(engine_err));
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                rec.result = e.clone();
                (self.audit)(rec);
                return Err(e);
            }
        };
        let started = tokio::time::timeout(
            ENGINE_TIMEOUT,
            d.start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            ),
        )
        .await
        .map_err(|_| "the Docker engine did not answer in time".to_string())
        .and_then(|r| r.map_err(engine_err));
        let (mut output, mut input) = match started {
            Ok(StartExecResults::Attached { output, input }) => (output, input),
            Ok(StartExecResults::Detached) => return Err("the engine detached the exec".into()),
            Err(e) => {
                rec.result = e.clone();
                (self.audit)(rec);
                return Err(e);
            }
        };
        (self.audit)(rec.clone());
        if tty && cols > 0 && rows > 0 {
            let _ = d
                .resize_exec(
                    &created.id,
                    ResizeExecOptions {
                        width: cols,
                        height: rows,
                    },
                )
                .await;
        }
        w.write_all(&Reply::ok(&c.name).to_line())
            .await
            .map_err(|e| e.to_string())?;
        // The caller's frames, read by their own task (a frame read is not cancel-safe).
        let (tx, mut from_caller) = mpsc::channel::<Option<Frame>>(16);
        let reader = tokio::spawn(async move {
            let mut r = r;
            loop {
                match read_frame_async(&mut r).await {
                    Ok(Some(f)) => {
                        if tx.send(Some(f)).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = tx.send(None).await;
                        return;
                    }
                }
            }
        });
        let mut rev = std::pin::pin!(self.revoked(who, c.name.clone(), Verb::Exec));
        let mut stdin_open = true;
        let mut buf = Vec::new();
        let last: Frame = loop {
            buf.clear();
            tokio::select! {
                o = output.next() => match o {
                    Some(Ok(LogOutput::StdErr { message })) => Frame::data_chunks(true, &message, &mut buf),
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        Frame::data_chunks(false, &message, &mut buf)
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => break Frame::Error(engine_err(e)),
                    None => break self.exit_code(d, &created.id).await,
                },
                f = from_caller.recv() => match f.flatten() {
                    Some(Frame::Stdin(data)) if stdin && stdin_open => {
                        if input.write_all(&data).await.is_err() {
                            stdin_open = false;
                        }
                    }
                    Some(Frame::StdinEof) if stdin && stdin_open => {
                        stdin_open = false;
                        let _ = input.shutdown().await;
                    }
                    Some(Frame::Resize { cols, rows }) if tty => {
                        let _ = d
                            .resize_exec(&created.id, ResizeExecOptions { width: cols, height: rows })
                            .await;
                    }
                    Some(_) => {}
                    None => {
                        // The caller went away: end the session (the engine closes the TTY).
                        break Frame::Error("the caller closed the session".into());
                    }
                },
                msg = &mut rev => break Frame::Error(msg),
            }
            if !buf.is_empty() {
                tokio::select! {
                    res = w.write_all(&buf) => if res.is_err() {
                        break Frame::Error("the caller closed the session".into());
                    },
                    msg = &mut rev => break Frame::Error(msg),
                }
            }
        };
        reader.abort();
        drop(input);
        if !matches!(last, Frame::Exit(_)) {
            // Ended before its command (revoked, the caller gone, an engine error): the
            // command must not run on unwatched.
            if let Err(e) = end_exec(d, &created.id).await {
                tracing::warn!(container = %c.name, "docker exec: the command may still run: {e}");
            }
        }
        rec.end_unix = Some(now_unix());
        match &last {
            Frame::Exit(c) => {
                rec.exit_code = Some(*c);
                rec.result = "ok".into();
            }
            Frame::Error(e) => rec.result = e.clone(),
            _ => {}
        }
        (self.audit)(rec);
        finish(w, last).await;
        Ok(())
    }

    /// The exec's exit code once the engine has it (its output may end a moment earlier).
    async fn exit_code(&self, d: &Docker, id: &str) -> Frame {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match d.inspect_exec(id).await {
                Ok(i) if i.running != Some(true) => {
                    return match i.exit_code {
                        Some(c) => Frame::Exit(c),
                        None => Frame::Error("the engine reported no exit code".into()),
                    }
                }
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(_) => {
                    return Frame::Error("the command's output ended but it still runs".into())
                }
                Err(e) => return Frame::Error(engine_err(e)),
            }
        }
    }
}

/// Ends an exec's command and every process it started, when the session ends first. The
/// engine has no call for it (an exec cannot be stopped through its API), so the agent
/// signals them itself: the exec's process (the host PID the engine reports, held by a pidfd
/// opened before the engine confirms that PID still runs the exec, so a reused PID is never
/// hit) and its descendants (from `/proc`) are stopped, then killed. This needs the engine on
/// this machine and the agent allowed to signal its processes (root, as the daemon runs).
async fn end_exec(d: &Docker, id: &str) -> Result<(), String> {
    let inspect = |d: &Docker| {
        let d = d.clone();
        let id = id.to_owned();
        async move {
            tokio::time::timeout(ENGINE_TIMEOUT, d.inspect_exec(&id))
                .await
                .map_err(|_| "the Docker engine did not answer in time".to_string())?
                .map_err(engine_err)
        }
    };
    let i = inspect(d).await?;
    if i.running != Some(true) {
        return Ok(());
    }
    let pid = i
        .pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
        .ok_or("the engine reported no process for the exec")?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("process {pid:?}: {e}"))?;
    let again = inspect(d).await?;
    if again.running != Some(true) || again.pid != i.pid {
        return Ok(());
    }
    // Stopped first, so that none forks a new one while the tree is collected.
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::STOP)
        .map_err(|e| format!("stopping process {pid:?}: {e}"))?;
    let tree = descendants(pid);
    for p in &tree {
        let _ = rustix::process::kill_process(*p, rustix::process::Signal::STOP);
    }
    let tree = descendants(pid);
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)
        .map_err(|e| format!("killing process {pid:?}: {e}"))?;
    for p in tree {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while inspect(d).await?.running == Some(true) {
        if tokio::time::Instant::now() >= deadline {
            return Err("the exec still runs 2 s after it was killed".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The descendants of `pid` (children of each of its threads, recursively), from `/proc`.
fn descendants(pid: rustix::process::Pid) -> Vec<rustix::process::Pid> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", p.as_raw_nonzero())) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(kids) = std::fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            for k in kids.split_whitespace() {
                if let Some(k) = k.parse().ok().and_then(rustix::process::Pid::from_raw) {
                    if !out.contains(&k) && out.len() < 4096 {
                        out.push(k);
                        todo.push(k);
                    }
                }
            }
        }
    }
    out
}

/// Sends a stream's last frame and closes, giving a caller that does not read 2 s.
async fn finish<W: AsyncWrite + Unpin>(w: &mut W, last: Frame) {
    let mut b = Vec::new();
    last.encode(&mut b);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = w.write_all(&b).await;
        let _ = w.shutdown().await;
    })
    .await;
}

/// Copies a log stream to the caller as frames until it ends, the caller goes away or the
/// capability is revoked; returns the last frame to send. Each write is awaited before the
/// next engine read: a slow caller slows the engine stream instead of filling memory.
async fn pump<S, R, W>(
    logs: S,
    r: BufReader<R>,
    w: &mut W,
    rev: impl std::future::Future<Output = String>,
) -> Frame
where
    S: futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>>,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut logs = std::pin::pin!(logs);
    let mut rev = std::pin::pin!(rev);
    let mut r = r;
    let mut probe = [0u8; 64];
    let mut buf = Vec::new();
    loop {
        buf.clear();
        tokio::select! {
            m = logs.next() => match m {
                Some(Ok(LogOutput::StdErr { message })) => Frame::data_chunks(true, &message, &mut buf),
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    Frame::data_chunks(false, &message, &mut buf)
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => return Frame::Error(engine_err(e)),
                None => return Frame::End,
            },
            n = tokio::io::AsyncReadExt::read(&mut r, &mut probe) => {
                // The caller sends nothing on a log stream: EOF or bytes both end it.
                let _ = n;
                return Frame::Error("the caller closed the stream".into());
            }
            msg = &mut rev => return Frame::Error(msg),
        }
        tokio::select! {
            res = w.write_all(&buf) => if res.is_err() {
                return Frame::Error("the caller closed the stream".into());
            },
            msg = &mut rev => return Frame::Error(msg),
        }
    }
}
