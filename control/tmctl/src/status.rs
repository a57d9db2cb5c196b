//! `tmctl status`: the services and coordinators part.

use anyhow::Result;
use std::io::Write;
use tm_api::Status;

/// `services:` (each with its endpoints, or `not running (why)`) and `coordinators:`.
pub fn write_services(out: &mut impl Write, s: &Status) -> Result<()> {
    if !s.services.is_empty() {
        writeln!(out, "services:")?;
    }
    for v in &s.services {
        let detail = v.detail.as_deref().unwrap_or("");
        if v.running {
            let sep = if detail.is_empty() { "" } else { "  " };
            writeln!(
                out,
                "  {:<12} {}{sep}{detail}",
                v.name,
                v.endpoints.join(", ")
            )?;
        } else if detail.is_empty() {
            writeln!(out, "  {:<12} not running", v.name)?;
        } else {
            writeln!(out, "  {:<12} not running ({detail})", v.name)?;
        }
    }
    if !s.coordinators.is_empty() {
        writeln!(out, "coordinators:")?;
    }
    for c in &s.coordinators {
        let who = match (&c.name, &c.mesh_ip) {
            (Some(n), Some(ip)) => format!("{n} ({ip}) "),
            (Some(n), None) => format!("{n} "),
            _ => String::new(),
        };
        let state = if c.this_node {
            "this node"
        } else if c.reachable {
            "reachable"
        } else {
            "unreachable"
        };
        writeln!(out, "  {who}api {} ({state})", c.api)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tm_api::{CoordinatorInfo, ServiceInfo};

    fn status(json: &str) -> Status {
        let mut v: serde_json::Value = serde_json::json!({
            "name": "alpha", "public_key": "k", "address": "100.64.0.2/10",
            "interface": "tunnelmesh0", "listen_port": 51820,
            "dataplane": {"pid": 1, "restarts": 0, "running": true, "workers": 1},
            "counters": {"rx_datagrams": 0, "tx_datagrams": 0, "drops": {},
                         "handshakes_completed": 0, "handshake_errors": 0,
                         "cookie_replies_sent": 0},
            "peers": 1
        });
        let extra: serde_json::Value = serde_json::from_str(json).unwrap();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn services_and_coordinators() {
        let mut s = status("{}");
        // A status from an older node (no such fields) renders nothing extra.
        let mut out = Vec::new();
        write_services(&mut out, &s).unwrap();
        assert!(out.is_empty());
        s.services = vec![
            ServiceInfo {
                name: "s3".into(),
                running: true,
                endpoints: vec!["http://100.64.0.1:8080/s3".into()],
                detail: Some("S3 API".into()),
            },
            ServiceInfo {
                name: "nfs".into(),
                running: false,
                endpoints: vec![],
                detail: Some("no nfs: section in the config".into()),
            },
            ServiceInfo {
                name: "dns".into(),
                running: true,
                endpoints: vec!["127.0.0.53:5353".into(), "100.64.0.1:53".into()],
                detail: None,
            },
        ];
        s.coordinators = vec![
            CoordinatorInfo {
                name: Some("seed".into()),
                mesh_ip: Some("100.64.0.1".into()),
                api: "192.0.2.1:8443".into(),
                this_node: false,
                reachable: false,
            },
            CoordinatorInfo {
                name: None,
                mesh_ip: None,
                api: "0.0.0.0:8443".into(),
                this_node: true,
                reachable: true,
            },
        ];
        write_services(&mut out, &s).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "services:\n\
             \x20 s3           http://100.64.0.1:8080/s3  S3 API\n\
             \x20 nfs          not running (no nfs: section in the config)\n\
             \x20 dns          127.0.0.53:5353, 100.64.0.1:53\n\
             coordinators:\n\
             \x20 seed (100.64.0.1) api 192.0.2.1:8443 (unreachable)\n\
             \x20 api 0.0.0.0:8443 (this node)\n"
        );
        // And the JSON form carries the same.
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["services"][1]["running"], false);
        assert_eq!(j["coordinators"][0]["api"], "192.0.2.1:8443");
    }
}
