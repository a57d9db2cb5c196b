//! The agent's wire protocol (sans-IO): one JSON [`Call`] line from the caller, one JSON
//! [`Reply`] line from the agent, then, for `logs` and `exec` only, binary [`Frame`]s.
//!
//! ```text
//! caller -> agent   {"verb":"restart","container":"web"}\n
//! agent  -> caller  {"ok":true,"data":...}\n            (or {"ok":false,"error":"..."})
//! then (logs, exec) frames both ways:  kind u8 | length u32 BE | payload (<= MAX_FRAME)
//! ```
//! A stream ends with [`Frame::End`] (logs drained), [`Frame::Exit`] (exec finished) or
//! [`Frame::Error`] (engine gone, capability revoked, ...), then the agent closes.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read, Write};
use tm_policy::Verb;

/// The TCP port of the agent on every node's mesh address.
pub const AGENT_PORT: u16 = tm_policy::DOCKER_AGENT_PORT;

/// What a dial to a node without an agent says (`node NAME runs no Docker agent (...)`); the
/// fan-out lists such nodes apart from the unavailable ones.
pub const NO_AGENT: &str = "runs no Docker agent";

/// Largest payload of one frame.
pub const MAX_FRAME: usize = 64 << 10;

/// Largest call or reply line (a reply carries `inspect` JSON or a node's container list).
pub const MAX_LINE: usize = 4 << 20;

/// One call to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Call {
    /// The containers the caller may list: `Vec<`[`Container`]`>`.
    Ps {
        /// Stopped ones too.
        #[serde(default)]
        all: bool,
    },
    /// `docker inspect` JSON.
    Inspect {
        /// Name (or unambiguous ID prefix).
        container: String,
    },
    /// Start; data: the container's name.
    Start {
        /// Name (or unambiguous ID prefix).
        container: String,
    },
    /// Stop; data: the container's name.
    Stop {
        /// Name (or unambiguous ID prefix).
        container: String,
    },
    /// Restart; data: the container's name.
    Restart {
        /// Name (or unambiguous ID prefix).
        container: String,
    },
    /// Logs as frames (stdout/stderr), ending with [`Frame::End`] unless following.
    Logs {
        /// Name (or unambiguous ID prefix).
        container: String,
        /// Keep streaming new lines.
        #[serde(default)]
        follow: bool,
        /// Only the last N lines.
        #[serde(default)]
        tail: Option<u64>,
        /// Only lines of the last N seconds.
        #[serde(default)]
        since_secs: Option<u64>,
    },
    /// One-shot stats: `Vec<`[`Stats`]`>` of one container, or (None) of every running one the
    /// caller may see stats of.
    Stats {
        /// Name (or unambiguous ID prefix); None: all.
        #[serde(default)]
        container: Option<String>,
        /// Also sample CPU % (the engine waits about a second for a second sample).
        #[serde(default)]
        percent: bool,
    },
    /// Run a command; then frames both ways, ending with [`Frame::Exit`].
    Exec {
        /// Name (or unambiguous ID prefix).
        container: String,
        /// The command and its arguments.
        cmd: Vec<String>,
        /// Attach the caller's input (`-i`); without it the command's stdin is empty.
        #[serde(default)]
        stdin: bool,
        /// Allocate a TTY.
        #[serde(default)]
        tty: bool,
        /// Initial TTY size.
        #[serde(default)]
        cols: u16,
        /// Initial TTY size.
        #[serde(default)]
        rows: u16,
    },
}

impl Call {
    /// The policy verb this call needs.
    pub fn verb(&self) -> Verb {
        match self {
            Call::Ps { .. } => Verb::List,
            Call::Inspect { .. } => Verb::Inspect,
            Call::Start { .. } => Verb::Start,
            Call::Stop { .. } => Verb::Stop,
            Call::Restart { .. } => Verb::Restart,
            Call::Logs { .. } => Verb::Logs,
            Call::Stats { .. } => Verb::Stats,
            Call::Exec { .. } => Verb::Exec,
        }
    }

