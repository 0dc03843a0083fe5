#!/usr/bin/env python3
"""pyfpm side by side with uWSGI, PHP-FPM, Gunicorn, Granian and flup (issue 5).

Run through benches/run.sh, which installs the peers and builds pyfpm first. Standard
library only. What it does, in one run:

- starts every backend itself, each with 2 worker processes, on Unix sockets in a
  private temp dir (only Granian's standalone row listens on 127.0.0.1, for wrk), and
  one nginx (worker_processes 1, access_log off) with one loopback server per scenario;
- checks every (scenario, app) pair once with a real request; a pair that fails is
  reported in the table with the reason and never measured;
- warms every pair up, then runs bounded wrk runs in rounds; within a round the
  scenarios alternate for each (app, connections) pair, so slow drift of the machine
  spreads over all rows instead of favouring whichever ran first;
- per run reads the backend's and nginx's CPU time from /proc/<pid>/stat (every process
  of the tree) and the backend's RSS/PSS from /proc/<pid>/smaps_rollup;
- prints a table and writes it as markdown and JSON into benches/results/;
- stops every process it started by pid and removes the temp dir.

Nothing here asserts a speed: it measures and reports.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCHES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHES)
APPS = os.path.join(BENCHES, "apps")
VENV = os.path.join(BENCHES, ".venv")
WRK_LUA = os.path.join(BENCHES, "wrk.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")

HELLO = b"Hello, World!"
ECHO_BYTES = 64 * 1024
# 125 rows of the three parameters make a page of 10,2xx bytes (checked in preflight).
PAGE_QUERY = "rows=125&title=benchmark&user=pyfpm"

# app name -> (request path, what wrk sends, a check of one response body)
APP_DEFS = {
    "hello": ("/hello", None, lambda b: b == HELLO),
    "page": ("/page?" + PAGE_QUERY, None, lambda b: 9 * 1024 <= len(b) <= 11 * 1024),
    "echo": ("/echo", ECHO_BYTES, None),  # checked against the body sent
    "flask": ("/flask?name=bench", None, lambda b: b"Hello, bench!" in b),
}
ALL_APPS = list(APP_DEFS)

# A run is flagged as stalled when wrk's mean latency is below this fraction of what
# Little's law predicts (connections / throughput): then some connections spent most of
# the run waiting without completing requests (e.g. idle kept connections pinning
# prefork workers), and the completed requests' latency hides it.
STALL_RATIO = 0.5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# /proc readings


def proc_tree(root, leaves=False):
    """`root` and all its descendants that are alive now; with `leaves`, only those of
    them that have no children (the serving workers, whatever sits above them)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if not leaves or pid not in children:
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ticks(root):
    """CPU time of a process tree in clock ticks: utime+stime of every live process plus
    cutime+cstime (children already reaped are counted in their parent's c-times)."""
    total = 0
    for pid in proc_tree(root):
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): utime..cstime are fields 14..17.
        total += sum(int(x) for x in fields[11:15])
    return total


