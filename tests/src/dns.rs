//! A test DNS server on 127.0.0.1 (UDP): answers A and TXT records from a table the test
//! fills, NXDOMAIN for other names, SERVFAIL for names marked failing, and, in silent mode,
//! nothing at all (a dead server that times out). Messages are built with hickory-proto.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    failing: HashSet<String>,
    queries: Vec<String>,
}

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    /// Starts a server on a free loopback port.
    pub fn start() -> TestDns {
        Self::start_at("127.0.0.1:0".parse().unwrap())
    }

    /// Starts a server on `addr` (port 53 for programs that read only `/etc/resolv.conf`).
    pub fn start_at(addr: SocketAddr) -> TestDns {
        let sock = UdpSocket::bind(addr).expect("bind the test DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, s, st) = (Arc::clone(&zone), Arc::clone(&silent), Arc::clone(&stop));
        std::thread::spawn(move || serve(&sock, &z, &s, &st));
        TestDns {
            addr,
            zone,
            silent,
            stop,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds an A record.
    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, RecordType::A, RData::A(A(ip)));
    }

    /// Adds a TXT record, split into strings of at most 255 bytes as DNS requires (a DKIM
    /// key is longer; verifiers join the strings).
    pub fn add_txt(&self, name: &str, text: &str) {
        let strings = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(strings)));
    }

    fn add(&self, name: &str, t: RecordType, data: RData) {
        let mut z = self.zone.lock().unwrap();
        z.records.entry((key(name), t)).or_default().push(data);
    }

    /// Answers SERVFAIL for `name`.
    pub fn fail(&self, name: &str) {
        self.zone.lock().unwrap().failing.insert(key(name));
    }

    /// Stops answering (queries are still recorded), or starts again.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// The names asked so far, lowercased, without the final dot.
    pub fn queries(&self) -> Vec<String> {
        self.zone.lock().unwrap().queries.clone()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(sock: &UdpSocket, zone: &Mutex<Zone>, silent: &AtomicBool, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(q) = query.queries.first().cloned() else {
            continue;
        };
        let name = key(&q.name().to_ascii());
        zone.lock().unwrap().queries.push(name.clone());
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(q.clone());
        {
            let z = zone.lock().unwrap();
            if z.failing.contains(&name) {
                reply.metadata.response_code = ResponseCode::ServFail;
            } else if let Some(rs) = z.records.get(&(name.clone(), q.query_type())) {
                for r in rs {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 60, r.clone()));
                }
            } else if !z.records.keys().any(|(n, _)| *n == name) {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        if let Ok(bytes) = reply.to_vec() {
            let _ = sock.send_to(&bytes, peer);
        }
    }
}