    /// The container named, if the call names one.
    pub fn container(&self) -> Option<&str> {
        match self {
            Call::Ps { .. } => None,
            Call::Stats { container, .. } => container.as_deref(),
            Call::Inspect { container }
            | Call::Start { container }
            | Call::Stop { container }
            | Call::Restart { container }
            | Call::Logs { container, .. }
            | Call::Exec { container, .. } => Some(container),
        }
    }

    /// Whether frames follow an ok reply.
    pub fn streams(&self) -> bool {
        matches!(self, Call::Logs { .. } | Call::Exec { .. })
    }

    /// Parses a call line, refusing what no agent would run.
    pub fn parse(line: &[u8]) -> Result<Call, String> {
        let c: Call = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
        if let Some(n) = c.container() {
            if n.is_empty() || n.len() > 256 || n.contains('/') || n.contains(char::is_control) {
                return Err(format!("bad request: {n:?} is not a container name"));
            }
        }
        if let Call::Exec { cmd, .. } = &c {
            if cmd.is_empty() {
                return Err("bad request: exec needs a command".into());
            }
        }
        Ok(c)
    }

    /// The call as one line (with its `\n`).
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("calls serialize");
        v.push(b'\n');
        v
    }
}

/// The agent's answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the call was done (streams: started).
    pub ok: bool,
    /// What it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Why not, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// An ok reply carrying `v`.
    pub fn ok<T: Serialize>(v: &T) -> Reply {
        match serde_json::to_value(v) {
            Ok(d) => Reply {
                ok: true,
                data: Some(d),
                error: None,
            },
            Err(e) => Reply::err(format!("internal: {e}")),
        }
    }

    /// A refusal.
    pub fn err(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            data: None,
            error: Some(e.into()),
        }
    }

    /// The reply as one line (with its `\n`).
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("replies serialize");
        v.push(b'\n');
        v
    }
}

/// A container as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Name without the leading `/`.
    pub name: String,
    /// Full ID.
    pub id: String,
    /// Image.
    pub image: String,
    /// `running`, `exited`, ...
    pub state: String,
    /// `Up 3 minutes`, ...
    pub status: String,
}

/// One-shot stats of a container (what `stats --json` polls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    /// Node (filled in by the caller's fan-out).
    #[serde(default)]
    pub node: String,
    /// Name.
    pub name: String,
    /// Running.
    pub up: bool,
    /// CPU time used since start, seconds.
    pub cpu_seconds: f64,
    /// CPU % over the engine's sampling interval (when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0: none reported).
    pub memory_limit: u64,
    /// Network bytes received / sent (all interfaces).
    pub net_rx: u64,
    /// Sent.
    pub net_tx: u64,
    /// Block I/O bytes read / written.
    pub block_read: u64,
    /// Written.
    pub block_write: u64,
}

/// A stream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Output (or the TTY's output).
    Stdout(Vec<u8>),
    /// Error output.
    Stderr(Vec<u8>),
    /// Caller input (exec).
    Stdin(Vec<u8>),
    /// The caller's input ended (exec).
    StdinEof,
    /// The caller's terminal changed size (exec with a TTY).
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The command ended with this code (exec); last frame.
    Exit(i64),
    /// The stream was ended by the agent, one line why; last frame.
    Error(String),
    /// The logs are all sent; last frame.
    End,
}

const K_STDOUT: u8 = 1;
const K_STDERR: u8 = 2;
const K_STDIN: u8 = 3;
const K_STDIN_EOF: u8 = 4;
const K_RESIZE: u8 = 5;
const K_EXIT: u8 = 6;
const K_ERROR: u8 = 7;
const K_END: u8 = 8;

