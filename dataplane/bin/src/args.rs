//! The command line (hand-written: the contract is small and fixed).

use std::net::IpAddr;
use std::os::fd::RawFd;

/// Parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub ring_fds: [RawFd; 3],
    pub tun: String,
    pub address: (IpAddr, u8),
    pub mtu: u16,
    pub listen_port: u16,
    pub routes: Vec<(IpAddr, u8)>,
    pub workers: u16,
}

/// Parses `ADDR/LEN` (IPv4 or IPv6; LEN within the family's range).
pub fn cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDR/LEN"))?;
    let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
    let len: u8 = l.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{s:?}: prefix length > {max}"));
    }
    Ok((addr, len))
}

/// Parses the argument list (without the program name).
pub fn parse(argv: &[String]) -> Result<Args, String> {
    let mut ring_fds = None;
    let mut tun = None;
    let mut address = None;
    let mut mtu = None;
    let mut listen_port = None;
    let mut routes = Vec::new();
    let mut workers = 1u16;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--ring-fds" => {
                let v = value()?;
                let fds: Vec<RawFd> = v
                    .split(',')
                    .map(|x| x.trim().parse::<RawFd>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--ring-fds {v:?}: expected M,A,B"))?;
                let fds: [RawFd; 3] = fds
                    .try_into()
                    .map_err(|_| format!("--ring-fds {v:?}: expected three fds"))?;
                ring_fds = Some(fds);
            }
            "--tun" => tun = Some(value()?),
            "--address" => address = Some(cidr(&value()?)?),
            "--mtu" => {
                let v = value()?;
                let m: u16 = v
                    .parse()
                    .map_err(|_| format!("--mtu {v:?}: not a number"))?;
                if !(576..=65_000).contains(&m) {
                    return Err(format!("--mtu {m}: out of range 576..=65000"));
                }
                mtu = Some(m);
            }
            "--listen-port" => {
                let v = value()?;
                listen_port = Some(
                    v.parse()
                        .map_err(|_| format!("--listen-port {v:?}: not a port"))?,
                );
            }
            "--route" => routes.push(cidr(&value()?)?),
            "--workers" => {
                let v = value()?;
                workers = v
                    .parse()
                    .ok()
                    .filter(|&w| w >= 1)
                    .ok_or_else(|| format!("--workers {v:?}: expected a positive number"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        ring_fds: ring_fds.ok_or("--ring-fds is required")?,
        tun: tun.ok_or("--tun is required")?,
        address: address.ok_or("--address is required")?,
        mtu: mtu.ok_or("--mtu is required")?,
        listen_port: listen_port.ok_or("--listen-port is required")?,
        routes,
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn full_contract() {
        let a = parse(&v(
            "--ring-fds 3,4,5 --tun tm0 --address 100.64.0.1/10 --mtu 1420 \
             --listen-port 51820 --route 10.9.0.0/16 --route fd00::/8 --workers 2",
        ))
        .unwrap();
        assert_eq!(a.ring_fds, [3, 4, 5]);
        assert_eq!(a.tun, "tm0");
        assert_eq!(a.address, ("100.64.0.1".parse().unwrap(), 10));
        assert_eq!(a.mtu, 1420);
        assert_eq!(a.listen_port, 51820);
        assert_eq!(
            a.routes,
            vec![
                ("10.9.0.0".parse().unwrap(), 16),
                ("fd00::".parse().unwrap(), 8)
            ]
        );
        assert_eq!(a.workers, 2);
        let b = parse(&v(
            "--tun=tm1 --ring-fds=7,8,9 --address=fd7a::1/48 --mtu=1280 --listen-port=0",
        ))
        .unwrap();
        assert_eq!(b.ring_fds, [7, 8, 9]);
        assert_eq!(b.address.1, 48);
        assert!(b.routes.is_empty());
        assert_eq!(b.workers, 1);
    }

    #[test]
    fn errors_name_the_problem() {
        let base = "--ring-fds 3,4,5 --tun tm0 --address 100.64.0.1/10 --mtu 1420 --listen-port 1";
        assert!(parse(&v(base)).is_ok());
        for (extra, needle) in [
            (" --route 10.0.0.0/33", "prefix length"),
            (" --route 10.0.0.0", "ADDR/LEN"),
            (" --mtu 70000", "--mtu"),
            (" --workers 0", "--workers"),
            (" --bogus", "unknown argument"),
            (" --route", "needs a value"),
        ] {
            let e = parse(&v(&format!("{base}{extra}"))).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        assert!(parse(&v("--tun tm0")).unwrap_err().contains("--ring-fds"));
        assert!(parse(&v("--ring-fds 3,4 --tun x"))
            .unwrap_err()
            .contains("three"));
    }
}
