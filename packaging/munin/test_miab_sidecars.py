"""Tests for the Munin plugin miab_sidecars and the Grafana dashboard, standard library only:
python3 -m unittest packaging/munin/test_miab_sidecars.py (from the repository root), or
python3 packaging/munin/test_miab_sidecars.py.

Fake sidecars serve sample /metrics texts over HTTP (on 127.0.0.1 and on a UNIX socket); the
plugin runs as a subprocess, as munin-node runs it.
"""

import http.server
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from string import Template

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(HERE, "miab_sidecars")
DASHBOARD = os.path.join(HERE, "..", "grafana", "miab-sidecars.json")
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SNAPSHOT_AGE = 42

# Every family the daemons export (text format names).
COUNTERS = """connections_accepted_total connections_waited_for_slot_total lookup_queries_total
    policyd_check_verdicts_total policyd_answers_total policyd_list_answers_total
    authd_authentications_total milter_auth_results_total milter_signatures_total
    directory_rebuild_failures_total journal_entries_total journal_dropped_total
    policyd_holds_total""".split()
GAUGES = """connections_open directory_snapshot_timestamp_seconds
    directory_entries""".split()
HISTOGRAMS = """lookup_seconds policyd_check_seconds policyd_dns_seconds store_seconds
    milter_verify_seconds directory_rebuild_seconds""".split()
KNOWN = {"miab_" + n for n in COUNTERS + GAUGES} | {
    f"miab_{h}{suffix}" for h in HISTOGRAMS for suffix in ("", "_bucket", "_sum", "_count")}