def rss_pss(pid):
    """(RSS KiB, PSS KiB) of one process, from smaps_rollup; None when it is gone."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            text = f.read()
    except OSError:
        return None
    r = p = 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            r = int(line.split()[1])
        elif line.startswith("Pss:"):
            p = int(line.split()[1])
    return r, p


def memory(root):
    """(total RSS KiB, total PSS KiB, process count, [RSS KiB of each worker]): totals
    over the whole tree; workers are the processes without children (a master, manager,
    arbiter or preload zygote above them is counted in the totals only)."""
    rss = pss = count = 0
    for pid in proc_tree(root):
        got = rss_pss(pid)
        if got:
            rss += got[0]
            pss += got[1]
            count += 1
    workers = [got[0] for got in map(rss_pss, proc_tree(root, leaves=True)) if got]
    return rss, pss, count, workers


# ---------------------------------------------------------------------------------------
# processes


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process this run started: its own session, output to a log file, stopped by pid."""

    def __init__(self, name, argv, tmp, stop_signal=signal.SIGTERM, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.stop_signal = stop_signal
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def tail(self, lines=6):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout=10.0):
        """The server's own stop signal, then SIGKILL for whatever of its tree is left
        (only pids that descend from the process this run started)."""
        if self.alive():
            tree = proc_tree(self.pid)
            try:
                os.kill(self.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


# ---------------------------------------------------------------------------------------
# scenarios


class Scenario:
    """One row family: how its backend starts, what nginx does in front of it."""

    def __init__(self, name, title, apps=ALL_APPS, note=""):
        self.name = name
        self.title = title
        self.apps = apps
        self.note = note
        self.port = None
        self.proc = None  # the backend, None for nginx's own return 200
        self.direct = False  # wrk talks to the backend without nginx
        self.unavailable = None  # why the scenario cannot run at all
        self.versions = ""

    def start(self, ctx):
        """Start the backend (sets self.proc); raise RuntimeError(reason) if impossible."""

    def nginx(self, ctx):
        """The `location /` body (and an optional upstream block) for nginx."""
        return "", ""


# What uWSGI's and flup's FastCGI need besides the stock fastcgi_params, which sets
# SCRIPT_NAME to the whole path and no PATH_INFO (every URL would reach the app as "/"):
# the usual fix, an app at the root. pyfpm derives both itself and needs no such lines.
CGI_PATHS = (
    "include /etc/nginx/fastcgi_params;\n"
    '        fastcgi_param SCRIPT_NAME "";\n'
    "        fastcgi_param PATH_INFO $fastcgi_script_name;"
)


def sock(ctx, name):
    return os.path.join(ctx.tmp, name + ".sock")


class NginxReturn(Scenario):
    def __init__(self):
        super().__init__(
            "nginx-return", "nginx `return 200` (ceiling)", apps=["hello"]
        )

    def nginx(self, ctx):
        return "", 'default_type text/plain;\n        return 200 "Hello, World!";'


class Pyfpm(Scenario):
    def __init__(self, keepalive):
        self.keepalive = keepalive
        if keepalive:
            super().__init__(
                "pyfpm-keepalive",
                "pyfpm, fastcgi_keep_conn + upstream keepalive 32",
                note="nginx keeps up to 32 idle FastCGI connections, as the contrib "
                "config recommends (idle kept connections do not pin pyfpm workers)",
            )
        else:
            super().__init__("pyfpm", "pyfpm, connection per request")

    def start(self, ctx):
        exe = os.path.join(ROOT, "target", "release", "pyfpm")
        if not os.access(exe, os.X_OK):
            raise RuntimeError("target/release/pyfpm missing (cargo build --release)")
        pool = os.path.join(ctx.tmp, self.name + "-pool.yaml")
        main = os.path.join(ctx.tmp, self.name + ".yaml")
        with open(pool, "w") as f:
            f.write(
                "bench:\n"
                "  listen: %s\n"
                "  pm: static\n"
                "  pm.max_children: 2\n"
                "  preload: true\n"
                "  app: app:application\n"
                "  virtualenv: %s\n"
                "  python_path: %s\n"
                % (
                    json.dumps(sock(ctx, self.name)),
                    json.dumps(VENV),
                    json.dumps(APPS),
                )
            )
        with open(main, "w") as f:
            f.write(
                "include: %s\ndaemonize: false\nlog_level: warning\n" % json.dumps(pool)
            )
        self.proc = Proc(self.name, [exe, "-F", "-c", main], ctx.tmp)

    def nginx(self, ctx):
        if self.keepalive:
            up = "upstream %s { server unix:%s; keepalive 32; }" % (
                self.name.replace("-", "_"),
                sock(ctx, self.name),
            )
            return up, (
                "include /etc/nginx/fastcgi_params;\n        fastcgi_keep_conn on;\n"
                "        fastcgi_pass %s;" % self.name.replace("-", "_")
            )
        return "", "include /etc/nginx/fastcgi_params;\n        fastcgi_pass unix:%s;" % sock(
            ctx, self.name
        )


class Uwsgi(Scenario):
    def __init__(self, native):
        self.native = native
        if native:
            super().__init__("uwsgi-native", "uWSGI, native uwsgi_pass")
        else:
            super().__init__(
                "uwsgi-fastcgi",
                "uWSGI --fastcgi-socket",
                note="uWSGI ignores FCGI_KEEP_CONN, so it runs connection per request; "
                "nginx adds SCRIPT_NAME \"\" and PATH_INFO to the stock fastcgi_params",
            )

    def start(self, ctx):
        exe = os.path.join(VENV, "bin", "uwsgi")
        if not os.access(exe, os.X_OK):
            raise RuntimeError("uwsgi not installed in benches/.venv")
        flag = "--socket" if self.native else "--fastcgi-socket"
        argv = [
            exe, "--master", "--processes", "2", flag, sock(ctx, self.name),
            "--virtualenv", VENV, "--chdir", APPS, "--wsgi-file", "app.py",
            "--callable", "application", "--disable-logging", "--need-app",
        ]  # fmt: skip
        # SIGINT: uWSGI's SIGTERM means "reload".
        self.proc = Proc(self.name, argv, ctx.tmp, stop_signal=signal.SIGINT)

    def nginx(self, ctx):
        if self.native:
            return "", "include /etc/nginx/uwsgi_params;\n        uwsgi_pass unix:%s;" % sock(
                ctx, self.name
            )
        return "", CGI_PATHS + "\n        fastcgi_pass unix:%s;" % sock(ctx, self.name)


class PhpFpm(Scenario):
    def __init__(self):
        super().__init__(
            "php-fpm", "PHP-FPM (PHP hello, reference)", apps=["hello"]
        )

    def start(self, ctx):
        exe = ctx.php_fpm
        if not exe:
            raise RuntimeError("php-fpm not installed (apt-get install php8.2-fpm)")
        conf = os.path.join(ctx.tmp, "php-fpm.conf")
        root = os.geteuid() == 0
        with open(conf, "w") as f:
            f.write(
                "[global]\npid = %s/php-fpm.pid\nerror_log = %s/php-fpm-error.log\n"
                "daemonize = no\n\n[bench]\nlisten = %s\npm = static\n"
                "pm.max_children = 2\n%s"
                % (
                    ctx.tmp,
                    ctx.tmp,
                    sock(ctx, self.name),
                    "user = root\ngroup = root\n" if root else "",
                )
            )
        argv = [exe, "-F", "-y", conf] + (["-R"] if root else [])
        # SIGQUIT: graceful stop (SIGTERM/SIGINT are immediate; either is fine here).
        self.proc = Proc(self.name, argv, ctx.tmp, stop_signal=signal.SIGQUIT)

    def nginx(self, ctx):
        return "", (
            "include /etc/nginx/fastcgi_params;\n        fastcgi_param SCRIPT_FILENAME %s;\n"
            "        fastcgi_pass unix:%s;"
            % (os.path.join(APPS, "hello.php"), sock(ctx, self.name))
        )


class Gunicorn(Scenario):
    def __init__(self):
        super().__init__(
            "gunicorn",
            "Gunicorn sync, proxy_pass",
            note="the sync worker closes every HTTP connection, so nginx connects per request",
        )

    def start(self, ctx):
        exe = os.path.join(VENV, "bin", "gunicorn")
        if not os.access(exe, os.X_OK):
            raise RuntimeError("gunicorn not installed in benches/.venv")
        argv = [
            exe, "--workers", "2", "--worker-class", "sync",
            "--bind", "unix:" + sock(ctx, self.name), "--chdir", APPS,
            "--worker-tmp-dir", "/dev/shm", "--log-level", "warning", "app:application",
        ]  # fmt: skip
        self.proc = Proc(self.name, argv, ctx.tmp)

    def nginx(self, ctx):
        return "", "proxy_pass http://unix:%s:;" % sock(ctx, self.name)


class Granian(Scenario):
    def __init__(self, direct):
        if direct:
            super().__init__(
                "granian-direct",
                "Granian standalone (wrk direct, no nginx)",
                note="wrk talks HTTP/1.1 to Granian on 127.0.0.1 directly",
            )
        else:
            super().__init__(
                "granian-nginx",
                "Granian behind nginx (HTTP keep-alive)",
                note="nginx keeps up to 32 idle HTTP connections to Granian "
                "(keep-alive does not pin Granian's workers)",
            )
        self.direct = direct

    def start(self, ctx):
        exe = os.path.join(VENV, "bin", "granian")
        if not os.access(exe, os.X_OK):
            raise RuntimeError("granian not installed in benches/.venv")
        if self.direct:
            self.port = free_port()
            bind = ["--host", "127.0.0.1", "--port", str(self.port)]
        else:
            bind = ["--uds", sock(ctx, self.name)]
        # One blocking (Python) thread per worker: the same one-request-at-a-time
        # budget per process as every other backend here.
        argv = [
            exe, "--interface", "wsgi", "--workers", "2", "--blocking-threads", "1",
            "--runtime-threads", "1", "--http", "1", "--log-level", "warning",
            "--working-dir", APPS, *bind, "app:application",
        ]  # fmt: skip
        self.proc = Proc(self.name, argv, ctx.tmp, cwd=APPS)

    def nginx(self, ctx):
        if self.direct:
            return "", None
        return (
            "upstream granian { server unix:%s; keepalive 32; }" % sock(ctx, self.name),
            'proxy_http_version 1.1;\n        proxy_set_header Connection "";\n'
            "        proxy_pass http://granian;",
        )


class Flup(Scenario):
    def __init__(self):
        super().__init__(
            "flup",
            "flup prefork (fcgi_fork)",
            note="nginx adds SCRIPT_NAME \"\" and PATH_INFO to the stock fastcgi_params",
        )

    def start(self, ctx):
        py = os.path.join(VENV, "bin", "python")
        check = subprocess.run(
            [py, "-c", "import flup.server.fcgi_fork"], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(
                "flup not importable: %s" % check.stderr.strip().splitlines()[-1:]
            )
        argv = [py, os.path.join(APPS, "flup_server.py"), sock(ctx, self.name)]
        self.proc = Proc(self.name, argv, ctx.tmp)

    def nginx(self, ctx):
        return "", CGI_PATHS + "\n        fastcgi_pass unix:%s;" % sock(ctx, self.name)


def all_scenarios():
    return [
        NginxReturn(),
        Pyfpm(keepalive=False),
        Pyfpm(keepalive=True),
        Uwsgi(native=False),
        Uwsgi(native=True),
        PhpFpm(),
        Gunicorn(),
        Granian(direct=False),
        Granian(direct=True),
        Flup(),
    ]


# ---------------------------------------------------------------------------------------
# nginx


def nginx_bin():
    for p in ("/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"):
        if os.access(p, os.X_OK):
            return p
    return shutil.which("nginx")


def nginx_conf(ctx, scenarios):
    t = ctx.tmp
    out = ["daemon off;", "master_process on;"]
    if os.geteuid() == 0:
        # Workers as root can enter the private temp dir and connect to its sockets.
        out.append("user root root;")
    out += [
        "pid %s/nginx.pid;" % t,
        "error_log %s/nginx-error.log warn;" % t,
        "worker_processes 1;",
        "events { worker_connections 1024; }",
        "http {",
        "    access_log off;",
        "    include /etc/nginx/mime.types;",
        "    client_body_temp_path %s/client_body;" % t,
        "    fastcgi_temp_path %s/fastcgi_temp;" % t,
        "    proxy_temp_path %s/proxy_temp;" % t,
        "    uwsgi_temp_path %s/uwsgi_temp;" % t,
        "    scgi_temp_path %s/scgi_temp;" % t,
        # Same buffering for every backend, big enough that the 64 KiB echo body and
        # response stay in memory instead of going through temp files.
        "    client_body_buffer_size 128k;",
        "    fastcgi_buffers 16 16k;",
        "    proxy_buffers 16 16k;",
        "    uwsgi_buffers 16 16k;",
        # What contrib/nginx/pyfpm.conf recommends, for every backend alike: a response
        # up to 16 KiB (the page) arrives in one read.
        "    fastcgi_buffer_size 16k;",
        "    proxy_buffer_size 16k;",
        "    uwsgi_buffer_size 16k;",
        "    keepalive_requests 1000000;",
    ]
    for s in scenarios:
        if s.direct or s.unavailable:
            continue
        upstream, location = s.nginx(ctx)
        if upstream:
            out.append("    " + upstream)
        out += [
            "    server {",
            "        listen 127.0.0.1:%d;" % s.port,
            "        location / {",
            "        " + location,
            "        }",
            "    }",
        ]
    out.append("}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# requests and wrk


def request(port, app, timeout=5.0):
    """One request of `app` on 127.0.0.1:port; returns None when it is right, else why."""
    path, post, check = APP_DEFS[app]
    body = b"x" * post if post else None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        conn.request("POST" if body else "GET", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        return "%s %s: %s" % ("POST" if body else "GET", path, e or type(e).__name__)
    finally:
        conn.close()
    if resp.status != 200:
        return "%s answered %d: %r" % (path, resp.status, data[:120])
    ok = data == body if body is not None else check(data)
    if not ok:
        return "%s: unexpected body (%d bytes) %r" % (path, len(data), data[:80])
    return None


def run_wrk(ctx, port, app, conns, seconds):
    path, post, _ = APP_DEFS[app]
    env = dict(os.environ)
    env.pop("BENCH_POST_BYTES", None)
    if post:
        env["BENCH_POST_BYTES"] = str(post)
    argv = [
        ctx.wrk, "-t%d" % min(ctx.threads, conns), "-c%d" % conns, "-d%ds" % seconds,
        "--latency", "-s", WRK_LUA, "http://127.0.0.1:%d%s" % (port, path),
    ]  # fmt: skip
    out = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=seconds + 60
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON ") :])
    raise RuntimeError(
        "wrk failed (exit %d): %s" % (out.returncode, (out.stderr or out.stdout)[-300:])
    )


def measure(ctx, s, app, conns, seconds):
    port = s.port
    nginx_pid = None if s.direct else ctx.nginx.pid
    b0 = cpu_ticks(s.proc.pid) if s.proc else 0
    n0 = cpu_ticks(nginx_pid) if nginx_pid else 0
    w = run_wrk(ctx, port, app, conns, seconds)
    b1 = cpu_ticks(s.proc.pid) if s.proc else 0
    n1 = cpu_ticks(nginx_pid) if nginx_pid else 0
    reqs = w["requests"]
    secs = w["duration_us"] / 1e6
    rps = reqs / secs if secs else 0.0
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    r = {
        "rps": rps,
        "requests": reqs,
        "p50_ms": w["p50_us"] / 1000.0,
        "p99_ms": w["p99_us"] / 1000.0,
        "mean_ms": w["mean_us"] / 1000.0,
        "errors": errors,
        "wrk": w,
        "backend_us_per_req": (
            (b1 - b0) * 1e6 / CLK_TCK / reqs if s.proc and reqs else None
        ),
        "nginx_us_per_req": (
            (n1 - n0) * 1e6 / CLK_TCK / reqs if nginx_pid and reqs else None
        ),
    }
    # Little's law: with every connection busy all the time, mean latency = c / rps.
    expected_ms = conns / rps * 1000.0 if rps else None
    r["expected_mean_ms"] = expected_ms
    r["stall"] = bool(
        reqs == 0 or (expected_ms and r["mean_ms"] < STALL_RATIO * expected_ms)
    )
    if s.proc:
        rss, pss, count, workers = memory(s.proc.pid)
        r.update(rss_kib=rss, pss_kib=pss, processes=count, worker_rss_kib=workers)
    return r


# ---------------------------------------------------------------------------------------
# reporting


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def aggregate(runs):
    a = {}
    for key in ("rps", "p50_ms", "p99_ms", "backend_us_per_req", "nginx_us_per_req",
                "rss_kib", "pss_kib"):  # fmt: skip
        m, lo, hi = med([r.get(key) for r in runs])
        a[key] = {"median": m, "min": lo, "max": hi}
    a["errors"] = sum(r["errors"] for r in runs)
    a["requests"] = sum(r["requests"] for r in runs)
    a["stalled_rounds"] = sum(1 for r in runs if r["stall"])
    a["rounds"] = len(runs)
    procs = [r.get("processes") or 0 for r in runs]
    a["processes"] = max(procs) if any(procs) else None
    # Workers only: the processes without children.
    per = [r["worker_rss_kib"] for r in runs if r.get("worker_rss_kib")]
    worker_rss = [statistics.mean(p) for p in per if p]
    a["worker_rss_kib"] = statistics.median(worker_rss) if worker_rss else None
    return a


def fmt(v, digits=0, scale=1.0):
    if v is None:
        return "–"
    return "%.*f" % (digits, v / scale)


def fmt_range(a, key, digits=0, scale=1.0, spread=True):
    x = a[key]
    if x["median"] is None:
        return "–"
    s = fmt(x["median"], digits, scale)
    if spread and a["rounds"] > 1:
        s += " (%s–%s)" % (fmt(x["min"], digits, scale), fmt(x["max"], digits, scale))
    return s


COLUMNS = [
    "scenario", "app", "c", "req/s (min–max)", "p50 ms", "p99 ms (min–max)", "errors",
    "backend µs/req", "nginx µs/req", "RSS MiB", "PSS MiB", "procs", "stall",
]  # fmt: skip


def table_rows(rows):
    out = []
    for row in rows:
        cells = [row["scenario"], row["app"], str(row["c"])]
        if row.get("skipped"):
            why = row["skipped"]
            why = why if len(why) <= 160 else why[:157] + "..."
            cells += ["skipped: " + why] + [""] * (len(COLUMNS) - 4)
            out.append(cells)
            continue
        a = row["agg"]
        cells += [
            fmt_range(a, "rps"),
            fmt_range(a, "p50_ms", 2, spread=False),
            fmt_range(a, "p99_ms", 2),
            str(a["errors"]),
            fmt_range(a, "backend_us_per_req", 1, spread=False),
            fmt_range(a, "nginx_us_per_req", 1, spread=False),
            fmt_range(a, "rss_kib", 1, 1024.0, spread=False),
            fmt_range(a, "pss_kib", 1, 1024.0, spread=False),
            fmt(a["processes"]),
            ("STALL %d/%d" % (a["stalled_rounds"], a["rounds"]))
            if a["stalled_rounds"]
            else "no",
        ]
        out.append(cells)
    return out


def text_table(rows):
    cells = [COLUMNS] + table_rows(rows)
    widths = [0] * len(COLUMNS)
    for r in cells:
        if r[3].startswith("skipped: "):
            r = r[:3]
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = []
    for n, r in enumerate(cells):
        if r[3].startswith("skipped: "):
            lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:3])) +
                         "  " + r[3])  # fmt: skip
        else:
            lines.append("  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i])
                                   for i, c in enumerate(r)).rstrip())  # fmt: skip
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def md_table(rows):
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table_rows(rows):
        if r[3].startswith("skipped: "):
            r = r[:4] + [""] * (len(COLUMNS) - 4)
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def find_row(rows, scenario, app, c):
    for r in rows:
        if r["scenario"] == scenario and r["app"] == app and r["c"] == c:
            return None if r.get("skipped") else r
    return None