/// A frame header that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Payload over [`MAX_FRAME`].
    #[error("frame of {0} bytes (at most {MAX_FRAME})")]
    TooLong(u32),
    /// A fixed-size payload of the wrong size, or text that is not UTF-8.
    #[error("malformed frame of kind {0}")]
    Malformed(u8),
}

impl Frame {
    /// Appends the frame's encoding to `out`. Data frames longer than [`MAX_FRAME`] must be
    /// split by the caller ([`Frame::data_chunks`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (k, p): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdout(d) => (K_STDOUT, d.into()),
            Frame::Stderr(d) => (K_STDERR, d.into()),
            Frame::Stdin(d) => (K_STDIN, d.into()),
            Frame::StdinEof => (K_STDIN_EOF, (&[][..]).into()),
            Frame::Resize { cols, rows } => {
                let mut b = cols.to_be_bytes().to_vec();
                b.extend_from_slice(&rows.to_be_bytes());
                (K_RESIZE, b.into())
            }
            Frame::Exit(c) => (K_EXIT, c.to_be_bytes().to_vec().into()),
            Frame::Error(t) => {
                let t = t.as_bytes();
                (K_ERROR, t[..t.len().min(MAX_FRAME)].to_vec().into())
            }
            Frame::End => (K_END, (&[][..]).into()),
        };
        debug_assert!(p.len() <= MAX_FRAME);
        out.push(k);
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(&p);
    }

    /// Encodes output bytes as one or more frames of kind `stderr` or stdout.
    pub fn data_chunks(stderr: bool, data: &[u8], out: &mut Vec<u8>) {
        for c in data.chunks(MAX_FRAME) {
            let f = if stderr {
                Frame::Stderr(c.to_vec())
            } else {
                Frame::Stdout(c.to_vec())
            };
            f.encode(out);
        }
    }

    /// Checks a header: (kind, payload length).
    pub fn header(h: [u8; 5]) -> Result<(u8, usize), FrameError> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if !(K_STDOUT..=K_END).contains(&h[0]) {
            return Err(FrameError::Kind(h[0]));
        }
        if len as usize > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        Ok((h[0], len as usize))
    }

    /// Builds a frame from a checked header's kind and its payload.
    pub fn from_parts(kind: u8, p: Vec<u8>) -> Result<Frame, FrameError> {
        Ok(match kind {
            K_STDOUT => Frame::Stdout(p),
            K_STDERR => Frame::Stderr(p),
            K_STDIN => Frame::Stdin(p),
            K_STDIN_EOF if p.is_empty() => Frame::StdinEof,
            K_RESIZE if p.len() == 4 => Frame::Resize {
                cols: u16::from_be_bytes([p[0], p[1]]),
                rows: u16::from_be_bytes([p[2], p[3]]),
            },
            K_EXIT if p.len() == 8 => {
                Frame::Exit(i64::from_be_bytes(p.try_into().expect("8 bytes")))
            }
            K_ERROR => Frame::Error(String::from_utf8(p).map_err(|_| FrameError::Malformed(kind))?),
            K_END if p.is_empty() => Frame::End,
            K_STDIN_EOF | K_RESIZE | K_EXIT | K_END => return Err(FrameError::Malformed(kind)),
            _ => return Err(FrameError::Kind(kind)),
        })
    }

    /// Whether this frame ends a stream.
    pub fn is_last(&self) -> bool {
        matches!(self, Frame::Exit(_) | Frame::Error(_) | Frame::End)
    }
}

/// Reads one frame from a blocking reader; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut h[1..])?;
    let (k, len) = Frame::header(h).map_err(invalid)?;
    let mut p = vec![0u8; len];
    r.read_exact(&mut p)?;
    Frame::from_parts(k, p).map(Some).map_err(invalid)
}

/// Writes one frame to a blocking writer.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    let mut b = Vec::new();
    f.encode(&mut b);
    w.write_all(&b)
}