def histogram(name, labels, total, count):
    """A histogram's lines, its observations spread over three buckets."""
    lab = labels + "," if labels else ""
    brace = "{" + labels + "}" if labels else ""
    lines = [f'{name}_bucket{{{lab}le="{le}"}} {n}'
             for le, n in (("0.001", count // 2), ("0.01", count - 1), ("+Inf", count))]
    return "\n".join(lines + [f"{name}_sum{brace} {total}", f"{name}_count{brace} {count}"])


COMMON = Template("""# HELP miab_connections_open Connections open now, per listener
# TYPE miab_connections_open gauge
miab_connections_open{listener="$listener"} $open
miab_connections_open{listener="inet:127.0.0.1:10023"} 1
# TYPE miab_connections_accepted_total counter
miab_connections_accepted_total{listener="$listener"} 1234
# TYPE miab_connections_waited_for_slot_total counter
miab_connections_waited_for_slot_total{listener="$listener"} 0
# TYPE miab_directory_snapshot_timestamp_seconds gauge
miab_directory_snapshot_timestamp_seconds $snapshot
# TYPE miab_directory_entries gauge
miab_directory_entries 17
# TYPE miab_directory_rebuild_seconds histogram
$rebuild
# TYPE miab_directory_rebuild_failures_total counter
miab_directory_rebuild_failures_total 0
# TYPE miab_journal_entries_total counter
miab_journal_entries_total 99
# TYPE miab_journal_dropped_total counter
miab_journal_dropped_total 0
""")


def sample(daemon, k):
    """daemon's /metrics text at scrape round k (1, 2): counters and histograms move."""
    common = COMMON.substitute(listener=f"unix:/run/{daemon}", open=2,
                               snapshot=f"{time.time() - SNAPSHOT_AGE:.3f}",
                               rebuild=histogram("miab_directory_rebuild_seconds", "", 0.02, 3))
    if daemon == "lookup":
        return common + f"""# HELP miab_lookup_queries Postfix's socketmap lookups by map and answer
# TYPE miab_lookup_queries_total counter
miab_lookup_queries_total{{map="aliases",answer="found"}} {100 * k}
miab_lookup_queries_total{{map="mailboxes",answer="notfound"}} 20
miab_lookup_queries_total{{map="domains",answer="temp"}} 1
# TYPE miab_lookup_seconds histogram
{histogram("miab_lookup_seconds", 'map="aliases"', (0.01, 0.012)[k - 1], 1000 + 100 * (k - 1))}
{histogram("miab_lookup_seconds", 'map="domains"', 0.001, 300)}
"""
    if daemon == "policyd":
        v = "miab_policyd_check_verdicts_total"
        return common + f"""# TYPE miab_policyd_answers_total counter
miab_policyd_answers_total{{answer="dunno"}} {50 * k}
miab_policyd_answers_total{{answer="defer_if_permit"}} {7 * k}
miab_policyd_answers_total{{answer="reject"}} 3
# TYPE {v} counter
{v}{{check="greylist",outcome="dunno",answer="dunno"}} {40 * k}
{v}{{check="greylist",outcome="stop",answer="defer_if_permit"}} {7 * k}
{v}{{check="greylist",outcome="prepend",answer="prepend"}} 4
{v}{{check="greylist",outcome="failed_open",answer="dunno"}} 1
{v}{{check="dnsbl",outcome="failed_open",answer="dunno"}} 2
{v}{{check="dnsbl",outcome="stop",answer="reject"}} 3
{v}{{check="sender_login",outcome="failed_closed",answer="tempfail"}} 1
# TYPE miab_policyd_check_seconds histogram
{histogram("miab_policyd_check_seconds", 'check="greylist"', (0.5, 0.8)[k - 1], (100, 160)[k - 1])}
{histogram("miab_policyd_check_seconds", 'check="dnsbl"', 1.5, 60)}
# TYPE miab_policyd_dns_seconds histogram
{histogram("miab_policyd_dns_seconds", 'lookup="dnsbl"', 1.2, 60)}
# TYPE miab_policyd_list_answers_total counter
miab_policyd_list_answers_total{{list="client",result="listed"}} {3 * k}
miab_policyd_list_answers_total{{list="client",result="list_error"}} 1
miab_policyd_list_answers_total{{list="client",result="clean"}} 500
miab_policyd_list_answers_total{{list="sender",result="timeout"}} 2
# TYPE miab_store_seconds histogram
{histogram("miab_store_seconds", 'store="greylist"', 0.3, 110)}
# TYPE miab_policyd_holds_total counter
miab_policyd_holds_total{{event="message_held"}} 0
"""
    if daemon == "authd":
        a = "miab_authd_authentications_total"
        return common + f"""# TYPE {a} counter
{a}{{service="smtp",mechanism="plain",result="ok_password"}} {10 * k}
{a}{{service="smtp",mechanism="login",result="ok_cached"}} 30
{a}{{service="imap",mechanism="plain",result="ok_app_password"}} 5
{a}{{service="imap",mechanism="plain",result="failed"}} 4
{a}{{service="smtp",mechanism="login",result="failed"}} 2
{a}{{service="smtp",mechanism="login",result="braked"}} {9 * k}
"""
    r = "miab_milter_auth_results_total"
    return common + f"""# TYPE {r} counter
{r}{{method="dkim",result="pass"}} {10 * k}
{r}{{method="dkim",result="fail"}} 1
{r}{{method="dkim",result="policy"}} 1
{r}{{method="spf",result="pass"}} 8
{r}{{method="spf",result="softfail"}} 2
{r}{{method="spf",result="fail"}} 1
{r}{{method="spf",result="none"}} 3
{r}{{method="dmarc",result="pass"}} 7
{r}{{method="dmarc",result="none"}} 5
# TYPE miab_milter_signatures_total counter
miab_milter_signatures_total{{outcome="signed"}} {5 * k}
# TYPE miab_milter_verify_seconds histogram
{histogram("miab_milter_verify_seconds", "", 2.5, 30)}
"""


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = sample(self.server.daemon, self.server.round).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(daemon, unix_path=None):
    """A fake daemon's metrics endpoint; returns (server, its metrics_listen)."""
    if unix_path:
        server = UnixHTTPServer(unix_path, Handler)
        addr = f"unix:{unix_path}"
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        addr = f"inet:127.0.0.1:{server.server_address[1]}"
    server.daemon, server.round = daemon, 1
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, addr


def dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text):
    """{graph: [lines]} of the plugin's multigraph output."""
    graphs, current = {}, None
    for line in text.splitlines():
        if line.startswith("multigraph "):
            current = line.split(None, 1)[1]
            graphs[current] = []
        else:
            assert current is not None, f"line before any multigraph: {line!r}"
            graphs[current].append(line)
    return graphs


class Plugin(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.state = os.path.join(self.tmp.name, "state")
        os.mkdir(self.state)
        self.servers = {}

    def start(self, daemon, unix=False):
        path = os.path.join(self.tmp.name, daemon + ".sock") if unix else None
        server, addr = serve(daemon, path)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.servers[daemon] = server
        return addr

    def write_config(self, listen):
        path = os.path.join(self.tmp.name, "sidecars.toml")
        with open(path, "w") as f:
            f.write('storage_root = "/home/user-data"\n[dns]\ntimeout_ms = 2000\n')
            for daemon, addr in listen.items():
                f.write(f'[{daemon}]\nlisten = "unix:/x"\nmetrics_listen = "{addr}"\n')
        return path

    def run_plugin(self, config, *args, plugstate=True):
        env = {k: v for k, v in os.environ.items() if k != "MUNIN_PLUGSTATE"}
        env["config"] = config
        if plugstate:
            env["MUNIN_PLUGSTATE"] = self.state
        r = subprocess.run([sys.executable, PLUGIN, *args], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")
        return r.stdout

    def check_config(self, config_text):
        """{graph: {field: {attr: value}}}, checking the graph attributes on the way."""
        out = {}
        for graph, lines in parse(config_text).items():
            self.assertTrue(graph.startswith("miab_"), graph)
            attrs = dict(line.split(" ", 1) for line in lines)
            self.assertEqual(attrs["graph_category"], "mail")
            for key in ("graph_title", "graph_vlabel", "graph_info"):
                self.assertIn(key, attrs)
            fields = out[graph] = {}
            for key, value in attrs.items():
                if not key.startswith("graph_"):
                    field, attr = key.split(".")
                    self.assertRegex(field, FIELD)
                    fields.setdefault(field, {})[attr] = value
            for field, a in fields.items():
                self.assertIn("label", a, f"{graph}.{field}")
                if a.get("type") == "DERIVE":
                    self.assertEqual(a.get("min"), "0", f"{graph}.{field}")
                    self.assertEqual(attrs.get("graph_period"), "minute", graph)
        return out

    def fetch(self, config, conf, **kw):
        """{graph: {field: value}}, checked against conf (check_config's answer)."""
        out = {}
        for graph, lines in parse(self.run_plugin(config, **kw)).items():
            self.assertIn(graph, conf, "graph fetched but not in config")
            values = out[graph] = {}
            for line in lines:
                key, value = line.split(" ", 1)
                field, attr = key.split(".")
                self.assertEqual(attr, "value", line)
                self.assertRegex(field, FIELD)
                self.assertIn(field, conf[graph], f"{graph}.{field} has no label")
                if conf[graph][field].get("type") == "DERIVE":
                    self.assertRegex(value, r"^(U|\d+)$", f"{graph}.{field}")
                else:
                    self.assertRegex(value, r"^(U|-?\d+(\.\d+)?)$", f"{graph}.{field}")
                values[field] = value
        self.assertEqual(set(out), set(conf), "config and fetch differ in graphs")
        return out

    def test_config_and_two_fetches(self):
        config = self.write_config({
            "lookup": self.start("lookup"),
            "policyd": self.start("policyd", unix=True),
            "authd": self.start("authd"),
            "milter": self.start("milter"),
        })
        self.assertEqual(self.run_plugin(config, "autoconf"), "yes\n")
        conf = self.check_config(self.run_plugin(config, "config"))
        self.assertEqual(conf["miab_connections"].keys(), {"lookup", "policyd", "authd", "milter"})

        first = self.fetch(config, conf)
        self.assertEqual(first["miab_policyd_answers"]["dunno"], "50")
        self.assertEqual(first["miab_policyd_answers"]["hold"], "0")
        self.assertEqual(first["miab_policyd_failures"], {"failed_open": "3", "failed_closed": "1"})
        self.assertEqual(first["miab_policyd_greylist"]["stop"], "7")
        self.assertEqual(first["miab_policyd_dnslists"]["client_list_error"], "1")
        self.assertEqual(first["miab_policyd_dnslists"]["sender_timeout"], "2")
        self.assertEqual(first["miab_authd_authentications"]["failed"], "6")
        self.assertEqual(first["miab_authd_authentications"]["braked"], "9")
        self.assertEqual(first["miab_milter_results"]["dkim_other"], "1")
        self.assertEqual(first["miab_milter_results"]["spf_fail"], "3")
        self.assertEqual(first["miab_milter_results"]["spf_other"], "3")
        self.assertEqual(first["miab_milter_results"]["dmarc_fail"], "0")
        self.assertEqual(first["miab_milter_signatures"], {"signed": "5", "failed": "0"})
        self.assertEqual(first["miab_lookup_queries"]["found"], "100")
        self.assertEqual(first["miab_connections"]["policyd"], "3")
        age = float(first["miab_directory_age"]["lookup"])
        self.assertTrue(SNAPSHOT_AGE - 1 <= age < SNAPSHOT_AGE + 10, age)
        # No previous values yet: no averages.
        self.assertEqual(set(first["miab_policyd_latency"].values()), {"U"})
        self.assertEqual(set(first["miab_lookup_latency"].values()), {"U"})

        for server in self.servers.values():
            server.round = 2
        second = self.fetch(config, conf)
        self.assertEqual(second["miab_policyd_answers"]["dunno"], "100")
        # greylist: 0.3 s over 60 checks; aliases: 2 ms over 100 lookups.
        self.assertAlmostEqual(float(second["miab_policyd_latency"]["greylist"]), 5.0, places=3)
        self.assertAlmostEqual(float(second["miab_lookup_latency"]["aliases"]), 0.02, places=3)
        # No new observations, or none at all: no average.
        self.assertEqual(second["miab_policyd_latency"]["dnsbl"], "U")
        self.assertEqual(second["miab_policyd_latency"]["rhsbl"], "U")
        self.assertEqual(second["miab_lookup_latency"]["domains"], "U")

        # Without MUNIN_PLUGSTATE, no state and no averages.
        third = self.fetch(config, conf, plugstate=False)
        self.assertEqual(set(third["miab_policyd_latency"].values()), {"U"})
        self.assertEqual(third["miab_policyd_answers"]["dunno"], "100")

    def test_dead_and_silent_endpoints(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connects, never answers
        config = self.write_config({
            "lookup": self.start("lookup"),
            "authd": f"inet:127.0.0.1:{silent.getsockname()[1]}",
            "milter": f"inet:127.0.0.1:{dead_port()}",
        })
        self.assertEqual(self.run_plugin(config, "autoconf"), "yes\n")
        conf = self.check_config(self.run_plugin(config, "config"))
        self.assertNotIn("miab_policyd_answers", conf)
        started = time.monotonic()
        got = self.fetch(config, conf)
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(set(got["miab_authd_authentications"].values()), {"U"})
        self.assertEqual(set(got["miab_milter_results"].values()), {"U"})
        self.assertEqual(got["miab_connections"]["milter"], "U")
        self.assertEqual(got["miab_connections"]["lookup"], "3")
        self.assertEqual(got["miab_lookup_queries"]["found"], "100")

    def test_nothing_answers(self):
        config = self.write_config({"milter": f"inet:127.0.0.1:{dead_port()}",
                                    "lookup": f"unix:{self.tmp.name}/absent.sock"})
        self.assertTrue(self.run_plugin(config, "autoconf").startswith("no ("))
        conf = self.check_config(self.run_plugin(config, "config"))
        got = self.fetch(config, conf)
        self.assertTrue(all(v == "U" for g in got.values() for v in g.values()), got)

    def test_off_and_defaults(self):
        config = self.write_config({"lookup": ""})
        self.assertTrue(self.run_plugin(config, "autoconf").startswith("no ("))
        self.assertEqual(self.run_plugin(config, "config"), "")
        self.assertEqual(self.run_plugin(config), "")
        absent = os.path.join(self.tmp.name, "absent.toml")
        conf = self.check_config(self.run_plugin(absent, "config"))
        self.assertEqual(conf["miab_connections"].keys(), {"lookup", "policyd", "authd", "milter"})


class Dashboard(unittest.TestCase):
    def test_dashboard(self):
        with open(DASHBOARD, encoding="utf-8") as f:
            text = f.read()
        board = json.loads(text)
        self.assertEqual(board["schemaVersion"], 39)
        self.assertEqual([i["name"] for i in board["__inputs"]], ["DS_PROMETHEUS"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        self.assertIn("label_values(miab_connections_open, instance)",
                      json.dumps(variables["instance"]["query"]))
        panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
        ids = [p["id"] for p in panels]
        self.assertEqual(len(ids), len(set(ids)), "panel ids repeat")
        exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
        self.assertGreater(len(exprs), 15)
        for p in panels:
            for t in p.get("targets", []):
                self.assertEqual(t["datasource"]["uid"], "${DS_PROMETHEUS}", p["title"])
        for expr in exprs:
            self.assertIn('instance=~"$instance"', expr)
        unknown = set(re.findall(r"\bmiab_[a-z_]+", text)) - KNOWN
        self.assertEqual(unknown, set(), "names that are no metric family")
        used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\bmiab_[a-z_]+", text)}
        for family in ("miab_policyd_answers_total", "miab_authd_authentications_total",
                       "miab_milter_auth_results_total", "miab_journal_dropped_total",
                       "miab_directory_snapshot_timestamp_seconds", "miab_store_seconds"):
            self.assertIn(family, used)


if __name__ == "__main__":
    unittest.main()