def find(rows, scenario, app, c):
    r = find_row(rows, scenario, app, c)
    return r["agg"] if r else None


def targets(rows, conns):
    """The issue's targets, as ratios of medians measured in this same run."""
    out = []
    c = max(conns)

    def ratio(app, a, b, c=c):
        x, y = find(rows, a, app, c), find(rows, b, app, c)
        if not x or not y or not y["rps"]["median"]:
            return None
        return x["rps"]["median"] / y["rps"]["median"]

    def paired(app, a, b, c=c):
        """Each round's ratio: the two rows of one round ran minutes apart at most, so
        these show how much of a miss or a pass is the machine's drift."""
        x, y = find_row(rows, a, app, c), find_row(rows, b, app, c)
        if not x or not y:
            return ""
        xs, ys = [r["rps"] for r in x["runs"]], [r["rps"] for r in y["runs"]]
        if len(xs) < 2 or len(xs) != len(ys) or None in xs or not all(ys):
            return ""
        return "; per round %s" % ", ".join("%.2f" % (u / v) for u, v in zip(xs, ys))

    def line(text, value, goal, better="ge", rounds=""):
        if value is None:
            out.append("- %s: n/a (a row is missing)" % text)
            return
        ok = value >= goal if better == "ge" else value <= goal
        out.append("- %s: **%.2f** (target %s %.2f%s) %s" % (
            text, value, "≥" if better == "ge" else "≤", goal, rounds,
            "met" if ok else "MISSED"))  # fmt: skip

    def versus(app, a, b, goal):
        line("%s c%d: %s / %s req/s" % (app, c, a, b), ratio(app, a, b), goal,
             rounds=paired(app, a, b))  # fmt: skip

    for mode in ("pyfpm", "pyfpm-keepalive"):
        versus("hello", mode, "uwsgi-fastcgi", 1.6)
        versus("hello", mode, "granian-nginx", 1.2)
    for mode in ("pyfpm", "pyfpm-keepalive"):
        for cc in conns:
            a = find(rows, mode, "hello", cc)
            v = a["backend_us_per_req"]["median"] if a else None
            line("backend CPU per hello request, %s c%d (µs)" % (mode, cc), v, 8.0, "le")
    for app in ("page", "echo"):
        for mode in ("pyfpm", "pyfpm-keepalive"):
            versus(app, mode, "uwsgi-fastcgi", 1.5)
            x, y = find(rows, mode, app, c), find(rows, "uwsgi-fastcgi", app, c)
            if x and y:
                out.append("- %s c%d p99: %s %.2f ms vs uwsgi-fastcgi %.2f ms (target: no worse) %s" % (
                    app, c, mode, x["p99_ms"]["median"], y["p99_ms"]["median"],
                    "met" if x["p99_ms"]["median"] <= y["p99_ms"]["median"] else "MISSED"))  # fmt: skip
    bad = []
    for r in rows:
        if r["scenario"].startswith("pyfpm") and not r.get("skipped"):
            a = r["agg"]
            if a["errors"] or a["stalled_rounds"]:
                bad.append("%s/%s/c%d: %d errors, %d stalled rounds" % (
                    r["scenario"], r["app"], r["c"], a["errors"], a["stalled_rounds"]))  # fmt: skip
    out.append("- no stalls, no errors in any pyfpm row: %s" % (
        "met" if not bad else "MISSED (" + "; ".join(bad) + ")"))  # fmt: skip
    x, y = find(rows, "pyfpm", "hello", c), find(rows, "uwsgi-fastcgi", "hello", c)
    if x and y and x["worker_rss_kib"] and y["worker_rss_kib"]:
        out.append("- per-worker RSS (hello, c%d): pyfpm %.1f MiB vs uWSGI %.1f MiB (target ≤) %s" % (
            c, x["worker_rss_kib"] / 1024, y["worker_rss_kib"] / 1024,
            "met" if x["worker_rss_kib"] <= y["worker_rss_kib"] else "MISSED"))  # fmt: skip
    return out


