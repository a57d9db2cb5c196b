//! Makes `.mesh` names resolve for every program on the node while it runs (`dns.manage_system`,
//! on by default).
//!
//! * With systemd-resolved (`/etc/resolv.conf` is its stub or a link into `/run/systemd/resolve`,
//!   and `resolvectl` exists): the TUN link gets the node's DNS (`<mesh IP>:53`) as its DNS
//!   server and `~<domain>` as routing domain, like Tailscale and wg-quick. Only mesh names go
//!   to us; resolved forgets the link's settings when the TUN device disappears (stop, crash).
//! * Otherwise a managed block at the top of `/etc/resolv.conf` makes `<mesh IP>` the first
//!   nameserver; the previous file follows it unchanged, and its nameservers become the mesh
//!   DNS's upstreams for every other name. The original bytes are kept in
//!   `data_dir/resolv.conf.orig` first; stop removes the block (the file is then byte-identical
//!   to the original), and the next start removes a block a crash left behind.
//!
//! The file is rewritten in place (not renamed over): `ip netns exec` bind-mounts
//! `/etc/netns/<ns>/resolv.conf` there, and a bind-mount target cannot be replaced.

use anyhow::{Context, Result};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The system resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// First line of the managed block.
pub const BEGIN: &str = "# tunnelmesh: begin (managed while the node runs; removed on stop)";
/// Last line of the managed block.
pub const END: &str = "# tunnelmesh: end";
/// Where the original file is kept while the block is in place.
const ORIG: &str = "resolv.conf.orig";

/// What was changed, undone by [`SystemDns::restore`] (also on drop).
#[derive(Debug)]
pub struct SystemDns(Option<Change>);

#[derive(Debug)]
enum Change {
    /// systemd-resolved link settings on this interface.
    Resolved { interface: String },
    /// The managed block in this file; the original kept in `orig`.
    ResolvConf { path: PathBuf, orig: PathBuf },
}

/// Removes our block from `text`, if present. `None`: no block.
pub fn strip_block(text: &str) -> Option<String> {
    let start = text.find(BEGIN)?;
    let end_rel = text[start..].find(END)?;
    let mut end = start + end_rel + END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    Some(format!("{}{}", &text[..start], &text[end..]))
}

/// The block that goes before the original text.
pub fn block(mesh_ip: IpAddr) -> String {
    format!("{BEGIN}\nnameserver {mesh_ip}\n{END}\n")
}

/// The nameservers of a resolv.conf (port 53), without `exclude`.
pub fn nameservers(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            // A scope (`fe80::1%eth0`) cannot be expressed in a SocketAddr: skipped.
            let ip: IpAddr = w.next()?.parse().ok()?;
            (!exclude.contains(&ip)).then_some(SocketAddr::new(ip, 53))
        })
        .collect()
}