/// Reads one line of at most [`MAX_LINE`] bytes (without its `\n`) from a blocking reader.
pub fn read_line(r: &mut impl io::BufRead) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut v)?;
    if v.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            if v.len() > MAX_LINE {
                "line too long"
            } else {
                "the connection closed before a whole line"
            },
        ));
    }
    v.pop();
    Ok(v)
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Splits `NODE/CONTAINER` (the CLI's form).
pub fn split_target(s: &str) -> Result<(&str, &str), String> {
    match s.split_once('/') {
        Some((n, c)) if !n.is_empty() && !c.is_empty() && !c.contains('/') => Ok((n, c)),
        _ => Err(format!("{s:?}: give NODE/CONTAINER (e.g. beta/web)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let all = [
            Frame::Stdout(b"hello\n".to_vec()),
            Frame::Stderr(vec![]),
            Frame::Stdin(vec![0, 255]),
            Frame::StdinEof,
            Frame::Resize { cols: 80, rows: 24 },
            Frame::Exit(-3),
            Frame::Exit(3),
            Frame::Error("revoked".into()),
            Frame::End,
        ];
        let mut b = Vec::new();
        for f in &all {
            f.encode(&mut b);
        }
        let mut r = &b[..];
        for f in &all {
            assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(Frame::header([9, 0, 0, 0, 0]), Err(FrameError::Kind(9)));
        assert_eq!(Frame::header([0, 0, 0, 0, 0]), Err(FrameError::Kind(0)));
        assert_eq!(
            Frame::header([1, 0, 1, 0, 1]),
            Err(FrameError::TooLong(65537))
        );
        assert_eq!(
            Frame::from_parts(K_EXIT, vec![1, 2]),
            Err(FrameError::Malformed(K_EXIT))
        );
        assert_eq!(
            Frame::from_parts(K_ERROR, vec![0xff]),
            Err(FrameError::Malformed(K_ERROR))
        );
        // A truncated frame is an error, not a clean end.
        let mut b = Vec::new();
        Frame::Stdout(b"abc".to_vec()).encode(&mut b);
        b.pop();
        assert!(read_frame(&mut &b[..]).is_err());
    }

    #[test]
    fn big_output_is_split() {
        let data = vec![7u8; MAX_FRAME * 2 + 1];
        let mut b = Vec::new();
        Frame::data_chunks(false, &data, &mut b);
        let mut r = &b[..];
        let mut got = Vec::new();
        while let Some(Frame::Stdout(d)) = read_frame(&mut r).unwrap() {
            assert!(d.len() <= MAX_FRAME);
            got.extend(d);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn calls_parse_and_refuse() {
        let c = Call::Logs {
            container: "web".into(),
            follow: true,
            tail: Some(100),
            since_secs: None,
        };
        let line = c.to_line();
        assert_eq!(Call::parse(&line[..line.len() - 1]).unwrap(), c);
        assert_eq!(c.verb(), Verb::Logs);
        assert!(c.streams());
        assert!(Call::parse(br#"{"verb":"rm","container":"web"}"#).is_err());
        assert!(Call::parse(br#"{"verb":"start","container":""}"#).is_err());
        assert!(Call::parse(br#"{"verb":"start","container":"a/b"}"#).is_err());
        assert!(Call::parse(br#"{"verb":"exec","container":"web","cmd":[]}"#).is_err());
        assert_eq!(
            Call::parse(br#"{"verb":"ps"}"#).unwrap(),
            Call::Ps { all: false }
        );
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = io::BufReader::new(&b"abc\ndef"[..]);
        assert_eq!(read_line(&mut r).unwrap(), b"abc");
        assert!(read_line(&mut r).is_err());
        let long = vec![b'x'; MAX_LINE + 10];
        assert!(read_line(&mut io::BufReader::new(&long[..])).is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("beta/web"), Ok(("beta", "web")));
        assert!(split_target("web").is_err());
        assert!(split_target("/web").is_err());
        assert!(split_target("beta/").is_err());
        assert!(split_target("a/b/c").is_err());
    }
}
