#!/usr/bin/python3
"""The box's stand-in for the Internet's DNS, on 127.0.0.1:53 (UDP and TCP).

It answers what Mail-in-a-Box would publish for the box's mail domains (MX, A, SPF,
DMARC and the DKIM record of STORAGE_ROOT/mail/dkim/mail.txt (and any other *.txt record
file there), re-read on every query so a new key shows at once), PTR for 127.0.0.1 and 127.0.0.9, a foreign domain whose mail
server is 127.0.0.9 (outside Postfix's mynetworks), and NXDOMAIN for Spamhaus' zones so
Postfix's RBL/RHSBL checks never leave the box. The box's domains are PRIMARY_HOSTNAME
plus every domain in users.sqlite (users and aliases), also read on every query.
"""
import os
import re
import socket
import sqlite3
import struct
import sys
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

FOREIGN = "foreign.example"
FOREIGN_IP = "127.0.0.9"
TTL = 1


def load_env():
    env = {}
    with open("/etc/mailinabox.conf", encoding="utf-8") as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


ENV = load_env()
PRIMARY = ENV["PRIMARY_HOSTNAME"].lower()
STORAGE = ENV["STORAGE_ROOT"]


def box_domains():
    domains = {PRIMARY}
    db = os.path.join(STORAGE, "mail/users.sqlite")
    try:
        con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
        try:
            for (addr,) in con.execute(
                "SELECT email FROM users UNION SELECT source FROM aliases"
            ):
                if "@" in addr:
                    domains.add(addr.split("@", 1)[1].lower())
        finally:
            con.close()
    except sqlite3.Error:
        pass
    return domains


def dkim_records():
    """{selector name: TXT value} as MIAB's dns_update.py reads mail.txt (and any other
    opendkim-genkey style *.txt next to it, e.g. a second key), read fresh each time."""
    out = {}
    d = os.path.join(STORAGE, "mail/dkim")
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".txt"))
    except OSError:
        return out
    for n in names:
        try:
            with open(os.path.join(d, n), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        m = re.match(r'(\S+)\s+IN\s+TXT\s+\( ((?:"[^"]+"\s+)+)\)', text, re.S)
        if m:
            out.setdefault(m.group(1).lower(), "".join(re.findall(r'"([^"]+)"', m.group(2))))
    return out


def txt_strings(value):
    # A TXT string holds at most 255 bytes: split long values (DKIM keys) into chunks.
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"%s"' % c.replace('"', '\\"') for c in chunks)


def records(qname):
    """The records at qname as {rdtype: [text rdata]}, or None for NXDOMAIN."""
    n = qname.rstrip(".").lower()
    out = {}
    if n.endswith(".zen.spamhaus.org") or n.endswith(".dbl.spamhaus.org"):
        return None
    if n == "1.0.0.127.in-addr.arpa":
        return {"PTR": [PRIMARY + "."]}
    if n == "9.0.0.127.in-addr.arpa":
        return {"PTR": ["mx." + FOREIGN + "."]}
    if n == FOREIGN:
        return {
            "A": [FOREIGN_IP],
            "MX": ["10 mx.%s." % FOREIGN],
            "TXT": [txt_strings("v=spf1 ip4:%s -all" % FOREIGN_IP)],
        }
    if n == "mx." + FOREIGN:
        return {"A": [FOREIGN_IP]}
    if n == "_dmarc." + FOREIGN:
        return {"TXT": [txt_strings("v=DMARC1; p=none;")]}
    domains = box_domains()
    if n in domains:
        out["A"] = ["127.0.0.1"]
        out["MX"] = ["10 %s." % PRIMARY]
        out["TXT"] = [txt_strings("v=spf1 mx -all")]
        return out
    for d in domains:
        if n == "_dmarc." + d:
            return {"TXT": [txt_strings("v=DMARC1; p=quarantine;")]}
        if n.endswith("._domainkey." + d):
            rec = dkim_records().get(n[: -len(d) - 1])
            return {"TXT": [txt_strings(rec)]} if rec else None
    return None


def answer(wire):
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    r.flags &= ~dns.flags.RA
    if not q.question:
        r.set_rcode(dns.rcode.FORMERR)
        return r
    question = q.question[0]
    recs = records(question.name.to_text())
    if recs is None:
        r.set_rcode(dns.rcode.NXDOMAIN)
        return r
    rdtype = dns.rdatatype.to_text(question.rdtype)
    want = list(recs) if rdtype == "ANY" else [rdtype]
    for t in want:
        if t in recs:
            r.answer.append(
                dns.rrset.from_text_list(question.name, TTL, "IN", t, recs[t])
            )
    return r


def serve_udp(sock):
    while True:
        data, addr = sock.recvfrom(4096)
        try:
            resp = answer(data)
            wire = resp.to_wire(max_size=65535)
            if len(wire) > 512 and not dns.message.from_wire(data).edns >= 0:
                resp.flags |= dns.flags.TC
                resp.answer = []
                wire = resp.to_wire()
            sock.sendto(wire, addr)
        except Exception as e:  # keep serving
            print("udp query failed: %r" % e, file=sys.stderr, flush=True)


def handle_tcp(conn):
    try:
        conn.settimeout(10)
        while True:
            hdr = conn.recv(2)
            if len(hdr) < 2:
                return
            (length,) = struct.unpack("!H", hdr)
            data = b""
            while len(data) < length:
                chunk = conn.recv(length - len(data))
                if not chunk:
                    return
                data += chunk
            wire = answer(data).to_wire(max_size=65535)
            conn.sendall(struct.pack("!H", len(wire)) + wire)
    except Exception as e:
        print("tcp query failed: %r" % e, file=sys.stderr, flush=True)
    finally:
        conn.close()


def serve_tcp(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle_tcp, args=(conn,), daemon=True).start()


def main():
    addr = ("127.0.0.1", 53)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(addr)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(addr)
    tcp.listen(64)
    print("serving DNS on 127.0.0.1:53 for %s" % PRIMARY, flush=True)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    serve_udp(udp)


if __name__ == "__main__":
    main()