fn write_in_place(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("dns.manage_system: cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Undoes what a previous run left in `path` (a crash, `kill -9`): removes our block if it is
/// there and forgets the kept original.
pub fn cleanup_stale(path: &Path, data_dir: &Path) -> Result<()> {
    let orig = data_dir.join(ORIG);
    let kept = std::fs::read(&orig).ok();
    if let Ok(cur) = std::fs::read_to_string(path) {
        if let Some(stripped) = strip_block(&cur) {
            // The block sits in front of the original: removing it gives the original back,
            // byte for byte, plus whatever others changed after it meanwhile.
            let text = match &kept {
                Some(k) if cur.as_bytes().ends_with(k) && stripped.as_bytes() == &k[..] => {
                    String::from_utf8_lossy(k).into_owned()
                }
                _ => stripped,
            };
            write_in_place(path, &text)?;
            tracing::info!(path = %path.display(), "removed a stale tunnelmesh DNS block");
        }
    }
    if kept.is_some() {
        std::fs::remove_file(&orig).ok();
    }
    Ok(())
}

/// Whether systemd-resolved manages name resolution here.
fn resolved_in_use(path: &Path) -> bool {
    let link = std::fs::read_link(path)
        .map(|t| t.to_string_lossy().contains("systemd/resolve"))
        .unwrap_or(false);
    let stub = std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().eq(["nameserver", "127.0.0.53"]))
        })
        .unwrap_or(false);
    (link || stub)
        && Path::new("/run/systemd/resolve").is_dir()
        && Command::new("resolvectl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn resolvectl(args: &[&str]) -> Result<()> {
    let out = Command::new("resolvectl")
        .args(args)
        .output()
        .context("running resolvectl")?;
    if !out.status.success() {
        anyhow::bail!(
            "resolvectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl SystemDns {
    /// Points the system at the node's DNS on `mesh_ip:53`. Returns what to undo and the
    /// resolvers names outside the mesh must be forwarded to (empty with systemd-resolved,
    /// which sends us only `~domain`).
    pub fn install(
        path: &Path,
        data_dir: &Path,
        interface: &str,
        mesh_ip: IpAddr,
        domain: &str,
    ) -> Result<(SystemDns, Vec<SocketAddr>)> {
        cleanup_stale(path, data_dir)?;
        if resolved_in_use(path) {
            resolvectl(&["dns", interface, &mesh_ip.to_string()])?;
            resolvectl(&["domain", interface, &format!("~{domain}")])?;
            resolvectl(&["default-route", interface, "false"]).ok();
            tracing::info!(interface, "systemd-resolved: .{domain} goes to {mesh_ip}");
            let sys = SystemDns(Some(Change::Resolved {
                interface: interface.to_string(),
            }));
            return Ok((sys, Vec::new()));
        }
        let cur = std::fs::read(path).unwrap_or_default();
        let text = String::from_utf8(cur.clone())
            .with_context(|| format!("dns.manage_system: {} is not UTF-8", path.display()))?;
        let orig = data_dir.join(ORIG);
        let mut f = std::fs::File::create(&orig)
            .with_context(|| format!("dns.manage_system: cannot write {}", orig.display()))?;
        f.write_all(&cur)?;
        f.sync_all()?;
        let upstreams = nameservers(&text, &[mesh_ip]);
        if !path.exists() {
            std::fs::File::create(path)
                .with_context(|| format!("dns.manage_system: cannot create {}", path.display()))?;
        }
        write_in_place(path, &format!("{}{text}", block(mesh_ip)))?;
        tracing::info!(
            path = %path.display(), ?upstreams,
            "resolv.conf: nameserver {mesh_ip} first; other names are forwarded"
        );
        let sys = SystemDns(Some(Change::ResolvConf {
            path: path.to_path_buf(),
            orig,
        }));
        Ok((sys, upstreams))
    }

    /// Undoes [`SystemDns::install`]; idempotent.
    pub fn restore(&mut self) {
        let r = match self.0.take() {
            Some(Change::Resolved { interface }) => resolvectl(&["revert", &interface]),
            Some(Change::ResolvConf { path, orig }) => {
                cleanup_stale(&path, orig.parent().unwrap_or(Path::new(".")))
            }
            None => return,
        };
        if let Err(e) = r {
            tracing::warn!(
                "restoring the system DNS settings: {}",
                tmctl::error_line(&e)
            );
        }
    }
}

/// What the node calls once its DNS serves on `mesh_ip:53`: installs the system settings and
/// gives `dns` the upstreams. A failure is logged (the node runs on; `.mesh` names then need
/// `dig @<mesh IP>`) and gives `None`.
pub fn manage(
    cfg: &crate::config::NodeConfig,
    mesh_ip: IpAddr,
    domain: &str,
    dns: &tm_dns::MeshDns,
) -> Option<SystemDns> {
    let path = Path::new(RESOLV_CONF);
    match SystemDns::install(path, &cfg.data_dir, &cfg.interface, mesh_ip, domain) {
        Ok((sys, upstreams)) => {
            dns.set_upstreams(upstreams);
            Some(sys)
        }
        Err(e) => {
            tracing::warn!(
                "dns.manage_system: {}; .{domain} names resolve only at {mesh_ip}:53",
                tmctl::error_line(&e)
            );
            None
        }
    }
}

impl Drop for SystemDns {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_then_restore_is_byte_identical_and_a_crash_is_cleaned_up() {
        let dir = std::env::temp_dir().join(format!("tm-sysdns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        // No trailing newline, a comment, an IPv6 server, options: all must come back as is.
        let orig = "# from DHCP\nsearch lan\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:2";
        std::fs::write(&path, orig).unwrap();
        let ip: IpAddr = "100.64.0.9".parse().unwrap();
        let (mut sys, ups) = SystemDns::install(&path, &dir, "tm0", ip, "mesh").unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(
            now.starts_with(&format!("{BEGIN}\nnameserver 100.64.0.9\n")),
            "{now}"
        );
        assert!(now.ends_with(orig));
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0], "192.0.2.53:53".parse().unwrap());
        assert_eq!(ups[1], "[2001:db8::53]:53".parse().unwrap());
        assert_eq!(std::fs::read_to_string(dir.join(ORIG)).unwrap(), orig);
        sys.restore();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), orig);
        assert!(!dir.join(ORIG).exists());

        // A crash leaves the block: the next start removes it before adding its own, once.
        let (sys, _) = SystemDns::install(&path, &dir, "tm0", ip, "mesh").unwrap();
        std::mem::forget(sys);
        let (sys, ups) = SystemDns::install(&path, &dir, "tm0", ip, "mesh").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path)
                .unwrap()
                .matches(BEGIN)
                .count(),
            1
        );
        assert_eq!(ups.len(), 2, "our own address is never an upstream");
        drop(sys);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), orig);

        // Someone rewrote the file meanwhile (no block): left alone.
        let (sys, _) = SystemDns::install(&path, &dir, "tm0", ip, "mesh").unwrap();
        std::fs::write(&path, "nameserver 198.51.100.1\n").unwrap();
        drop(sys);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 198.51.100.1\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn nameserver_parsing() {
        let t = "nameserver 10.0.0.1\n#nameserver 10.0.0.2\nnameserver fe80::1%eth0\n nameserver  10.0.0.3 \nnameserverx 1.1.1.1\n";
        let got = nameservers(t, &["10.0.0.3".parse().unwrap()]);
        assert_eq!(got, vec!["10.0.0.1:53".parse().unwrap()]);
        assert_eq!(strip_block("x\n"), None);
    }
}
