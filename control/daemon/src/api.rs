//! The local control socket (`<data_dir>/control.sock`, mode 0600): one JSON request line in,
//! one JSON response line out. Requests are handed to the node task; only root (the socket's
//! owner) can connect.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::docker::DockerHub;
use tm_api::{Command, Request, Response, API_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

pub struct ApiRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Response>,
}

/// Removes the socket file when dropped.
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the socket (replacing a stale one) and serves it until the node task goes away.
pub fn serve(
    path: &Path,
    to_node: mpsc::Sender<ApiRequest>,
    docker: Arc<DockerHub>,
) -> Result<SocketGuard> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another node is already running with control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let to_node = to_node.clone();
            let docker = docker.clone();
            tokio::spawn(async move {
                let mut line = String::new();
                // A request is one line; `filter load` carries a policy file (up to 1 MiB,
                // JSON-escaped), everything else is small.
                let mut r = BufReader::new(stream);
                let resp = match (&mut r).take(4 << 20).read_line(&mut line).await {
                    Ok(_) => match docker_dial(&line) {
                        // The caller waits for the dial's answer before it says more.
                        Some(node) if r.buffer().is_empty() => {
                            docker.dial(node, r.into_inner()).await;
                            return;
                        }
                        Some(_) => Response::err("bad request: data after docker_dial"),
                        None => handle(&line, &to_node).await,
                    },
                    Err(e) => Response::err(format!("reading request: {e}")),
                };
                let mut out = serde_json::to_string(&resp)
                    .unwrap_or_else(|_| r#"{"ok":false,"error":"encode"}"#.into());
                out.push('\n');
                let _ = r.get_mut().write_all(out.as_bytes()).await;
            });
        }
    });
    Ok(SocketGuard(path.to_path_buf()))
}

/// The node of a `docker_dial` request (which takes over the connection).
fn docker_dial(line: &str) -> Option<String> {
    match serde_json::from_str::<Request>(line) {
        Ok(Request {
            version: API_VERSION,
            command: Command::DockerDial { node },
        }) => Some(node),
        _ => None,
    }
}

async fn handle(line: &str, to_node: &mpsc::Sender<ApiRequest>) -> Response {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Response::err(format!("bad request: {e}")),
    };
    if req.version != API_VERSION {
        return Response::err(format!(
            "API version {} not supported (node speaks {API_VERSION}); use a matching tmctl",
            req.version
        ));
    }
    let (tx, rx) = oneshot::channel();
    if to_node
        .send(ApiRequest {
            command: req.command,
            reply: tx,
        })
        .await
        .is_err()
    {
        return Response::err("node is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| Response::err("node is shutting down"))
}

use tokio::io::AsyncReadExt as _;