def autogroup():
    """Whether the kernel shares CPU time between sessions before processes (every
    server here runs in its own session; see benches/README.md)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return "on" if f.read().strip() == "1" else "off"
    except OSError:
        return "not available"


def tool_versions(ctx):
    def first_line(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return "unavailable (%s)" % e
        text = (p.stdout + p.stderr).strip().splitlines()
        return text[0].strip() if text else "?"

    v = {
        "nginx": first_line([ctx.nginx_exe, "-v"]),
        "wrk": first_line([ctx.wrk, "-v"]),
        "python": first_line([ctx.python, "-VV"]),
        "pyfpm": first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
    }
    if ctx.php_fpm:
        v["php-fpm"] = first_line([ctx.php_fpm, "-v"])
    pip = subprocess.run(
        [os.path.join(VENV, "bin", "python"), "-m", "pip", "list", "--format=json",
         "--disable-pip-version-check"], capture_output=True, text=True)  # fmt: skip
    try:
        wanted = {"uwsgi", "gunicorn", "granian", "flup", "flask"}
        for p in json.loads(pip.stdout):
            if p["name"].lower() in wanted:
                v[p["name"]] = p["version"]
    except ValueError:
        v["venv"] = "pip list failed"
    return v


# ---------------------------------------------------------------------------------------
# main


class Ctx:
    pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 3 s runs, 1 round, 1 s warm-up")  # fmt: skip
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, help="rounds (default 3)")
    p.add_argument("--warmup", type=int, help="warm-up seconds per pair (default 2)")
    p.add_argument("--conns", default="4,32", help="wrk connection counts (default 4,32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--only", help="comma-separated scenario names to run")
    p.add_argument("--apps", help="comma-separated apps (%s)" % ",".join(ALL_APPS))
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    a = p.parse_args()
    a.duration = a.duration or (3 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    a.conns = [int(c) for c in a.conns.split(",")]
    return a


def main():
    args = parse_args()
    ctx = Ctx()
    ctx.threads = args.threads
    ctx.python = os.path.realpath(shutil.which("python3") or sys.executable)
    # The venv's interpreter: the same python3 the workers run (run.sh checks).
    venv_py = os.path.join(VENV, "bin", "python3")
    if os.path.exists(venv_py):
        ctx.python = venv_py
    ctx.wrk = shutil.which("wrk")
    ctx.nginx_exe = nginx_bin()
    ctx.php_fpm = next(
        (p for p in ("/usr/sbin/php-fpm8.2", shutil.which("php-fpm8.2"), shutil.which("php-fpm"))
         if p and os.access(p, os.X_OK)), None)  # fmt: skip
    if not ctx.wrk or not ctx.nginx_exe:
        sys.exit("bench: wrk and nginx are required (benches/run.sh installs them)")
    ctx.tmp = tempfile.mkdtemp(prefix="pyfpm-bench-")
    ctx.nginx = None

    scenarios = all_scenarios()
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {s.name for s in scenarios}
        if unknown:
            sys.exit("bench: unknown scenario(s) %s" % ", ".join(sorted(unknown)))
        scenarios = [s for s in scenarios if s.name in names]
    apps = args.apps.split(",") if args.apps else ALL_APPS
    for a in apps:
        if a not in APP_DEFS:
            sys.exit("bench: unknown app %s" % a)

    # Turn SIGTERM/SIGHUP into KeyboardInterrupt so the cleanup below always runs.
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    try:
        log("bench: temp dir %s" % ctx.tmp)
        for s in scenarios:
            if not s.direct:
                s.port = free_port()
            try:
                s.start(ctx)
            except (RuntimeError, OSError) as e:
                s.unavailable = str(e)
                log("bench: %s cannot run: %s" % (s.name, e))

        conf = os.path.join(ctx.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(ctx, scenarios))
        test = subprocess.run([ctx.nginx_exe, "-t", "-c", conf, "-p", ctx.tmp],
                              capture_output=True, text=True)  # fmt: skip
        if test.returncode != 0:
            raise SystemExit("bench: nginx -t failed:\n%s" % test.stderr)
        ctx.nginx = Proc("nginx", [ctx.nginx_exe, "-c", conf, "-p", ctx.tmp], ctx.tmp,
                         stop_signal=signal.SIGQUIT)  # fmt: skip

        # Readiness: each backend answers its first app correctly within 60 s.
        for s in scenarios:
            if s.unavailable:
                continue
            first = [a for a in s.apps if a in apps][:1] or ["hello"]
            deadline = time.monotonic() + 60
            why = None
            while time.monotonic() < deadline:
                if s.proc and not s.proc.alive():
                    why = "exited with %s: %s" % (s.proc.popen.returncode, s.proc.tail())
                    break
                if not ctx.nginx.alive():
                    raise SystemExit("bench: nginx exited: %s" % ctx.nginx.tail())
                why = request(s.port, first[0], timeout=2)
                if why is None:
                    break
                time.sleep(0.2)
            if why:
                s.unavailable = "not ready in 60 s: %s" % why
                log("bench: %s: %s" % (s.name, s.unavailable))
            else:
                log("bench: %s ready on port %d" % (s.name, s.port))

        # One row per (scenario, app, connections); a pair that fails its check is
        # reported with the reason.
        pairs = {}
        for app in apps:
            for s in scenarios:
                if app not in s.apps:
                    continue
                why = s.unavailable or request(s.port, app)
                pairs[(s.name, app)] = why
                for c in args.conns:
                    rows.append({"scenario": s.name, "app": app, "c": c, "runs": [],
                                 "skipped": why})  # fmt: skip
        by_name = {s.name: s for s in scenarios}
        live = [r for r in rows if not r["skipped"]]

        if args.warmup:
            log("bench: warm-up, %d s per pair at c%d" % (args.warmup, max(args.conns)))
            for (name, app), why in pairs.items():
                if why is None:
                    try:
                        run_wrk(ctx, by_name[name].port, app, max(args.conns), args.warmup)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        log("bench: warm-up %s/%s: %s" % (name, app, e))

        total = len(live) * args.rounds
        done = 0
        for rnd in range(args.rounds):
            # Within a round, scenarios alternate for each (app, c).
            order = sorted(live, key=lambda r: (ALL_APPS.index(r["app"]), r["c"]))
            for row in order:
                s = by_name[row["scenario"]]
                done += 1
                try:
                    if s.proc and not s.proc.alive():
                        raise RuntimeError("backend exited: %s" % s.proc.tail())
                    r = measure(ctx, s, row["app"], row["c"], args.duration)
                    row["runs"].append(r)
                    log("bench: [%d/%d] round %d %-16s %-5s c%-3d %8.0f req/s  p99 %6.2f ms"
                        "  err %d%s" % (done, total, rnd + 1, s.name, row["app"], row["c"],
                                        r["rps"], r["p99_ms"], r["errors"],
                                        "  STALL" if r["stall"] else ""))  # fmt: skip
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    row.setdefault("failures", []).append(str(e))
                    log("bench: [%d/%d] %s/%s/c%d failed: %s" % (
                        done, total, s.name, row["app"], row["c"], e))  # fmt: skip
                time.sleep(0.3)
        for row in rows:
            if not row["skipped"]:
                if row["runs"]:
                    row["agg"] = aggregate(row["runs"])
                else:
                    row["skipped"] = "every run failed: %s" % "; ".join(
                        row.get("failures", [])[:1])
        versions = tool_versions(ctx)
    finally:
        # A second Ctrl-C (or SIGTERM) while the servers stop would abandon the rest of
        # them, still running: the cleanup finishes first.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for s in scenarios:
            if s.proc:
                s.proc.stop()
        if ctx.nginx:
            ctx.nginx.stop()
        if args.keep_tmp:
            log("bench: logs kept in %s" % ctx.tmp)
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)

    # ---- report
    notes = [s for s in scenarios if s.note]
    machine = {"arch": platform.machine(), "cpus": os.cpu_count(),
               "kernel": platform.release(), "autogroup": autogroup()}  # fmt: skip
    settings = (
        "wrk -t%d, %d s runs, %d round(s) after a %d s warm-up per pair, connections %s; "
        "one nginx (worker_processes 1, access_log off); every backend 2 worker processes "
        "on a Unix socket, serving benches/apps/app.py (PHP-FPM: benches/apps/hello.php)"
        % (args.threads, args.duration, args.rounds, args.warmup,
           ", ".join(map(str, args.conns))))  # fmt: skip
    header = [
        "# pyfpm benchmark, %s" % started.strftime("%Y-%m-%d %H:%M UTC"),
        "",
        "Machine: %s, %d CPUs, kernel %s, autogroup %s (every server in its own "
        "session)." % (machine["arch"], machine["cpus"], machine["kernel"],
                       machine["autogroup"]),  # fmt: skip
        "",
        "Settings: %s." % settings,
        "",
        "Versions: "
        + "; ".join(v if k.lower() in v.lower() else "%s %s" % (k, v)
                    for k, v in versions.items())
        + ".",  # fmt: skip
        "",
        "Columns: req/s and p99 are the median of the rounds (min–max in brackets); p50, "
        "CPU and memory are medians; errors are non-2xx responses plus socket errors "
        "(connect, read, write, timeout) summed over all rounds; backend µs/req is the "
        "CPU time (user+system) of every process of the backend divided by requests; "
        "nginx µs/req the same for nginx; RSS/PSS are the backend's processes summed, "
        "after the run; stall means wrk's mean latency was below %.0f%% of "
        "connections ÷ throughput (some connections starved)." % (STALL_RATIO * 100),
    ]
    md = header + ["", md_table(rows), "", "## Notes", ""]
    md += ["- **%s**: %s." % (s.name, s.note) for s in notes]
    md += ["", "## Targets of issue 5 (ratios from this run)", ""] + targets(rows, args.conns)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    results = os.path.join(BENCHES, "results")
    os.makedirs(results, exist_ok=True)
    md_path = os.path.join(results, "bench-%s.md" % stamp)
    json_path = os.path.join(results, "bench-%s.json" % stamp)
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(json_path, "w") as f:
        json.dump({"started": started.isoformat(), "machine": machine,
                   "settings": vars(args),
                   "versions": versions, "stall_ratio": STALL_RATIO,
                   "notes": {s.name: s.note for s in notes},
                   "rows": rows}, f, indent=1, default=str)  # fmt: skip

    print(text_table(rows))
    print()
    for s in notes:
        print("note: %s: %s." % (s.name, s.note))
    print()
    print("\n".join(targets(rows, args.conns)).replace("**", ""))
    print()
    print("written: %s\n         %s" % (os.path.relpath(md_path), os.path.relpath(json_path)))


if __name__ == "__main__":
    main()
