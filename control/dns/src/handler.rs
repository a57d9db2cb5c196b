//! [`MeshDns`]: the current zone behind an `ArcSwap`, and its hickory [`RequestHandler`].
//!
//! Request flow: 1. EDNS version check (BADVERS) 2. message type / opcode (FORMERR / NOTIMP)
//! 3. exactly one question (FORMERR) 4. [`MeshDns::lookup`] 5. encode via the response handle.
//! Undecodable messages never get here: hickory's server answers them with FORMERR itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

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
    zone: ArcSwap<Compiled>,
    next_serial: AtomicU32,
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
            next_serial: AtomicU32::new(2),
        })
    }

    /// Replaces the served zone atomically; queries see either the old or the new zone, and
    /// the new one from the moment this returns. Bumps the SOA serial. On `Err` (invalid
    /// domain) the old zone stays.
    pub fn update(&self, zone: &Zone) -> Result<UpdateReport, DnsError> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let (compiled, skipped) = Compiled::build(zone, serial)?;
        self.zone.store(Arc::new(compiled));
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
    async fn handle_request<R: ResponseHandler, T: Time>(
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

        let answer = self.0.lookup(
            query.original().name(),
            query.query_type(),
            query.query_class(),
        );
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = answer.authoritative;
        meta.response_code = answer.rcode;
        let response = MessageResponseBuilder::new(&request.queries, edns).build(
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

async fn send_error<R: ResponseHandler>(
    request: &Request,
    rcode: ResponseCode,
    edns: Option<&Edns>,
    mut response_handle: R,
) -> ResponseInfo {
    let response =
        MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, rcode);
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
