//! [`MeshDns`]: the current zone behind an `ArcSwap`, and its hickory [`RequestHandler`].
//!
//! Request flow: 1. EDNS version check (BADVERS) 2. message type / opcode (FORMERR / NOTIMP)
//! 3. exactly one question (FORMERR) 4. [`MeshDns::lookup`] 5. encode via the response handle.
//! Undecodable messages never get here: hickory's server answers them with FORMERR itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::zone::{Answer, Compiled, Zone};
use crate::DnsError;

/// Largest UDP payload we answer with when the client advertises more via EDNS.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// What [`MeshDns::update`] did.
#[derive(Debug)]
#[must_use]
pub struct UpdateReport {
    /// SOA serial of the zone now served.
    pub serial: u32,
    /// Entries left out of the zone, with why.
    pub skipped: Vec<DnsError>,
}

/// The mesh DNS authority: holds the current zone and answers queries from it.
///
/// Call order: [`MeshDns::new`] once, share it as `Arc<MeshDns>`, hand it to
/// [`crate::serve`] (or [`crate::DnsServer::bind`]), call [`MeshDns::update`] whenever the
/// netmap changes. Queries never take a lock: they load the current zone from an `ArcSwap`.
#[derive(Debug)]
pub struct MeshDns {
    /// Read lock-free by every query.
    zone: ArcSwap<Compiled>,
    /// Serialises writers so the stored zone always carries the highest serial.
    last_serial: Mutex<u32>,
    /// Where names outside the zone go (empty: they are REFUSED).
    upstreams: ArcSwap<Vec<SocketAddr>>,
}

impl MeshDns {
    /// Builds the authority for `zone`. Fails only if the domain is invalid; bad entries are
    /// left out and logged (use [`MeshDns::update`] to get them back as a report).
    pub fn new(zone: &Zone) -> Result<Self, DnsError> {
        let (compiled, skipped) = Compiled::build(zone, 1)?;
        for e in &skipped {
            tracing::warn!(error = %e, "dns: zone entry skipped");
        }
        Ok(Self {
            zone: ArcSwap::from_pointee(compiled),
            last_serial: Mutex::new(1),
            upstreams: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Forward names outside the zone to these resolvers (tried in order), as the system's
    /// resolver does when the node manages `/etc/resolv.conf`. Empty (the default): REFUSED.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.upstreams.store(Arc::new(upstreams));
    }

    /// The resolvers names outside the zone are forwarded to.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.load().as_ref().clone()
    }

    /// Replaces the served zone atomically; queries see either the old or the new zone, and
    /// the new one from the moment this returns. Bumps the SOA serial. On `Err` (invalid
    /// domain) the old zone stays.
    pub fn update(&self, zone: &Zone) -> Result<UpdateReport, DnsError> {
        let mut last = self
            .last_serial
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Serial 0 is skipped on wrap-around so a fresh zone (serial 1) never looks newer.
        let serial = match last.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        let (compiled, skipped) = Compiled::build(zone, serial)?;
        self.zone.store(Arc::new(compiled));
        *last = serial;
        Ok(UpdateReport { serial, skipped })
    }

    /// The SOA serial of the zone being served.
    pub fn serial(&self) -> u32 {
        self.zone.load().serial()
    }

    /// Answers one question against the current zone (sans-IO; what the server uses).
    pub fn lookup(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        self.zone.load().lookup(qname, qtype, qclass)
    }
}

/// `Arc<MeshDns>` is what the hickory server runs.
#[derive(Debug, Clone)]
pub struct Handler(pub Arc<MeshDns>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    /// Answers one request; a panic while doing so is contained to it (SERVFAIL, logged and
    /// counted, see `contain.rs`).
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let kind = match request.queries.queries() {
            [q] => format!("DNS {} {}", q.query_type(), q.original().name()),
            _ => "DNS".to_owned(),
        };
        let answered = self.respond(request, response_handle.clone());
        match crate::contain::contained(kind, answered).await {
            Ok(info) => info,
            Err(()) => send_error(request, ResponseCode::ServFail, None, response_handle).await,
        }
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut resp_edns = None;
        if let Some(req) = request.edns.as_ref() {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            let bad_version = req.version() > 0;
            resp_edns = Some(e);
            if bad_version {
                let edns = resp_edns.as_ref();
                return send_error(request, ResponseCode::BADVERS, edns, response_handle).await;
            }
        }
        let edns = resp_edns.as_ref();

        if request.metadata.message_type != MessageType::Query {
            return send_error(request, ResponseCode::FormErr, edns, response_handle).await;
        }
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, ResponseCode::NotImp, edns, response_handle).await;
        }
        let [query] = request.queries.queries() else {
            return send_error(request, ResponseCode::FormErr, edns, response_handle).await;
        };

        #[cfg(test)]
        crate::contain::maybe_panic(&query.original().name().to_ascii());
        let answer = self.0.lookup(
            query.original().name(),
            query.query_type(),
            query.query_class(),
        );
        let upstreams = self.0.upstreams.load_full();
        if !answer.authoritative
            && !upstreams.is_empty()
            && !matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
            && !self.0.zone.load().in_zone(query.original().name())
        {
            return forwarded(request, query.original(), &upstreams, edns, response_handle).await;
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = answer.authoritative;
        meta.response_code = answer.rcode;
        let queries = crate::question::rewritten(&request.queries);
        let queries = queries.as_ref().unwrap_or(&request.queries);
        let response = MessageResponseBuilder::new(queries, edns).build(
            meta,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "dns: sending response failed");
                serve_failed(request)
            }
        }
    }
}

