#!/usr/bin/python3
"""Seeded differential DKIM corpus: dkimpy signs and verifies, OpenDKIM is configured to sign.

  generate --seed SEED --count N --out DIR   keys, dns.txt, unsigned/, dkimpy/, cases.json
  verify --dns DIR/dns.txt FILE...           one JSON line per file: dkimpy's verdict per signature
  opendkim-conf --keys DIR/keys --canon C --port P --out FILE [--alg A | --mode v --dns DNS]
  send --port P --source IP --from ADDR [--header H] FILE...   SMTP, 8 connections at once

Runs with the system interpreter only (stdlib + python3-dkim, python3-nacl for ed25519).
Findings with Debian bookworm's OpenDKIM 2.11.0~beta2 behind Postfix 3.7:
- one opendkim instance signs with ONE algorithm (SignatureAlgorithm); run one per key and
  chain them in smtpd_milters for an RSA plus an Ed25519 signature;
- its Ed25519 signatures are only valid with relaxed header canonicalisation: with c=simple/*
  it hashes its own DKIM-Signature folded differently ("h=...; b=" on one line) from what it
  inserts, so dkimpy and OpenDKIM itself both fail them;
- otherwise dkimpy and OpenDKIM agree on every case generated here (empty, CRLF-only and
  whitespace-only bodies, l=, l=0, tampering); Postfix relays the messages byte for byte.
"""
import argparse
import base64
import email.utils
import json
import os
import random
import re
import subprocess
import sys

import dkim
from dkim.util import parse_tag_value

DKIMPY_DOMAIN = "dkimpy.example"
ODKIM_DOMAIN = "odkim.example"
SELECTORS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed"}
KEY_FILES = {"rsa-sha256": "rsa.pem", "ed25519-sha256": "ed25519.pem"}
CANONS = ["simple/simple", "simple/relaxed", "relaxed/simple", "relaxed/relaxed"]
COMBOS = [(c, a) for c in CANONS for a in SELECTORS]
SIGN_HEADERS = ["From", "To", "Subject", "Date", "Message-ID"]
TAMPERS = ["trailing_ws", "empty_line", "change_letter", "append_line", "header_ws"]
# Placeholder for the signing domain: each case is rendered once per signer.
DOM = "\x00DOMAIN\x00"
MAX_LINE = 900  # octets without CRLF; SMTP allows 998

ASCII_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
               "tempor incididunt ut labore et dolore magna aliqua DKIM canon Relaxed "
               "SIMPLE body hash x y z 42 foo-bar a.b (paren) [brack] =3D ;semi, comma.").split()
UTF8_WORDS = "Grüße naïve café Ærøskøbing żółć Привет мир 日本語 テスト ✓ €uro ñandú".split()


# ---------------------------------------------------------------- keys and DNS

def openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def make_keys(kdir):
    """RSA as PKCS#1 PEM (dkimpy's parser and OpenDKIM both take it); Ed25519 as PKCS#8 PEM
    for OpenDKIM plus its raw 32-byte seed in base64, which is what dkimpy/nacl sign with."""
    os.makedirs(kdir, exist_ok=True)
    rsa, ed = (os.path.join(kdir, KEY_FILES[a]) for a in SELECTORS)
    if not os.path.exists(rsa):
        openssl("genrsa", "-traditional", "-out", rsa, "2048")
    if not os.path.exists(ed):
        openssl("genpkey", "-algorithm", "ed25519", "-out", ed)
    der = openssl("pkey", "-in", ed, "-outform", "DER")
    assert len(der) == 48, "unexpected Ed25519 PKCS#8 layout"
    seed = base64.b64encode(der[-32:])
    with open(os.path.join(kdir, "ed25519.seed"), "wb") as f:
        f.write(seed + b"\n")
    rsa_pub = base64.b64encode(openssl("pkey", "-in", rsa, "-pubout", "-outform", "DER"))
    ed_pub = base64.b64encode(openssl("pkey", "-in", ed, "-pubout", "-outform", "DER")[-32:])
    with open(rsa, "rb") as f:
        rsa_priv = f.read()
    # Values without blanks: dns.txt then doubles as OpenDKIM's TestDNSData file.
    records = {"rsa": "v=DKIM1;k=rsa;p=" + rsa_pub.decode(),
               "ed": "v=DKIM1;k=ed25519;p=" + ed_pub.decode()}
    return {"rsa-sha256": rsa_priv, "ed25519-sha256": seed}, records


