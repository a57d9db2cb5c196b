use super::*;
use std::net::Ipv4Addr;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));

fn pm() -> Portmap {
    Portmap::for_nfs(2049, 111, Access::default())
}

/// An RPC call with AUTH_SYS credentials (as stock clients send) and `args`.
fn call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut o = Out::default();
    o.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_);
    let mut cred = Out::default();
    cred.u32(1).string("client").u32(0).u32(0).u32(0);
    o.u32(1).u32(cred.0.len() as u32);
    o.0.extend_from_slice(&cred.0);
    o.u32(0).u32(0);
    o.0.extend_from_slice(args);
    o.0
}

fn words(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn rpcb(prog: u32, vers: u32, netid: &str) -> Vec<u8> {
    let mut o = Out::default();
    o.u32(prog).u32(vers).string(netid).string("").string("");
    o.0
}

/// Checks the accepted-reply header and returns (accept_stat, body).
fn accepted(reply: &[u8], xid: u32) -> (u32, Xdr<'_>) {
    let mut x = Xdr { buf: reply };
    assert_eq!(x.u32().unwrap(), xid);
    assert_eq!(x.u32().unwrap(), 1, "REPLY");
    assert_eq!(x.u32().unwrap(), 0, "MSG_ACCEPTED");
    assert_eq!(x.u32().unwrap(), 0, "verifier flavor");
    assert_eq!(x.opaque(MAX_AUTH).unwrap().len(), 0);
    let stat = x.u32().unwrap();
    (stat, x)
}

#[test]
fn getport_maps_mount_and_nfs_to_the_nfs_port() {
    let p = pm();
    for (prog, vers, prot, want) in [
        (MOUNT_PROG, 3, 6, 2049),
        (NFS_PROG, 3, 6, 2049),
        (MOUNT_PROG, 1, 6, 2049), // another version: the service answers PROG_MISMATCH
        (NFS_PROG, 3, 17, 0),     // no UDP NFS
        (PMAP_PROG, 2, 17, 111),
        (100_021, 4, 6, 0), // NLM: not implemented
    ] {
        let r = p
            .handle(
                &call(7, PMAP_PROG, 2, 3, &words(&[prog, vers, prot, 0])),
                LOCAL,
            )
            .unwrap();
        let (stat, mut x) = accepted(&r, 7);
        assert_eq!(stat, SUCCESS);
        assert_eq!(x.u32().unwrap(), want, "{prog} v{vers} prot {prot}");
        assert!(x.buf.is_empty());
    }
}

#[test]
fn dump_v2_lists_every_mapping() {
    let p = pm();
    let r = p.handle(&call(9, PMAP_PROG, 2, 4, &[]), LOCAL).unwrap();
    let (stat, mut x) = accepted(&r, 9);
    assert_eq!(stat, SUCCESS);
    let mut got = Vec::new();
    while x.u32().unwrap() == 1 {
        let m = (x.u32().unwrap(), x.u32().unwrap(), x.u32().unwrap());
        got.push((m, x.u32().unwrap()));
    }
    assert!(x.buf.is_empty());
    assert_eq!(got.len(), p.mappings().len());
    assert!(got.contains(&((MOUNT_PROG, 3, 6), 2049)));
    assert!(got.contains(&((NFS_PROG, 3, 6), 2049)));
}

#[test]
fn getaddr_v3_v4_answer_universal_addresses() {
    let p = pm();
    for vers in [3, 4] {
        let r = p
            .handle(
                &call(1, PMAP_PROG, vers, 3, &rpcb(NFS_PROG, 3, "tcp")),
                LOCAL,
            )
            .unwrap();
        let (stat, mut x) = accepted(&r, 1);
        assert_eq!(stat, SUCCESS);
        assert_eq!(x.string(MAX_STRING).unwrap(), "100.64.0.1.8.1");
        let r = p
            .handle(
                &call(2, PMAP_PROG, vers, 3, &rpcb(NFS_PROG, 3, "udp")),
                LOCAL,
            )
            .unwrap();
        let (_, mut x) = accepted(&r, 2);
        assert_eq!(x.string(MAX_STRING).unwrap(), "", "no UDP NFS");
    }
    // GETVERSADDR wants the exact version.
    let r = p
        .handle(
            &call(3, PMAP_PROG, 4, 9, &rpcb(MOUNT_PROG, 1, "tcp")),
            LOCAL,
        )
        .unwrap();
    assert_eq!(accepted(&r, 3).1.string(MAX_STRING).unwrap(), "");
    // v4 DUMP: prog, vers, netid, uaddr, owner per entry.
    let r = p.handle(&call(4, PMAP_PROG, 4, 4, &[]), LOCAL).unwrap();
    let (stat, mut x) = accepted(&r, 4);
    assert_eq!(stat, SUCCESS);
    let mut n = 0;
    while x.u32().unwrap() == 1 {
        let (prog, _vers) = (x.u32().unwrap(), x.u32().unwrap());
        let netid = x.string(MAX_STRING).unwrap().to_string();
        let addr = x.string(MAX_STRING).unwrap().to_string();
        x.string(MAX_STRING).unwrap();
        if prog == MOUNT_PROG {
            assert_eq!((netid.as_str(), addr.as_str()), ("tcp", "100.64.0.1.8.1"));
        }
        n += 1;
    }
    assert_eq!(n, p.mappings().len());
}

#[test]
fn errors_use_the_protocols_answers() {
    let p = pm();
    let (stat, _) = accepted(&p.handle(&call(1, 100_003, 3, 0, &[]), LOCAL).unwrap(), 1);
    assert_eq!(stat, PROG_UNAVAIL);
    let r = p.handle(&call(1, PMAP_PROG, 5, 0, &[]), LOCAL).unwrap();
    let (stat, mut x) = accepted(&r, 1);
    assert_eq!(
        (stat, x.u32().unwrap(), x.u32().unwrap()),
        (PROG_MISMATCH, 2, 4)
    );
    let (stat, _) = accepted(&p.handle(&call(1, PMAP_PROG, 2, 5, &[]), LOCAL).unwrap(), 1);
    assert_eq!(stat, PROC_UNAVAIL, "CALLIT");
    let (stat, _) = accepted(&p.handle(&call(1, PMAP_PROG, 3, 9, &[]), LOCAL).unwrap(), 1);
    assert_eq!(stat, PROC_UNAVAIL, "GETVERSADDR is v4 only");
    // SET is refused (false), never applied.
    let r = p
        .handle(
            &call(1, PMAP_PROG, 2, 1, &words(&[NFS_PROG, 3, 6, 9])),
            LOCAL,
        )
        .unwrap();
    assert_eq!(accepted(&r, 1).1.u32().unwrap(), 0);
    let r = p
        .handle(
            &call(1, PMAP_PROG, 2, 3, &words(&[NFS_PROG, 3, 6, 0])),
            LOCAL,
        )
        .unwrap();
    assert_eq!(accepted(&r, 1).1.u32().unwrap(), 2049);
    // RPC version 3: MSG_DENIED / RPC_MISMATCH.
    let mut c = call(1, PMAP_PROG, 2, 0, &[]);
    c[8..12].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(p.handle(&c, LOCAL).unwrap(), words(&[1, 1, 1, 0, 2, 2]));
    // A reply is never answered.
    let mut c = call(1, PMAP_PROG, 2, 0, &[]);
    c[4..8].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(p.handle(&c, LOCAL), None);
}

#[test]
fn truncated_and_oversized_input_never_panics_or_succeeds() {
    let p = pm();
    let full = call(5, PMAP_PROG, 3, 3, &rpcb(MOUNT_PROG, 3, "tcp"));
    let header_len = full.len() - rpcb(MOUNT_PROG, 3, "tcp").len();
    for n in 0..full.len() {
        match p.handle(&full[..n], LOCAL) {
            None => assert!(n < header_len, "header cut at {n} must be dropped"),
            Some(r) => {
                assert!(n >= header_len, "{n}");
                assert_eq!(accepted(&r, 5).0, GARBAGE_ARGS, "cut at {n}");
            }
        }
    }
    // A string length far beyond the datagram, and over the bound.
    for len in [u32::MAX, 256, 1 << 20] {
        let mut args = words(&[MOUNT_PROG, 3, len]);
        args.extend_from_slice(b"tcp\0");
        let r = p.handle(&call(6, PMAP_PROG, 3, 3, &args), LOCAL).unwrap();
        assert_eq!(accepted(&r, 6).0, GARBAGE_ARGS);
    }
    // Credentials over 400 bytes: dropped.
    let mut c = words(&[1, 0, 2, PMAP_PROG, 2, 0, 1, 404]);
    c.extend_from_slice(&[0; 404]);
    c.extend_from_slice(&words(&[0, 0]));
    assert_eq!(p.handle(&c, LOCAL), None);
}

#[test]
fn uaddr_format() {
    assert_eq!(uaddr("10.1.2.3".parse().unwrap(), 111), "10.1.2.3.0.111");
    assert_eq!(uaddr("::1".parse().unwrap(), 2049), "::1.8.1");
}

#[tokio::test]
async fn serves_udp_and_tcp_with_record_marking() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = pm().bind(&["127.0.0.1:0".parse().unwrap()]).await.unwrap();
    let addr = srv.local_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(srv.run(async move {
        let _ = stop_rx.await;
    }));
    let getport = call(11, PMAP_PROG, 2, 3, &words(&[MOUNT_PROG, 3, 6, 0]));

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&getport, addr).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted(&buf[..n], 11).1.u32().unwrap(), 2049);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // Two fragments make one record.
    let (a, b) = getport.split_at(10);
    let mut framed = (a.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(a);
    framed.extend_from_slice(&(0x8000_0000 | b.len() as u32).to_be_bytes());
    framed.extend_from_slice(b);
    tcp.write_all(&framed).await.unwrap();
    let mut mark = [0u8; 4];
    tcp.read_exact(&mut mark).await.unwrap();
    let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
    assert!(u32::from_be_bytes(mark) & 0x8000_0000 != 0 && len < 512);
    let mut reply = vec![0u8; len];
    tcp.read_exact(&mut reply).await.unwrap();
    assert_eq!(accepted(&reply, 11).1.u32().unwrap(), 2049);

    // A record over the bound closes the connection without a reply.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&(0x8000_0000u32 | (MAX_RECORD as u32 + 1)).to_be_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    stop_tx.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn refuses_clients_outside_the_access_list() {
    let access = Access {
        allow: Vec::new(),
        loopback: false,
    };
    let srv = Portmap::for_nfs(2049, 111, access)
        .bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = srv.local_addrs()[0];
    let task = tokio::spawn(srv.run(std::future::pending()));
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&call(1, PMAP_PROG, 2, 0, &[]), addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_millis(300), udp.recv_from(&mut buf)).await;
    assert!(r.is_err(), "no answer to a refused source");
    task.abort();
}
