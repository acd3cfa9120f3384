#!/usr/bin/python3
"""Mail clients for the checks, run inside the box with Debian's python3.

  probe.py smtp-auth USER PASSWORD [PORT]     AUTH on 465 (SSL) or 587 (STARTTLS):
                                              exit 0 accepted, 3 refused with 535, 1 other
  probe.py imap-login USER PASSWORD           IMAPS 993 login: exit 0 ok, 3 refused, 1 other
  probe.py send USER PASSWORD TO SUBJECT [PORT]
                                              authenticated submission of a short message
  probe.py fetch USER PASSWORD SUBJECT OUT    waits (60 s) for the message in INBOX, writes it
                                              raw to OUT and deletes it
  probe.py burst USER PASSWORD N TO SUBJECT   N messages in one session on 587, each to its own
                                              recipient TO with +SUBJECT-i before the @
  probe.py imap-from SOURCE USER PASSWORD     IMAPS 993 login from the local address SOURCE
                                              (a client that is not the webmail proxy): exit
                                              0 ok, 3 refused, 1 other
  probe.py imap-timing USER PASSWORD N        N IMAP logins one after another on 127.0.0.1:143
                                              (plain, as Nextcloud logs in), each timed
                                              from LOGIN to its answer: prints p50/p95/max
  probe.py strangers USER N FIRST             N wrong-password IMAPS logins for USER at once,
                                              from 127.0.0.FIRST, FIRST+1, ...
"""
import imaplib
import smtplib
import socket
import ssl
import sys
import threading
import time
import uuid
from email.utils import formatdate, make_msgid

HOST = "box.example.org"


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def smtp(port):
    if port == 465:
        return smtplib.SMTP_SSL(HOST, 465, context=ctx(), timeout=30)
    s = smtplib.SMTP(HOST, port, timeout=30)
    s.starttls(context=ctx())
    return s


def smtp_auth(user, pw, port=465):
    s = smtp(port)
    try:
        s.login(user, pw)
    except smtplib.SMTPAuthenticationError as e:
        print("SMTP AUTH %s on %d refused: %s %s" % (user, port, e.smtp_code, e.smtp_error))
        return 3 if e.smtp_code == 535 else 1
    finally:
        try:
            s.quit()
        except Exception:
            pass
    print("SMTP AUTH %s on %d accepted" % (user, port))
    return 0


def imap_login(user, pw):
    m = imaplib.IMAP4_SSL(HOST, 993, ssl_context=ctx())
    try:
        m.login(user, pw)
    except imaplib.IMAP4.error as e:
        print("IMAP login %s refused: %s" % (user, e))
        return 3
    m.logout()
    print("IMAP login %s accepted" % user)
    return 0


class IMAP4_SSL_From(imaplib.IMAP4_SSL):
    """IMAPS from a given local address."""

    def __init__(self, source, *a, **k):
        self.source = source
        super().__init__(*a, **k)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_from(source, user, pw):
    m = IMAP4_SSL_From(source, HOST, 993, ssl_context=ctx(), timeout=60)
    try:
        m.login(user, pw)
    except imaplib.IMAP4.error as e:
        print("IMAP login %s from %s refused: %s" % (user, source, e))
        return 3
    m.logout()
    print("IMAP login %s from %s accepted" % (user, source))
    return 0


def imap_timing(user, pw, n):
    times = []
    for _ in range(n):
        m = imaplib.IMAP4("127.0.0.1", 143, timeout=60)
        t0 = time.perf_counter()
        m.login(user, pw)
        times.append((time.perf_counter() - t0) * 1000)
        m.logout()
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print("%d IMAP logins of %s: p50 %.2f ms, p95 %.2f ms, max %.2f ms"
          % (n, user, pick(0.5), pick(0.95), times[-1]))
    return 0


def strangers(user, n, first):
    codes = []

    def one(i):
        codes.append(imap_from("127.0.0.%d" % (first + i), user, "wrong-%d" % i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = sum(1 for c in codes if c == 3)
    print("%d of %d strangers refused" % (refused, n))
    return 0 if refused == n else 1


def send(user, pw, to, subject, port=465):
    msg = (
        "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\n\r\n"
        "A live-box probe message %s.\r\n"
        % (user, to, subject, formatdate(localtime=True), make_msgid(domain=user.split("@")[1]), uuid.uuid4().hex)
    )
    s = smtp(port)
    s.login(user, pw)
    s.sendmail(user, [to], msg)
    s.quit()
    print("sent %r from %s to %s on %d" % (subject, user, to, port))
    return 0


def burst(user, pw, n, to, subject):
    local, domain = to.split("@")
    s = smtp(587)
    s.login(user, pw)
    for i in range(n):
        rcpt = "%s+%s-%d@%s" % (local, subject, i, domain)
        msg = "From: <%s>\r\nTo: <%s>\r\nSubject: %s %d\r\nDate: %s\r\n\r\nA burst.\r\n" % (
            user, rcpt, subject, i, formatdate(localtime=True))
        s.sendmail(user, [rcpt], msg)
    s.quit()
    print("sent %d messages from %s" % (n, user))
    return 0


def fetch(user, pw, subject, out):
    m = imaplib.IMAP4_SSL(HOST, 993, ssl_context=ctx())
    m.login(user, pw)
    deadline = time.time() + 60
    while True:
        m.select("INBOX")
        typ, data = m.search(None, "SUBJECT", '"%s"' % subject)
        nums = data[0].split()
        if nums:
            typ, msgdata = m.fetch(nums[-1], "(RFC822)")
            with open(out, "wb") as f:
                f.write(msgdata[0][1])
            for n in nums:
                m.store(n, "+FLAGS", "\\Deleted")
            m.expunge()
            m.logout()
            print("fetched %r for %s" % (subject, user))
            return 0
        if time.time() > deadline:
            print("no message %r in %s's INBOX after 60 s" % (subject, user))
            return 1
        m.close()
        time.sleep(1)


def main():
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "smtp-auth":
        return smtp_auth(a[0], a[1], int(a[2]) if len(a) > 2 else 465)
    if cmd == "imap-login":
        return imap_login(a[0], a[1])
    if cmd == "send":
        return send(a[0], a[1], a[2], a[3], int(a[4]) if len(a) > 4 else 465)
    if cmd == "burst":
        return burst(a[0], a[1], int(a[2]), a[3], a[4])
    if cmd == "fetch":
        return fetch(a[0], a[1], a[2], a[3])
    if cmd == "imap-from":
        return imap_from(a[0], a[1], a[2])
    if cmd == "imap-timing":
        return imap_timing(a[0], a[1], int(a[2]))
    if cmd == "strangers":
        return strangers(a[0], int(a[1]), int(a[2]))
    print("unknown command " + cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