def load_dns(path):
    recs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                name, value = line.rstrip("\r\n").split(" ", 1)
                recs[name.lower()] = value.encode()
    return recs


# ---------------------------------------------------------------- message generation

def wsp(rng, lo=1, hi=4):
    return "".join(rng.choice(" \t") for _ in range(rng.randint(lo, hi)))


def case_mix(rng, name):
    return rng.choice([name, name, name.upper(), name.lower(),
                       "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)])


def words(rng, n, utf8=0.0):
    return [rng.choice(UTF8_WORDS if rng.random() < utf8 else ASCII_WORDS) for _ in range(n)]


def header(rng, name, value_words, fold=0.0):
    """Name, no blank before the colon, optional WSP after it and at the end, folds before
    words (continuation lines start with SP/HTAB and are never whitespace-only)."""
    out = case_mix(rng, name) + ":"
    out += rng.choice(["", " ", " ", wsp(rng)])
    for i, w in enumerate(value_words):
        if i and rng.random() < fold:
            out += rng.choice(["", " ", wsp(rng)]) + "\r\n" + rng.choice(" \t") + rng.choice(["", wsp(rng)])
        elif i:
            out += " " if rng.random() < 0.6 else wsp(rng)
        out += w
    if rng.random() < 0.25:
        out += wsp(rng)
    return out + "\r\n"


def from_value(rng):
    local = rng.choice(["a", "alice", "bob.smith", "x+tag", "Info"])
    addr = local + "@" + DOM
    display = rng.choice([None, None, ["Alice", "Example"], ['"Example,', 'Bob"'],
                          ["=?UTF-8?Q?J=C3=B6rg?="], ['"Jörg', 'Ünïcode"'], ["Big", "\t", "Corp"]])
    if display is None:
        return [rng.choice([addr, "<" + addr + ">"])]
    return [w for w in display if w.strip()] + ["<" + addr + ">"]


def make_headers(rng, cid):
    ts = rng.randint(1_400_000_000, 1_800_000_000)
    hs = [("From", header(rng, "From", from_value(rng), fold=0.2)),
          ("To", header(rng, "To", rng.choice([["someone@elsewhere.example"],
                                                ["<someone@elsewhere.example>"],
                                                ["Some", "One", "<someone@elsewhere.example>"]]), 0.2)),
          ("Date", header(rng, "Date", email.utils.formatdate(ts).split(), fold=0.1)),
          ("Message-ID", header(rng, "Message-ID",
                                ["<%s.%08x@%s>" % (cid, rng.getrandbits(32), DOM)]))]
    if rng.random() < 0.9:
        subj = words(rng, rng.randint(0, 25), utf8=rng.choice([0, 0, 0.3, 1]))
        if subj and rng.random() < 0.03:
            # A form feed or vertical tab: whitespace to OpenDKIM's (and mail-auth's) relaxed
            # header canonicalisation (isspace), not to dkimpy's or RFC 6376's (WSP only).
            subj.insert(rng.randint(0, len(subj)), rng.choice(["\x0c", "\x0b", "a\x0cb"]))
        hs.append(("Subject", header(rng, "Subject", subj, fold=rng.choice([0, 0, 0.15, 0.4]))))
    if rng.random() < 0.4:
        hs.append(("X-Filler", header(rng, "X-Filler", words(rng, rng.randint(1, 30)), 0.3)))
    rng.shuffle(hs)
    # The marker is never signed, so a verifier must not depend on where it sits.
    hs.insert(rng.randint(0, len(hs)), ("X-Corpus-Case", "X-Corpus-Case: %s\r\n" % cid))
    return hs


def text_line(rng, utf8):
    line = rng.choice(["", "", "", wsp(rng)])  # leading WSP survives both canonicalisations
    for i, w in enumerate(words(rng, rng.randint(1, 14), utf8)):
        line += (rng.choice([" ", " ", " ", wsp(rng), "\t"]) if i else "") + w
    if rng.random() < 0.3:
        line += wsp(rng)
    return line


def long_line(rng):
    target, line = rng.randint(200, MAX_LINE), ""
    while True:
        w = rng.choice([" ", " ", wsp(rng)]) + rng.choice(ASCII_WORDS + UTF8_WORDS)
        if len((line + w).encode()) > target:
            return line or "x"
        line += w


def body_line(rng, utf8):
    kind = rng.choices(["text", "ws", "empty", "long", "dot", "tabs"], [10, 3, 3, 1, 1, 1])[0]
    if kind == "text":
        return text_line(rng, utf8)
    if kind == "ws":
        return wsp(rng, 1, 8)
    if kind == "long":
        return long_line(rng)
    if kind == "dot":  # leading dots test the sender's dot-stuffing; never a lone "."
        return rng.choice([".", "..", ". "]) + rng.choice(ASCII_WORDS)
    if kind == "tabs":
        return "\t".join(rng.choice(ASCII_WORDS + ["", ""]) for _ in range(rng.randint(2, 6))) + "x"
    return ""


def make_body(rng):
    shape = rng.choices(["empty", "crlf", "wsonly", "text"], [1, 1, 1, 6])[0]
    if shape == "empty":
        return [], shape
    if shape == "crlf":
        return [""] * rng.randint(1, 5), shape
    if shape == "wsonly":
        return [rng.choice(["", wsp(rng, 1, 6)]) for _ in range(rng.randint(1, 6))], shape
    utf8 = rng.choice([0, 0, 0.2, 0.8])
    lines = [body_line(rng, utf8) for _ in range(rng.randint(1, 15))]
    tail = rng.choice(["none", "none", "empty", "ws", "mixed"])
    n = rng.randint(1, 4)
    if tail == "empty":
        lines += [""] * n
    elif tail == "ws":
        lines += [wsp(rng) for _ in range(n)]
    elif tail == "mixed":
        lines += [rng.choice(["", wsp(rng)]) for _ in range(n)]
    return lines, shape


def render(hs, body_lines, domain):
    text = "".join(h for _, h in hs) + "\r\n" + "".join(l + "\r\n" for l in body_lines)
    raw = text.replace(DOM, domain).encode()
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(l) <= 990 - 2 for l in raw.split(b"\r\n"))
    return raw


# ---------------------------------------------------------------- tampering

def content_line(lines):
    return [i for i, l in enumerate(lines) if l.strip(" \t")]


def tamper_ok(kind, lines, hs):
    if kind == "change_letter":
        return any(re.search("[A-Za-z]", l) for l in lines)
    if kind == "header_ws":
        return any(n in ("Subject", "To") for n, _ in hs)
    return True


def apply_tamper(rng, kind, raw):
    """Tamper with the signed message; returns new bytes."""
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = body.split(b"\r\n")[:-1] if body else []
    if kind == "trailing_ws":
        # On a content line, so that it stays inside l= even for simple bodies.
        idx = content_line([l.decode() for l in lines]) or [0]
        i = rng.choice(idx)
        if not lines:
            lines = [b""]
        lines[i] += wsp(rng).encode()
    elif kind == "empty_line":
        lines.append(b"")
    elif kind == "change_letter":
        spots = [(i, m.start()) for i, l in enumerate(lines) for m in re.finditer(rb"[A-Za-z]", l)]
        i, j = rng.choice(spots)
        c = lines[i][j:j + 1]
        lines[i] = lines[i][:j] + (c.swapcase() if c.isalpha() else b"q") + lines[i][j + 1:]
    elif kind == "append_line":
        lines.append(b"Appended after signing.")
    elif kind == "header_ws":
        # Widen the WSP after the colon of Subject (or To): relaxed headers don't see it.
        name = b"subject" if re.search(rb"(?im)^subject:", head) else b"to"
        head = re.sub(rb"(?im)^(" + name + rb":)", lambda m: m.group(1) + b" \t ", head, count=1)
    return head + b"\r\n\r\n" + b"".join(l + b"\r\n" for l in lines)


def expected(kind, canon, length, body_empty):
    """Verdict RFC 6376 predicts for a dkimpy-signed case."""
    hcanon, bcanon = canon.split("/")
    if kind is None or kind == "empty_line":
        return True
    if kind == "trailing_ws":
        return bcanon == "relaxed"
    if kind == "change_letter":
        return False
    if kind == "append_line":
        # A simple empty body canonicalises to CRLF, which the appended line doesn't start with.
        return length and not (bcanon == "simple" and body_empty)
    if kind == "header_ws":
        return hcanon == "relaxed"
    raise ValueError(kind)


def generate(args):
    out = args.out
    for d in ("unsigned", "dkimpy"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    privs, recs = make_keys(os.path.join(out, "keys"))
    with open(os.path.join(out, "dns.txt"), "w") as f:
        for dom in (DKIMPY_DOMAIN, ODKIM_DOMAIN):
            for sel in ("rsa", "ed"):
                f.write("%s._domainkey.%s %s\n" % (sel, dom, recs[sel]))
    rng = random.Random(args.seed)
    cases = []
    for n in range(args.count):
        cid = "c%05d" % n
        canon, alg = COMBOS[n % len(COMBOS)]
        length = rng.random() < 1 / 8
        hs = make_headers(rng, cid)
        lines, shape = make_body(rng)
        tamper = None
        if rng.random() < 0.12 or (length and rng.random() < 0.4):  # ~1 in 6 overall
            tamper = "append_line" if length and rng.random() < 0.5 else rng.choice(TAMPERS)
            if not tamper_ok(tamper, lines, hs):
                tamper = "append_line"
        with open(os.path.join(out, "unsigned", cid + ".eml"), "wb") as f:
            f.write(render(hs, lines, ODKIM_DOMAIN))
        msg = render(hs, lines, DKIMPY_DOMAIN)
        signed = [name for name, _ in hs if name in SIGN_HEADERS]
        sig = dkim.sign(msg, SELECTORS[alg].encode(), DKIMPY_DOMAIN.encode(), privs[alg],
                        canonicalize=tuple(c.encode() for c in canon.split("/")),
                        signature_algorithm=alg.encode(), include_headers=signed, length=length)
        msg = sig + msg
        if tamper:
            msg = apply_tamper(rng, tamper, msg)
        with open(os.path.join(out, "dkimpy", cid + ".eml"), "wb") as f:
            f.write(msg)
        cases.append({"id": cid, "canon": canon, "alg": alg, "l": length, "tamper": tamper,
                      "body": shape, "expect": expected(tamper, canon, length, not lines)})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


# ---------------------------------------------------------------- verify

def verify(args):
    recs = load_dns(args.dns)

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return recs.get(name.rstrip(".").lower())

    for path in args.files:
        with open(path, "rb") as f:
            msg = f.read()
        res = {"file": path, "case": None, "sigs": []}
        try:
            d = dkim.DKIM(msg)
        except Exception as e:  # noqa: BLE001 - an unparsable message is a verdict too
            res["error"] = repr(e)
            print(json.dumps(res))
            continue
        idx = 0
        for name, value in d.headers:
            lname = name.lower()
            if lname == b"x-corpus-case" and res["case"] is None:
                res["case"] = value.strip().decode(errors="replace")
            if lname != b"dkim-signature":
                continue
            try:
                tags = parse_tag_value(re.sub(rb"\s+", b"", value))
            except Exception:  # noqa: BLE001
                tags = {}
            sig = {"d": tags.get(b"d", b"").decode(errors="replace"),
                   "s": tags.get(b"s", b"").decode(errors="replace")}
            try:
                sig["pass"] = bool(d.verify(idx=idx, dnsfunc=dnsfunc))
            except Exception as e:  # noqa: BLE001
                sig["pass"], sig["error"] = False, repr(e)
            res["sigs"].append(sig)
            idx += 1
        print(json.dumps(res))


# ---------------------------------------------------------------- OpenDKIM

def opendkim_conf(args):
    keys = os.path.abspath(args.keys)
    conf = os.path.abspath(args.out)
    lines = ["Syslog no", "Socket inet:%d@127.0.0.1" % args.port,
             "PidFile %s/opendkim-%d.pid" % (keys, args.port),
             "RequireSafeKeys false", "InternalHosts 127.0.0.1"]
    if args.mode == "v":
        if not args.dns:
            sys.exit("--mode v needs --dns")
        lines += ["Mode v", "TestDNSData file:%s" % os.path.abspath(args.dns),
                  "AuthservID verifier.example", "AlwaysAddARHeader yes"]
    else:
        # 2.11.0~beta2 takes the algorithm from SignatureAlgorithm for every signature of an
        # instance (an Ed25519 key with rsa-sha256 fails: "resource unavailable"), so one
        # instance signs with one key; chain two milters for an RSA and an Ed25519 signature.
        sel = SELECTORS[args.alg]
        kt, st = conf + ".keytable", conf + ".signingtable"
        with open(kt, "w") as f:
            f.write("%s %s:%s:%s/%s\n" % (sel, ODKIM_DOMAIN, sel, keys, KEY_FILES[args.alg]))
        with open(st, "w") as f:
            f.write("*@%s %s\n" % (ODKIM_DOMAIN, sel))
        lines += ["Mode s", "Canonicalization %s" % args.canon, "SignatureAlgorithm %s" % args.alg,
                  "KeyTable file:%s" % kt, "SigningTable refile:%s" % st,
                  "SignHeaders From,To,Subject,Date,Message-ID"]
        if args.alg == "ed25519-sha256" and args.canon.startswith("simple"):
            print("warning: OpenDKIM 2.11.0~beta2 makes invalid ed25519 signatures with simple "
                  "header canonicalisation", file=sys.stderr)
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- send

def send(args):
    """Each file as it is, from --source to 127.0.0.1:--port over 8 reused connections (one
    sequential connection waits ~90 ms a message on round trips), --header on top."""
    import queue
    import smtplib
    import threading

    todo = queue.Queue()
    for path in args.files:
        todo.put(path)
    errors = []

    def connect():
        return smtplib.SMTP("127.0.0.1", args.port, local_hostname="corpus.example",
                            source_address=(args.source, 0), timeout=60)

    def worker():
        conn = connect()
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                break
            with open(path, "rb") as f:
                msg = f.read()
            if args.header:
                msg = args.header.encode() + b"\r\n" + msg
            opts = ["BODY=8BITMIME"] if any(b > 127 for b in msg) else []
            try:
                conn.sendmail(args.mail_from, ["someone@elsewhere.example"], msg, opts)
            except (smtplib.SMTPException, OSError) as e:
                errors.append("%s: %r" % (path, e))
                try:
                    conn.rset()
                except (smtplib.SMTPException, OSError):
                    conn = connect()
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(1 if errors else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--count", type=int, required=True)
    g.add_argument("--out", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--dns", required=True)
    v.add_argument("files", nargs="+")
    o = sub.add_parser("opendkim-conf")
    o.add_argument("--keys", required=True)
    o.add_argument("--canon", default="relaxed/relaxed", choices=CANONS)
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--alg", default="rsa-sha256", choices=list(SELECTORS))
    o.add_argument("--mode", default="s", choices=["s", "v"])
    o.add_argument("--dns", help="dns.txt for --mode v (TestDNSData)")
    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--source", required=True)
    s.add_argument("--from", dest="mail_from", required=True)
    s.add_argument("--header")
    s.add_argument("files", nargs="+")
    a = p.parse_args()
    {"generate": generate, "verify": verify, "opendkim-conf": opendkim_conf, "send": send}[a.cmd](a)


if __name__ == "__main__":
    main()