/// Answers with what an upstream said (SERVFAIL when none answered).
async fn forwarded<R: ResponseHandler>(
    request: &Request,
    query: &hickory_server::proto::op::Query,
    upstreams: &[SocketAddr],
    edns: Option<&Edns>,
    mut response_handle: R,
) -> ResponseInfo {
    let Some(up) = crate::forward::forward(upstreams, query).await else {
        return send_error(request, ResponseCode::ServFail, edns, response_handle).await;
    };
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.recursion_available = true;
    meta.response_code = up.metadata.response_code;
    let queries = crate::question::rewritten(&request.queries);
    let queries = queries.as_ref().unwrap_or(&request.queries);
    let response = MessageResponseBuilder::new(queries, edns).build(
        meta,
        up.answers.iter(),
        up.authorities.iter(),
        std::iter::empty(),
        up.additionals.iter(),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, "dns: sending forwarded response failed");
            serve_failed(request)
        }
    }
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    rcode: ResponseCode,
    edns: Option<&Edns>,
    mut response_handle: R,
) -> ResponseInfo {
    let queries = crate::question::rewritten(&request.queries);
    let queries = queries.as_ref().unwrap_or(&request.queries);
    let response = MessageResponseBuilder::new(queries, edns).error_msg(&request.metadata, rcode);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, "dns: sending error response failed");
            serve_failed(request)
        }
    }
}

fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::op::{Message, Query};

    use super::*;

    use crate::fuzzing::Capture;

    fn handler() -> Handler {
        let zone = Zone::default()
            .with_peer("beta", ["100.64.0.2".parse().expect("ip")])
            .with_coordinators(["100.64.0.10".parse().expect("ip")]);
        Handler(Arc::new(MeshDns::new(&zone).expect("valid")))
    }

    async fn ask(h: &Handler, m: &Message) -> (ResponseInfo, Message) {
        let src: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let req = Request::from_bytes(m.to_vec().expect("encode"), src, Protocol::Udp)
            .expect("well-formed request");
        let cap = Capture::default();
        let info = h.handle_request::<_, TokioTime>(&req, cap.clone()).await;
        let bytes = cap.0.lock().expect("not poisoned").clone();
        (info, Message::from_vec(&bytes).expect("response decodes"))
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Message {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
        m
    }

    #[tokio::test]
    async fn answers_with_header_bits_set_right() {
        let h = handler();
        let (info, r) = ask(&h, &query(42, "beta.mesh.", RecordType::A)).await;
        assert_eq!(info.response_code, ResponseCode::NoError);
        assert_eq!(info.counts().answers, 1);
        assert_eq!(r.metadata.id, 42);
        assert!(r.metadata.authoritative);
        assert!(r.metadata.recursion_desired, "RD copied");
        assert!(!r.metadata.recursion_available, "we do not recurse");
        assert!(r.edns.is_none(), "no OPT without one in the query");
        assert_eq!(
            r.answers[0].data.ip_addr(),
            Some("100.64.0.2".parse().expect("ip"))
        );
    }

    #[tokio::test]
    async fn edns_is_echoed_with_a_bounded_payload() {
        let h = handler();
        let mut m = query(1, "beta.mesh.", RecordType::A);
        let mut e = Edns::new();
        e.set_max_payload(65000);
        m.edns = Some(e);
        let (_, r) = ask(&h, &m).await;
        let edns = r.edns.expect("OPT in the response");
        assert_eq!(edns.max_payload(), MAX_UDP_PAYLOAD);
        assert_eq!(edns.version(), 0);

        let mut m = query(2, "beta.mesh.", RecordType::A);
        let mut e = Edns::new();
        e.set_version(1);
        m.edns = Some(e);
        let (info, r) = ask(&h, &m).await;
        // 16 is BADVERS with an OPT record (BADSIG without); hickory's info shows the latter.
        assert_eq!(u16::from(info.response_code), 16);
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert!(r.edns.is_some(), "BADVERS needs the OPT record");
        assert!(r.answers.is_empty());
    }

    #[tokio::test]
    async fn error_codes() {
        let h = handler();
        let (_, r) = ask(&h, &query(3, "nobody.mesh.", RecordType::A)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative);
        assert_eq!(r.authorities.len(), 1);

        let (_, r) = ask(&h, &query(4, "example.org.", RecordType::A)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(!r.metadata.authoritative);

        let mut m = query(5, "mesh.", RecordType::SOA);
        m.metadata.op_code = OpCode::Notify;
        let (_, r) = ask(&h, &m).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);

        let mut m = query(6, "beta.mesh.", RecordType::A);
        m.add_query(Query::query(
            Name::from_ascii("mesh.").expect("name"),
            RecordType::NS,
        ));
        let (_, r) = ask(&h, &m).await;
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }

    #[tokio::test]
    async fn update_is_seen_by_the_next_query() {
        let h = handler();
        let before = h.0.serial();
        let zone = Zone::default().with_peer("gamma", ["100.64.0.3".parse().expect("ip")]);
        let report = h.0.update(&zone).expect("valid");
        assert!(report.skipped.is_empty());
        assert_eq!(h.0.serial(), report.serial);
        assert!(report.serial > before);
        let (_, r) = ask(&h, &query(7, "gamma.mesh.", RecordType::A)).await;
        assert_eq!(r.answers.len(), 1);
        let (_, r) = ask(&h, &query(8, "beta.mesh.", RecordType::A)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // A bad domain keeps the old zone.
        assert!(h.0.update(&Zone::new("bad domain")).is_err());
        let (_, r) = ask(&h, &query(9, "gamma.mesh.", RecordType::A)).await;
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn readers_see_whole_zones_during_updates() {
        // Zone A: x -> .1 and y absent; zone B: x -> .2 and y -> .2. A reader must never see
        // x from one zone and y from the other within a single lookup of both via an alias.
        let zone_a = Zone::default()
            .with_peer("x", ["100.64.0.1".parse().expect("ip")])
            .with_alias("both", "x");
        let zone_b = Zone::default()
            .with_peer("x", ["100.64.0.2".parse().expect("ip")])
            .with_peer("y", ["100.64.0.2".parse().expect("ip")])
            .with_alias("both", "y");
        let dns = Arc::new(MeshDns::new(&zone_a).expect("valid"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dns, stop) = (dns.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                let mut to_b = true;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let z = if to_b { &zone_b } else { &zone_a };
                    to_b = !to_b;
                    let _ = dns.update(z).expect("valid");
                    n += 1;
                }
                n
            })
        };
        let name = Name::from_ascii("both.mesh.").expect("name");
        for _ in 0..20_000 {
            let ans = dns.lookup(&name, RecordType::A, DNSClass::IN);
            let last = ans.answers.last().expect("CNAME + A");
            let ip = last.data.ip_addr().expect("A record");
            match (last.name.to_string().as_str(), ip.to_string().as_str()) {
                ("x.mesh.", "100.64.0.1") | ("y.mesh.", "100.64.0.2") => {}
                other => panic!("torn zone: {other:?}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let updates = writer.join().expect("writer");
        assert!(updates > 0);
        // Serials only grow and match the stored zone.
        let s = dns.serial();
        assert_eq!(s, updates + 1);
    }
}
