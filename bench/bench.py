#!/usr/bin/env python3
"""`make bench`: lbctl's load balancers beside nginx and HAProxy.

Four parts, in this order (BENCH_PART=l7|instr|l4|plan|all, default all):

L7, the application load balancer. Two nginx backends serve a small
response. In front of them, one at a time and in alternation, run nginx
(`worker_processes 1`), HAProxy (`nbthread 1`) and an lbctl ALB
(`worker_threads: 1`), each pinned to the same core (lbctl's worker
thread; its access log's writer thread runs where the scheduler puts it,
as it does in use) and each adding
X-Forwarded-For, with keep-alive to the backends. wrk (pinned to the other
core with the backends) drives each for the same time. Printed per proxy:
requests/s, p50, p99, CPU time per request (the proxy's own processes, from
/proc, and the user-space part of it), and the ratios lbctl/nginx and
lbctl/HAProxy. A second lbctl ALB of the same stack, `lbctl+logs`, writes
its access log and has its Prometheus metrics scraped every second while it
runs: the ratio lbctl+logs/lbctl is what seeing the traffic costs, beside
`nginx+logs`, the same nginx writing its combined-format access log
(buffered as lbctl's is). Each proxy and its logging twin run back to back,
in turns first, and the ratio of each such pair is printed too (median and
range over the rounds): the machine's drift within a round weighs on both
alike. After every run, what it left for the kernel to write back (the
logs' pages) is synced and the sync timed (`sync` in the per-run lines), so
that no run pays for an earlier one's disk writes.

Side by side, what the log costs, measured so that the machine's drift
cannot blur it: lbctl and lbctl+logs run at the same time, both on the
proxy core, each driven by its own wrk (half the connections each), for
BENCH_SIDE_ROUNDS rounds (default 10) of BENCH_SIDE_DURATION (default 3s).
Whatever else the machine does in a round, it does to both. Printed per
round and as median and range: each one's CPU time per request on the
proxy core (its worker thread's) and their ratio, which is what the log
costs in requests/s on a saturated core (requests/s = 1 / CPU time per
request), the CPU time per request the log adds there (in microseconds,
which grows with the machine's load as every figure does), the same for
all the CPU each process used (the log's writer thread included, on
whichever core it ran: what the log costs a machine whose every core is
busy), and the ratio of the requests each served. The same is measured
for two plain lbctl ALBs (`lbctl` and
`lbctl'`) in the same rounds: how far the method itself spreads. And, as
the reference for what a line of AWS's fields costs, two more nginx
processes the same way: `nginx alone`, and `nginx+ALB log` writing a line
of the ALB entry's fields in AWS's order with nginx's variables (~390
bytes, buffered as lbctl's is).

Instructions, the ALB's user-space work per request, the one figure a noisy
machine cannot blur: each proxy (nginx, HAProxy, an lbctl ALB, and an lbctl
ALB writing its access log, `lbctl+logs`; one worker each, forwarding to one
nginx backend as in L7) runs under valgrind's callgrind, which counts the
instructions it executes (its own code and its libraries', not the
kernel's). Counting is switched on after a warm-up, for a bounded wrk run
(8 connections, BENCH_INSTR_DURATION, default 5s). Printed: requests,
instructions per request, lbctl's ratio to each, and what its access log
adds (lbctl+logs/lbctl).
Repeatable within about 2% run to run (how requests batch per wake-up moves
it a little), whatever else the machine is doing, where L7's ratios move by
10%; it leaves out system calls and the kernel (L7's CPU time has them).

L4, the network load balancer. One `l4load sink` (bench/l4load) on the load
core; in alternation, the sink reached directly, through HAProxy (`mode tcp`,
`nbthread 1`) and through an lbctl NLB (`worker_threads: 1`), both pinned to
the proxy core. Each gets two throughput runs (`l4load stream`, a few long
connections, then one alone, as iperf3 does) and a connection-rate run
(`l4load connect`, many short connections). Printed per path: GB/s (1 GB =
1e9 bytes) of each throughput run, connections/s and connect p99,
the proxy's CPU time per GB and per connection, the ratios lbctl/HAProxy, and
whether the sink received every byte and request the clients counted.

Plan, the planner. Generated specs of 1,000, 10,000 and 50,000 resources
(half application load balancers with a listener each, half target groups
with an ip target), each in an empty directory: `lbctl validate` and
`lbctl plan`, their time and peak memory, and the growth exponent of each
(time ~ resources^k; 1 is linear).

BENCH_DURATION, BENCH_ROUNDS and BENCH_CONNECTIONS (L7) change the load;
BENCH_L4_STREAMS and BENCH_L4_WORKERS set the L4 concurrency, and
BENCH_HAPROXY_SPLICE=1 lets HAProxy splice as lbctl's NLB does;
BENCH_PROFILE=FILE records the lbctl ALB with `perf` into FILE, and the
logging one into FILE-logs;
BENCH_INSTR_KEEP=DIR keeps the callgrind files in DIR. Binaries come
from CARGO_TARGET_DIR (default target/), built first unless
BENCH_SKIP_BUILD=1; BENCH_LBCTL=PATH uses another lbctl binary.

Everything listens on loopback; every process started here is stopped here,
by PID. Figures vary with the machine: compare ratios, not absolutes.
"""
import glob
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
LBCTL = os.environ.get("BENCH_LBCTL") or os.path.join(TARGET, "release", "lbctl")
L4LOAD = os.path.join(TARGET, "release", "l4load")
DURATION = os.environ.get("BENCH_DURATION", "10s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
PROXY_CORE = "0"
LOAD_CORE = "1" if os.cpu_count() and os.cpu_count() > 1 else "0"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(port, procs=None, timeout=20.0, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    logs = procs.logs() if procs else ""
    raise SystemExit(f"nothing listens on port {port} after {timeout}s\n{logs}")


def ensure_tools():
    missing = [pkg for tool, pkg in (("nginx", "nginx-light"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("taskset", "util-linux"), ("valgrind", "valgrind")) if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        print(f"installing {' '.join(missing)} with apt", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def cpu_seconds(pids):
    """User + system CPU time of the processes (all their threads)."""
    return sum(cpu_split(pids))


def cpu_split(pids):
    """User and system CPU time of the processes (all their threads)."""
    times = [stat_times(f"/proc/{pid}/stat") for pid in pids]
    return sum(user for user, _ in times), sum(system for _, system in times)


def stat_times(path):
    """User and system CPU time in seconds from a `stat` file of /proc (a
    process's or a thread's); zero for one that has ended."""
    try:
        fields = open(path).read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def busy_seconds():
    """CPU time spent by every core on anything but idling and waiting."""
    fields = [int(it) for it in open("/proc/stat").readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def children(pid):
    try:
        return [int(it) for it in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


def nginx_worker(master, procs, timeout=20.0):
    """The PID of the one worker of nginx's `master`, once it has forked it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers = children(master)
        if workers:
            return workers[0]
        time.sleep(0.05)
    raise SystemExit(f"nginx {master} started no worker after {timeout}s\n{procs.logs()}")


def pin(pids, core):
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], check=True, stdout=subprocess.DEVNULL)


def pin_worker(pid, core):
    """Pins an lbctl proxy's worker (with `worker_threads: 1`, its main
    thread) to `core`, as `pin` pins nginx's worker and HAProxy; its other
    threads (the access log's writer) stay where the scheduler puts them."""
    subprocess.run(["taskset", "-p", "-c", core, str(pid)], check=True, stdout=subprocess.DEVNULL)


def worker_cpu_seconds(pid):
    """User + system CPU time of a process's main thread: an lbctl proxy's
    worker, or the whole of a single-threaded nginx worker."""
    return sum(stat_times(f"/proc/{pid}/task/{pid}/stat"))


class Processes:
    """Every process the benchmark starts, stopped by PID at the end."""

    def __init__(self, work):
        self.started = []
        self.work = work

    def start(self, args, **kwargs):
        log = open(os.path.join(self.work, f"process-{len(self.started)}.log"), "w")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.started.append(process)
        return process

    def logs(self):
        return "".join(open(os.path.join(self.work, f"process-{idx}.log")).read() for idx in range(len(self.started)))

    def stop_all(self):
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.started):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def nginx_conf(work, name, body, master=True):
    """An nginx configuration of one worker; `master=False` runs it in one
    process (no master), as callgrind needs."""
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as conf:
        conf.write(f"""daemon off;
master_process {'on' if master else 'off'};
worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/{name}.body;
  proxy_temp_path {work}/{name}.proxy;
  fastcgi_temp_path {work}/{name}.fastcgi;
  uwsgi_temp_path {work}/{name}.uwsgi;
  scgi_temp_path {work}/{name}.scgi;
  keepalive_requests 1000000;
  {body}
}}
""")
    return path


# The ALB access-log entry's fields in AWS's order, as nginx can write them
# (times in its milliseconds, nginx's request id in the trace id): the
# reference for what a line of AWS's fields costs a proxy.
NGINX_ALB_FORMAT = (
    "log_format alb 'http $time_iso8601 app/nginx/0123456789abcdef $remote_addr:$remote_port $upstream_addr "
    "$request_time $upstream_response_time $upstream_header_time $status $upstream_status $request_length $bytes_sent "
    "\"$request_method http://$host:$server_port$request_uri $server_protocol\" \"$http_user_agent\" - - "
    "arn:aws:elasticloadbalancing:local:000000000000:targetgroup/backends/0123456789abcdef \"Root=1-$msec-$request_id\" "
    "\"-\" \"-\" 0 $time_iso8601 \"forward\" \"-\" \"-\" \"$upstream_addr\" \"$upstream_status\" \"-\" \"-\" TID_$connection';"
)


def nginx_proxy_server(port, extra=""):
    """An nginx `server` proxying to upstream `backends` with keep-alive and
    X-Forwarded-For, as lbctl and HAProxy do."""
    return f"""
  server {{
    listen 127.0.0.1:{port};{extra}
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}"""


def haproxy_http_cfg(work, port, backend_ports):
    """An HAProxy `mode http` configuration (one thread, connection reuse,
    X-Forwarded-For) balancing over `backend_ports`; its path."""
    path = os.path.join(work, "haproxy.cfg")
    servers = "\n".join(f"  server b{idx} 127.0.0.1:{backend}" for idx, backend in enumerate(backend_ports))
    with open(path, "w") as cfg:
        cfg.write(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend front
  bind 127.0.0.1:{port}
  default_backend backends
backend backends
  balance roundrobin
{servers}
""")
    return path


def wrk(port):
    """A wrk run against `port` on the load core: its figures."""
    return wrk_figures(wrk_start(port, CONNECTIONS, DURATION))


def wrk_start(port, connections, duration):
    """Starts wrk against `port` on the load core."""
    return subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, tool("wrk"), "-t1", f"-c{connections}", f"-d{duration}", "--latency", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, text=True,
    )


def wrk_figures(load):
    """Waits for a wrk started by `wrk_start`: requests/s, requests, p50
    and p99 (ms), non-2xx responses and socket errors."""
    out = load.communicate()[0]
    if load.returncode != 0:
        raise SystemExit(f"wrk failed: {out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)

    def percentile(label):
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": rps, "requests": requests, "p50": percentile("50"), "p99": percentile("99"),
        "errors": (int(errors.group(1)) if errors else 0), "socket_errors": (socket_errors.group(1) if socket_errors else ""),
    }


def main():
    part = os.environ.get("BENCH_PART", "all")
    if part not in ("l7", "instr", "l4", "plan", "all"):
        raise SystemExit(f"BENCH_PART={part}: expected l7, instr, l4, plan or all")
    if part == "plan":
        if os.environ.get("BENCH_SKIP_BUILD") != "1" or not os.path.exists(LBCTL):
            subprocess.run(["cargo", "build", "--release", "-p", "lbctl"], cwd=ROOT, check=True)
        run_plan()
        return 0
    ensure_tools()
    if os.environ.get("BENCH_SKIP_BUILD") != "1" or not os.path.exists(L4LOAD) or not os.path.exists(LBCTL):
        packages = ["-p", "l4load"] if os.environ.get("BENCH_LBCTL") else ["-p", "lbctl", "-p", "l4load"]
        subprocess.run(["cargo", "build", "--release", *packages], cwd=ROOT, check=True)
    status = 0
    if part in ("l7", "all"):
        run_l7()
    if part in ("instr", "all"):
        if part == "all":
            print()
        run_instructions()
    if part in ("l4", "all"):
        if part == "all":
            print()
        status = run_l4()
    if part == "all":
        print()
        run_plan()
    return status


def measured(args, cwd):
    """Runs a command; its wall time in seconds and peak memory in MB."""
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}: {process.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss / 1024


def free_listener_ports(count):
    """`count` ports free on 127.0.0.1 below the kernel's ephemeral range
    (so no client socket takes one between this check and `lbctl plan`'s)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral = int(ports.read().split()[0])
    found = []
    for port in range(1024, ephemeral):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise SystemExit(f"fewer than {count} free ports below {ephemeral} on 127.0.0.1")


def plan_spec(resources):
    """A spec of `resources` resources: load balancers and target groups."""
    half = resources // 2
    ports = free_listener_ports(half)
    lines = ["version: 1", "name: big", "load_balancers:"]
    for idx in range(half):
        lines.append(f"  lb{idx}:\n    type: application\n    listeners: [{{ port: {ports[idx]}, protocol: HTTP, default_action: {{ forward: tg{idx} }} }}]")
    lines.append("target_groups:")
    for idx in range(half):
        lines.append(f"  tg{idx}: {{ port: 8080, target_type: ip, targets: [{{ ip: 127.0.0.1 }}] }}")
    return "\n".join(lines) + "\n"


def run_plan():
    import math
    work = tempfile.mkdtemp(prefix="lbctl-bench-plan-")
    try:
        rows = []
        for resources in (1_000, 10_000, 50_000):
            directory = os.path.join(work, str(resources))
            os.makedirs(directory)
            with open(os.path.join(directory, "lbctl.yaml"), "w") as out:
                out.write(plan_spec(resources))
            validate = min(measured([LBCTL, "validate"], directory) for _ in range(3))
            plan = min(measured([LBCTL, "plan"], directory) for _ in range(3))
            rows.append((resources, validate, plan))
            print(f"{resources:>6} resources: validate {validate[0]:.3f} s {validate[1]:.0f} MB, plan {plan[0]:.3f} s {plan[1]:.0f} MB", flush=True)
        print()
        print(f"machine: {os.cpu_count()} cores, {platform_line()}")
        print()
        print("| resources | validate (s) | validate peak (MB) | plan (s) | plan peak (MB) |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for resources, validate, plan in rows:
            print(f"| {resources} | {validate[0]:.3f} | {validate[1]:.0f} | {plan[0]:.3f} | {plan[1]:.0f} |")
        print()
        (small, v_small, p_small), (large, v_large, p_large) = rows[0], rows[-1]
        growth = lambda a, b: math.log(b / a) / math.log(large / small)
        print(f"growth exponent 1k -> 50k: validate time {growth(v_small[0], v_large[0]):.2f}, plan time {growth(p_small[0], p_large[0]):.2f}, "
              f"plan memory {growth(p_small[1], p_large[1]):.2f} (1.00 is linear)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_l7():
    work = tempfile.mkdtemp(prefix="lbctl-bench-")
    procs = Processes(work)
    stack_dir = os.path.join(work, "stack")
    os.makedirs(stack_dir)
    try:
        # Two backends, on the load core.
        backends = [free_port(), free_port()]
        servers = "\n".join(
            f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok from {port}\\n'; }} }}" for port in backends
        )
        backend = procs.start([tool("nginx"), "-c", nginx_conf(work, "backends", servers), "-p", work])
        for port in backends:
            wait_port(port, procs)
        pin([backend.pid, *children(backend.pid)], LOAD_CORE)

        upstream = " ".join(f"server 127.0.0.1:{port};" for port in backends)
        ports = {"nginx": free_port(), "nginx+logs": free_port(), "haproxy": free_port(), "lbctl": free_port(), "lbctl+logs": free_port()}
        logged = f"\n    access_log {work}/nginx-access.log combined buffer=64k flush=100ms;"
        nginx = procs.start([tool("nginx"), "-c", nginx_conf(work, "proxy", f"""
  upstream backends {{ {upstream} keepalive 128; }}{nginx_proxy_server(ports['nginx'])}{nginx_proxy_server(ports['nginx+logs'], logged)}"""), "-p", work])
        haproxy = procs.start([tool("haproxy"), "-f", haproxy_http_cfg(work, ports["haproxy"], backends), "-db"])

        spec = os.path.join(stack_dir, "lbctl.yaml")
        # A second plain ALB, for the side-by-side runs only.
        twin_port = free_port()
        targets = ", ".join(f"{{ ip: 127.0.0.1, port: {port} }}" for port in backends)
        with open(spec, "w") as out:
            out.write(f"""version: 1
name: bench
load_balancers:
  front:
    type: application
    worker_threads: 1
    listeners:
      - {{ port: {ports['lbctl']}, protocol: HTTP, default_action: {{ forward: backends }} }}
  logged:
    type: application
    worker_threads: 1
    access_logs: true
    listeners:
      - {{ port: {ports['lbctl+logs']}, protocol: HTTP, default_action: {{ forward: backends }} }}
  twin:
    type: application
    worker_threads: 1
    listeners:
      - {{ port: {twin_port}, protocol: HTTP, default_action: {{ forward: backends }} }}
target_groups:
  backends:
    target_type: ip
    port: 80
    targets: [{targets}]
    health_check: {{ path: /, interval: 1s, timeout: 500ms, healthy_threshold: 2 }}
""")
        subprocess.run([LBCTL, "apply", "-f", spec, "--auto-approve", "-q"], check=True, stdout=subprocess.DEVNULL)
        lbctl_pid = int(open(os.path.join(stack_dir, ".lbctl", "run", "lb", "front", "pid")).read())
        logged_pid = int(open(os.path.join(stack_dir, ".lbctl", "run", "lb", "logged", "pid")).read())
        twin_pid = int(open(os.path.join(stack_dir, ".lbctl", "run", "lb", "twin", "pid")).read())
        with open(os.path.join(stack_dir, ".lbctl", "run", "lb", "logged", "status.json")) as status:
            metrics_url = json.load(status)["metrics_url"]
        for port in ports.values():
            wait_port(port, procs)
        proxies = {
            "nginx": [nginx.pid, *children(nginx.pid)],
            "nginx+logs": [nginx.pid, *children(nginx.pid)],
            "haproxy": [haproxy.pid],
            "lbctl": [lbctl_pid],
            "lbctl+logs": [logged_pid],
        }
        for name, pids in proxies.items():
            if name.startswith("lbctl"):
                pin_worker(pids[0], PROXY_CORE)
            else:
                pin(pids, PROXY_CORE)
        wait_port(twin_port, procs)
        pin_worker(twin_pid, PROXY_CORE)

        # Warm up every proxy, then alternate.
        for name, port in ports.items():
            subprocess.run(["taskset", "-c", LOAD_CORE, tool("wrk"), "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"], check=True, capture_output=True)
        results = {name: [] for name in ports}
        # Each logging twin, after the proxy it is compared with.
        twins = {"nginx+logs": "nginx", "lbctl+logs": "lbctl"}
        groups = [[name, *(twin for twin, base in twins.items() if base == name)] for name in ports if name not in twins]
        for round_idx in range(ROUNDS):
            # Each proxy and its logging twin run back to back, in turns
            # first: a machine that slows or speeds up during a round
            # weighs on both alike.
            order = [name for group in groups for name in (group if round_idx % 2 == 0 else reversed(group))]
            for name in order:
                port = ports[name]
                before = cpu_split(proxies[name])
                profiler = None
                if name in ("lbctl", "lbctl+logs") and os.environ.get("BENCH_PROFILE"):
                    # BENCH_PROFILE=FILE: record the proxy with perf during its runs.
                    out = os.environ["BENCH_PROFILE"] + ("-logs" if name == "lbctl+logs" else "")
                    profiler = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", out, "-p", ",".join(map(str, proxies[name]))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                scraper = Scraper(metrics_url) if name == "lbctl+logs" else None
                run = wrk(port)
                if scraper:
                    run["scrapes"] = scraper.stop()
                if profiler:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait()
                user, system = (after - start for after, start in zip(cpu_split(proxies[name]), before))
                # What a run left for the kernel to write back (an access
                # log's pages) is written now, between runs, timed: left to
                # the kernel's flusher, it would run on the proxy core during
                # the next proxy's run.
                synced, busy = time.monotonic(), busy_seconds()
                os.sync()
                run["sync_ms"] = (time.monotonic() - synced) * 1e3
                per_request = 1e6 / max(run["requests"], 1)
                run["writeback_us_per_request"] = (busy_seconds() - busy) * per_request
                run["cpu_us_per_request"] = (user + system) * per_request
                run["user_us_per_request"] = user * per_request
                results[name].append(run)
                print(f"round {round_idx + 1} {name:8} {run['rps']:>10.0f} req/s  p50 {run['p50']:.3f} ms  p99 {run['p99']:.3f} ms  "
                      f"cpu {run['cpu_us_per_request']:.1f} us/req (user {run['user_us_per_request']:.1f})  sync {run['sync_ms']:.0f} ms ({run['writeback_us_per_request']:.2f} us/req)  errors {run['errors']} {run['socket_errors']}", flush=True)

        summary = {}
        for name, runs in results.items():
            summary[name] = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99", "cpu_us_per_request", "writeback_us_per_request")}
            summary[name]["errors"] = sum(run["errors"] for run in runs)
        print()
        print(f"machine: {os.cpu_count()} cores, {platform_line()}")
        print(f"load: wrk -t1 -c{CONNECTIONS} -d{DURATION} x {ROUNDS} rounds; proxies pinned to core {PROXY_CORE}, wrk and backends to core {LOAD_CORE}")
        print()
        print(f"| proxy | requests/s | p50 (ms) | p99 (ms) | CPU per request (us) | non-2xx |")
        print(f"| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, row in summary.items():
            print(f"| {name} | {row['rps']:.0f} | {row['p50']:.3f} | {row['p99']:.3f} | {row['cpu_us_per_request']:.1f} | {row['errors']} |")
        print()
        for other in ("nginx", "haproxy"):
            if other not in summary:
                continue
            lb, them = summary["lbctl"], summary[other]
            print(f"lbctl/{other}: requests/s x{lb['rps'] / them['rps']:.2f}, p99 x{lb['p99'] / them['p99']:.2f}, "
                  f"CPU per request x{lb['cpu_us_per_request'] / them['cpu_us_per_request']:.2f}")
        logged, plain = summary["lbctl+logs"], summary["lbctl"]
        log_size = os.path.getsize(os.path.join(stack_dir, ".lbctl", "logs", "logged", "access.log"))
        scrapes = sum(run.get("scrapes", 0) for run in results["lbctl+logs"])
        nginx_logged, nginx_plain = summary["nginx+logs"], summary["nginx"]
        print(f"access logs, nginx (combined format, buffer=64k flush=100ms): nginx+logs/nginx requests/s "
              f"x{nginx_logged['rps'] / nginx_plain['rps']:.3f}, CPU per request x{nginx_logged['cpu_us_per_request'] / nginx_plain['cpu_us_per_request']:.3f}")
        print(f"access logs and metrics: lbctl+logs/lbctl requests/s x{logged['rps'] / plain['rps']:.3f}, "
              f"CPU per request x{logged['cpu_us_per_request'] / plain['cpu_us_per_request']:.3f} "
              f"({log_size / 1e6:.0f} MB of access log, {scrapes} scrapes)")
        print(f"  writing back the logs (the sync after each run, every core's CPU): lbctl+logs "
              f"{logged['writeback_us_per_request']:.2f} us per request, nginx+logs {nginx_logged['writeback_us_per_request']:.2f} us")
        for twin, base in twins.items():
            pairs = sorted(with_logs["rps"] / without["rps"] for with_logs, without in zip(results[twin], results[base]))
            print(f"  {twin}/{base} requests/s per round (run back to back): median x{statistics.median(pairs):.3f}, "
                  f"from x{pairs[0]:.3f} to x{pairs[-1]:.3f}")
        print()
        # Two nginx processes of their own for the side-by-side runs, one
        # writing the ALB entry's fields.
        side = {"lbctl": (ports["lbctl"], lbctl_pid), "lbctl+logs": (ports["lbctl+logs"], logged_pid), "lbctl'": (twin_port, twin_pid)}
        for name, extra in (("nginx alone", ""), ("nginx+ALB log", f"\n    access_log {work}/nginx-alb.log alb buffer=64k flush=100ms;")):
            port = free_port()
            conf = nginx_conf(work, name.replace(" ", "-").replace("+", "-"), f"{NGINX_ALB_FORMAT}\n  upstream backends {{ {upstream} keepalive 128; }}{nginx_proxy_server(port, extra)}")
            master = procs.start([tool("nginx"), "-c", conf, "-p", work])
            wait_port(port, procs)
            worker = nginx_worker(master.pid, procs)
            pin([master.pid, worker], PROXY_CORE)
            subprocess.run(["taskset", "-c", LOAD_CORE, tool("wrk"), "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"], check=True, capture_output=True)
            side[name] = (port, worker)
        side_by_side(side, [("lbctl+logs", "lbctl"), ("lbctl'", "lbctl"), ("nginx+ALB log", "nginx alone")], metrics_url)
    finally:
        subprocess.run([LBCTL, "destroy", "-f", os.path.join(stack_dir, "lbctl.yaml"), "--auto-approve", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


# Instructions per request, counted by callgrind.

SIDE_ROUNDS = int(os.environ.get("BENCH_SIDE_ROUNDS", "10"))
SIDE_DURATION = os.environ.get("BENCH_SIDE_DURATION", "3s")


def side_by_side(proxies, pairs, metrics_url):
    """Each pair of `proxies` (name: port and the PID doing the work) at the
    same time on the proxy core, each proxy driven by its own wrk, the
    pairs in turns first: the ratios of their CPU time per request on the
    proxy core (the worker's), of all their CPU time per request (the whole
    process's, wherever it ran) and of their requests, per round and as
    median and range. lbctl+logs has its metrics scraped while it runs."""
    ratios = {pair: {"cpu": [], "whole": [], "requests": [], "added": [], "whole_added": []} for pair in pairs}
    connections = max(CONNECTIONS // 2, 1)
    for round_idx in range(SIDE_ROUNDS):
        for pair in pairs if round_idx % 2 == 0 else reversed(pairs):
            before = {name: (worker_cpu_seconds(proxies[name][1]), cpu_seconds([proxies[name][1]])) for name in pair}
            scraper = Scraper(metrics_url) if "lbctl+logs" in pair else None
            loads = [wrk_start(proxies[name][0], connections, SIDE_DURATION) for name in pair]
            runs = [wrk_figures(load) for load in loads]
            if scraper:
                scraper.stop()
            requests = [run["requests"] for run in runs]
            if any(run["errors"] for run in runs):
                raise SystemExit(f"side by side, {pair}: a proxy answered with an error")
            cpu = [(worker_cpu_seconds(proxies[name][1]) - before[name][0]) * 1e6 / max(count, 1) for name, count in zip(pair, requests)]
            whole = [(cpu_seconds([proxies[name][1]]) - before[name][1]) * 1e6 / max(count, 1) for name, count in zip(pair, requests)]
            os.sync()
            ratios[pair]["cpu"].append(cpu[0] / cpu[1])
            ratios[pair]["added"].append(cpu[0] - cpu[1])
            ratios[pair]["whole"].append(whole[0] / whole[1])
            ratios[pair]["whole_added"].append(whole[0] - whole[1])
            ratios[pair]["requests"].append(requests[0] / max(requests[1], 1))
            print(f"side by side, round {round_idx + 1} {pair[0]:13} beside {pair[1]}: CPU per request on the proxy core {cpu[0]:.1f} us against {cpu[1]:.1f} us "
                  f"(x{cpu[0] / cpu[1]:.3f}), in all {whole[0]:.1f} us against {whole[1]:.1f} us (x{whole[0] / whole[1]:.3f}), "
                  f"requests {requests[0]} against {requests[1]} (x{requests[0] / max(requests[1], 1):.3f})", flush=True)
    print()
    print(f"side by side on core {PROXY_CORE} ({SIDE_ROUNDS} rounds of {SIDE_DURATION}, wrk -c{connections} each):")
    for (name, base), values in ratios.items():
        cpu, served, added = sorted(values["cpu"]), sorted(values["requests"]), sorted(values["added"])
        whole, whole_added = sorted(values["whole"]), sorted(values["whole_added"])
        print(f"  {name}/{base}: CPU per request on the proxy core median x{statistics.median(cpu):.3f} (from x{cpu[0]:.3f} to x{cpu[-1]:.3f}), "
              f"so requests/s on a saturated core x{1 / statistics.median(cpu):.3f}; requests served side by side median x{statistics.median(served):.3f}; "
              f"{name} adds {statistics.median(added):.2f} us per request (from {added[0]:.2f} to {added[-1]:.2f}) on the proxy core, "
              f"{statistics.median(whole_added):.2f} us in all (CPU per request in all x{statistics.median(whole):.3f}, from x{whole[0]:.3f} to x{whole[-1]:.3f})")


INSTR_DURATION = os.environ.get("BENCH_INSTR_DURATION", "5s")


def counted(procs, work, name, command, port):
    """Runs `command` (a proxy listening on `port`) under callgrind, and
    returns the requests a wrk run made and the instructions the proxy
    executed for them."""
    out = os.path.join(work, f"{name}.callgrind")
    proxy = procs.start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *command])
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200:
                break
        except OSError:
            pass
        if proxy.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} under valgrind did not answer on {port}\n{procs.logs()}")
        time.sleep(0.5)
    load = ["taskset", "-c", LOAD_CORE, tool("wrk"), "-t1", "-c8"]
    subprocess.run([*load, "-d2s", f"http://127.0.0.1:{port}/"], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "--instr=on", str(proxy.pid)], check=True, capture_output=True)
    result = subprocess.run([*load, f"-d{INSTR_DURATION}", f"http://127.0.0.1:{port}/"], check=True, capture_output=True, text=True).stdout
    subprocess.run(["callgrind_control", "--instr=off", str(proxy.pid)], check=True, capture_output=True)
    requests = int(re.search(r"(\d+) requests in", result).group(1))
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(timeout=60)
    instructions = 0
    keep = os.environ.get("BENCH_INSTR_KEEP")
    for path in glob.glob(out + "*"):
        if keep:
            shutil.copy(path, keep)
        for line in open(path):
            if line.startswith(("summary:", "totals:")):
                instructions = max(instructions, int(line.split()[1]))
    return requests, instructions


def run_instructions():
    work = tempfile.mkdtemp(prefix="lbctl-bench-instr-")
    procs = Processes(work)
    stack_dir = os.path.join(work, "stack")
    os.makedirs(stack_dir)
    spec = os.path.join(stack_dir, "lbctl.yaml")
    try:
        backend_port = free_port()
        server = f"server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 'ok from {backend_port}\\n'; }} }}"
        backend = procs.start([tool("nginx"), "-c", nginx_conf(work, "backend", server), "-p", work])
        wait_port(backend_port, procs)
        pin([backend.pid, *children(backend.pid)], LOAD_CORE)
        ports = {"nginx": free_port(), "haproxy": free_port(), "lbctl": free_port(), "lbctl+logs": free_port()}
        # nginx in one process (no master), so that callgrind sees its worker.
        nginx_cfg = nginx_conf(work, "proxy", f"""
  upstream backends {{ server 127.0.0.1:{backend_port}; keepalive 128; }}{nginx_proxy_server(ports['nginx'])}""", master=False)
        haproxy_cfg = haproxy_http_cfg(work, ports["haproxy"], [backend_port])
        # lbctl: the proxies of an applied stack (one with access logs on),
        # each run again under valgrind on its own port and under its own
        # name (its own status file and log), reading the same target group.
        apply_ports = [free_port(), free_port()]
        with open(spec, "w") as out:
            out.write(f"""version: 1
name: bench-instr
load_balancers:
  front:
    type: application
    worker_threads: 1
    listeners:
      - {{ port: {apply_ports[0]}, protocol: HTTP, default_action: {{ forward: backends }} }}
  logged:
    type: application
    worker_threads: 1
    access_logs: true
    listeners:
      - {{ port: {apply_ports[1]}, protocol: HTTP, default_action: {{ forward: backends }} }}
target_groups:
  backends:
    target_type: ip
    port: 80
    targets: [{{ ip: 127.0.0.1, port: {backend_port} }}]
    health_check: {{ path: /, interval: 1s, timeout: 500ms, healthy_threshold: 2 }}
""")
        subprocess.run([LBCTL, "apply", "-f", spec, "--auto-approve", "-q"], check=True, stdout=subprocess.DEVNULL)
        commands = {
            "nginx": [tool("nginx"), "-c", nginx_cfg, "-p", work],
            "haproxy": [tool("haproxy"), "-f", haproxy_cfg, "-db"],
        }
        for name, lb in (("lbctl", "front"), ("lbctl+logs", "logged")):
            with open(os.path.join(stack_dir, ".lbctl", "run", "lb", lb, "config.json")) as config:
                lbctl_config = json.load(config)
            lbctl_config["name"] = f"{lb}-counted"
            lbctl_config["listeners"][0]["port"] = ports[name]
            lbctl_cfg = os.path.join(work, f"{lb}-proxy.json")
            with open(lbctl_cfg, "w") as out:
                json.dump(lbctl_config, out)
            commands[name] = [LBCTL, "internal", "proxy", "--config", lbctl_cfg]
        results = {}
        for name, command in commands.items():
            requests, instructions = counted(procs, work, name, command, ports[name])
            results[name] = instructions / max(requests, 1)
            print(f"{name:10} {requests:>8} requests  {instructions / 1e6:>9.1f} M instructions  {results[name]:>8.0f} per request", flush=True)
        print()
        print(f"load: wrk -t1 -c8 -d{INSTR_DURATION} after a 2 s warm-up, each proxy alone under callgrind (user space only)")
        print()
        print("| proxy | instructions per request |")
        print("| --- | ---: |")
        for name, value in results.items():
            print(f"| {name} | {value:.0f} |")
        print()
        for other in ("nginx", "haproxy"):
            print(f"lbctl/{other}: instructions per request x{results['lbctl'] / results[other]:.2f}")
        print(f"access logs and metrics: lbctl+logs/lbctl instructions per request x{results['lbctl+logs'] / results['lbctl']:.3f}")
    finally:
        subprocess.run([LBCTL, "destroy", "-f", spec, "--auto-approve", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


# L4: the network load balancer.

NLB_IP = "127.0.0.250"  # An NLB needs its own address; the sink and HAProxy use 127.0.0.1.
L4_STREAMS = int(os.environ.get("BENCH_L4_STREAMS", "4"))
L4_WORKERS = int(os.environ.get("BENCH_L4_WORKERS", "32"))
# HAProxy copies through user space unless told to splice; lbctl's NLB always
# splices. BENCH_HAPROXY_SPLICE=1 measures HAProxy splicing too.
HAPROXY_SPLICE = os.environ.get("BENCH_HAPROXY_SPLICE") == "1"


class Scraper:
    """Fetches a metrics URL every second on a thread until stopped."""

    def __init__(self, url):
        import threading
        import urllib.request
        self.count = 0
        self.done = threading.Event()

        def scrape():
            while not self.done.wait(1.0):
                with urllib.request.urlopen(url, timeout=5) as response:
                    response.read()
                self.count += 1

        self.thread = threading.Thread(target=scrape, daemon=True)
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join(timeout=10)
        return self.count


def duration_seconds(text):
    """BENCH_DURATION as wrk takes it (`10s`, `500ms`, `1m`) in seconds."""
    match = re.fullmatch(r"([\d.]+)(ms|s|m)?", text.strip())
    if not match:
        raise SystemExit(f"BENCH_DURATION={text}: expected e.g. 10s")
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


def l4load(*args, seconds):
    """One l4load run on the load core; its JSON report."""
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, L4LOAD, *args, "--seconds", str(seconds)],
        check=True, capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def sink_counters(port):
    """The sink's own counts, asked directly (never through a proxy)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"STAT")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return json.loads(data)


def wait_forwarding(host, port, procs, timeout=30.0):
    """Until one short connection completes through the proxy (an NLB may
    listen before its first health check passes)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if l4load("connect", "--to", f"{host}:{port}", "--workers", "1", seconds=0.2)["completed"] > 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"no connection through {host}:{port} after {timeout}s\n{procs.logs()}")


def lbctl_nlb(stack_dir, port, sink_port):
    """Applies the lbctl NLB; its proxy PID, or the reason it could not start."""
    spec = os.path.join(stack_dir, "lbctl.yaml")
    with open(spec, "w") as out:
        out.write(f"""version: 1
name: benchl4
load_balancers:
  edge:
    type: network
    static_ip: {NLB_IP}
    worker_threads: 1
    listeners:
      - {{ port: {port}, protocol: TCP, default_action: {{ forward: sink }} }}
target_groups:
  sink:
    protocol: TCP
    port: {sink_port}
    target_type: ip
    targets: [{{ ip: 127.0.0.1 }}]
    health_check: {{ protocol: TCP, interval: 1s, timeout: 500ms }}
""")
    applied = subprocess.run([LBCTL, "apply", "-f", spec, "--auto-approve", "-q"], capture_output=True, text=True)
    if applied.returncode != 0:
        return None, (applied.stderr or applied.stdout).strip()
    pid_files = glob.glob(os.path.join(stack_dir, ".lbctl", "run", "lb", "edge", "pid")) or glob.glob(os.path.join(stack_dir, ".lbctl", "run", "**", "pid"), recursive=True)
    if not pid_files:
        return None, "applied, but no proxy pid file under .lbctl/run"
    return int(open(pid_files[0]).read()), None


def ksoftirqd(core):
    """The PID of the kernel thread that runs a core's deferred softirqs. On
    loopback, the TCP receive work of a send usually runs inline and is
    charged to the sender; under load the kernel defers part of it to this
    thread, so it counts as the pinned proxy's (or load side's) own CPU."""
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == f"ksoftirqd/{core}":
                return [int(pid)]
        except OSError:
            continue
    return []


def foreign_cpu(own_pids):
    """CPU seconds used so far by everything outside this benchmark: the
    machine's user + system time minus this script's, its finished children's
    (the load generators) and its long-running processes' (own_pids)."""
    # user, nice, system, irq, softirq: a task's own times include the
    # softirq work (loopback TCP) done on its behalf.
    fields = [int(it) for it in open("/proc/stat").readline().split()[1:8]]
    machine = (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / TICKS
    own = cpu_seconds(own_pids)
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return machine - own


# A run during which other processes used more than this share of the CPU is
# measured again, at most FOREIGN_RETRIES times, and left out of the medians
# if it stays noisy: on a shared machine, one compile job halves a proxy's
# figures.
FOREIGN_LIMIT = 0.10
FOREIGN_RETRIES = 2


def measure_l4(address, pids, own_pids, sink_port, seconds):
    """A throughput run then a connection-rate run through `address`; pids
    are the proxy's (none for the sink reached directly)."""
    foreign_before, started = foreign_cpu(own_pids), time.time()
    sink_before, cpu_before = sink_counters(sink_port), cpu_seconds(pids)
    stream = l4load("stream", "--to", address, "--conns", str(L4_STREAMS), seconds=seconds)
    sink_one, cpu_one = sink_counters(sink_port), cpu_seconds(pids)
    single = l4load("stream", "--to", address, "--conns", "1", seconds=seconds)
    sink_mid, cpu_mid = sink_counters(sink_port), cpu_seconds(pids)
    connect = l4load("connect", "--to", address, "--workers", str(L4_WORKERS), seconds=seconds)
    sink_after, cpu_after = sink_counters(sink_port), cpu_seconds(pids)
    received = sink_one["stream_bytes"] - sink_before["stream_bytes"]
    received_single = sink_mid["stream_bytes"] - sink_one["stream_bytes"]
    answered = sink_after["answered"] - sink_mid["answered"]
    run = {
        # Clock-tick rounding can make it slightly negative on a quiet machine.
        "foreign": max(0.0, (foreign_cpu(own_pids) - foreign_before) / ((time.time() - started) * (os.cpu_count() or 1))),
        "gbps": stream["gb_per_sec"],
        "gbps_single": single["gb_per_sec"],
        "cps": connect["conns_per_sec"],
        "p99_ms": connect["p99_ms"] or 0.0,
        "failures": connect["failures"] + stream["errors"] + single["errors"],
        "cpu_s_per_gb": (cpu_one - cpu_before) / max(stream["bytes"] / 1e9, 1e-9) if pids else None,
        "cpu_us_per_conn": (cpu_after - cpu_mid) / max(connect["completed"], 1) * 1e6 if pids else None,
        "delivered": (received + received_single) / max(stream["bytes"] + single["bytes"], 1),
        "problems": [],
    }
    # What the clients counted must have reached the sink: every byte (a
    # stream ends only after the sink closed), and at least one answered
    # request per completed connection.
    if received != stream["bytes"] or not stream["drained"]:
        run["problems"].append(f"clients sent {stream['bytes']} bytes, the sink received {received} (drained: {stream['drained']})")
    if received_single != single["bytes"] or not single["drained"]:
        run["problems"].append(f"one stream sent {single['bytes']} bytes, the sink received {received_single} (drained: {single['drained']})")
    if answered < connect["completed"]:
        run["problems"].append(f"{connect['completed']} connections completed, the sink answered {answered}")
    for report in (stream, single, connect):
        if report.get("first_error"):
            run["problems"].append(f"{report['mode']}: {report['first_error']}")
    return run


def run_l4():
    seconds = duration_seconds(DURATION)
    work = tempfile.mkdtemp(prefix="lbctl-bench-l4-")
    procs = Processes(work)
    stack_dir = os.path.join(work, "stack")
    os.makedirs(stack_dir)
    status = 0
    try:
        sink_port = free_port()
        sink = procs.start(["taskset", "-c", LOAD_CORE, L4LOAD, "sink", "--listen", f"127.0.0.1:{sink_port}"])
        wait_port(sink_port, procs)
        # name -> (address, PIDs whose CPU time is the proxy's)
        paths = {"direct": (f"127.0.0.1:{sink_port}", [])}
        proxy_softirq = ksoftirqd(PROXY_CORE) if PROXY_CORE != LOAD_CORE else []

        haproxy_port = free_port()
        haproxy_cfg = os.path.join(work, "haproxy-l4.cfg")
        splice = "  option splice-request\n  option splice-response\n" if HAPROXY_SPLICE else ""
        with open(haproxy_cfg, "w") as cfg:
            cfg.write(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
{splice}  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend front
  bind 127.0.0.1:{haproxy_port}
  default_backend sink
backend sink
  server sink 127.0.0.1:{sink_port} check inter 1s
""")
        haproxy = procs.start([tool("haproxy"), "-f", haproxy_cfg, "-db"])
        wait_port(haproxy_port, procs)
        pin([haproxy.pid], PROXY_CORE)
        wait_forwarding("127.0.0.1", haproxy_port, procs)
        paths["haproxy"] = (f"127.0.0.1:{haproxy_port}", [haproxy.pid, *proxy_softirq])

        lbctl_port = free_port(NLB_IP)
        lbctl_pid, lbctl_error = lbctl_nlb(stack_dir, lbctl_port, sink_port)
        if lbctl_pid:
            wait_port(lbctl_port, procs, host=NLB_IP)
            pin([lbctl_pid], PROXY_CORE)
            wait_forwarding(NLB_IP, lbctl_port, procs)
            paths["lbctl"] = (f"{NLB_IP}:{lbctl_port}", [lbctl_pid, *proxy_softirq])
        else:
            status = 1
            print(f"lbctl NLB not measured: {lbctl_error}", flush=True)

        own_pids = sorted({sink.pid, *ksoftirqd(PROXY_CORE), *ksoftirqd(LOAD_CORE), *(pid for _, pids in paths.values() for pid in pids)})
        for address, _ in paths.values():
            l4load("stream", "--to", address, "--conns", str(L4_STREAMS), seconds=1)
            l4load("connect", "--to", address, "--workers", str(L4_WORKERS), seconds=1)
        results = {name: [] for name in paths}
        mismatches = []
        for round_idx in range(ROUNDS):
            for name, (address, pids) in paths.items():
                for attempt in range(1 + FOREIGN_RETRIES):
                    run = measure_l4(address, pids, own_pids, sink_port, seconds)
                    if run["foreign"] <= FOREIGN_LIMIT or attempt == FOREIGN_RETRIES:
                        break
                    print(f"round {round_idx + 1} {name:8} other processes used {run['foreign']:.0%} of the CPU: measuring again", flush=True)
                mismatches.extend(f"round {round_idx + 1} {name}: {problem}" for problem in run["problems"])
                results[name].append(run)
                cpu = "" if not pids else f"cpu {run['cpu_s_per_gb']:.3f} s/GB, {run['cpu_us_per_conn']:.1f} us/conn  "
                print(f"round {round_idx + 1} {name:8} {run['gbps']:>6.2f} GB/s  one stream {run['gbps_single']:>5.2f} GB/s  {run['cps']:>8.0f} conn/s  p99 {run['p99_ms']:.3f} ms  "
                      f"{cpu}sink got {run['delivered']:.0%} of bytes  failures {run['failures']}  other processes {run['foreign']:.0%} CPU", flush=True)

        summary = {}
        for name, runs in results.items():
            # Medians over the quiet runs when there are any.
            quiet = [run for run in runs if run["foreign"] <= FOREIGN_LIMIT]
            summary[name] = {key: (None if runs[0][key] is None else statistics.median(run[key] for run in quiet or runs))
                             for key in ("gbps", "gbps_single", "cps", "p99_ms", "cpu_s_per_gb", "cpu_us_per_conn")}
            summary[name]["failures"] = sum(run["failures"] for run in runs)
            summary[name]["quiet"] = f"{len(quiet)}/{len(runs)}"
        foreign = max(run["foreign"] for runs in results.values() for run in runs)
        print()
        print(f"machine: {os.cpu_count()} cores, {platform_line()}")
        print(f"load: l4load stream --conns {L4_STREAMS}, stream --conns 1 and connect --workers {L4_WORKERS}, {DURATION} each x {ROUNDS} rounds; "
              f"proxies pinned to core {PROXY_CORE}, l4load and the sink to core {LOAD_CORE}; HAProxy {'splices' if HAPROXY_SPLICE else 'copies (no splice)'}")
        print(f"other processes used up to {foreign:.0%} of the machine's CPU during a run; medians are over the quiet runs "
              f"(others under {FOREIGN_LIMIT:.0%}), or over all runs of a path that had none")
        print()
        print(f"| path | GB/s, {L4_STREAMS} streams | CPU per GB (s) | GB/s, one stream | connections/s | connect p99 (ms) | CPU per connection (us) | failures | quiet runs |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, row in summary.items():
            label = "direct (no proxy)" if name == "direct" else name
            per_gb = "-" if row["cpu_s_per_gb"] is None else f"{row['cpu_s_per_gb']:.3f}"
            per_conn = "-" if row["cpu_us_per_conn"] is None else f"{row['cpu_us_per_conn']:.1f}"
            print(f"| {label} | {row['gbps']:.2f} | {per_gb} | {row['gbps_single']:.2f} | {row['cps']:.0f} | {row['p99_ms']:.3f} | {per_conn} | {row['failures']} | {row['quiet']} |")
        print()
        if "lbctl" in summary:
            lb, them = summary["lbctl"], summary["haproxy"]
            print(f"lbctl/haproxy: GB/s x{lb['gbps'] / them['gbps']:.2f}, one stream x{lb['gbps_single'] / them['gbps_single']:.2f}, "
                  f"connections/s x{lb['cps'] / them['cps']:.2f}, connect p99 x{lb['p99_ms'] / max(them['p99_ms'], 1e-9):.2f}, "
                  f"CPU per GB x{lb['cpu_s_per_gb'] / them['cpu_s_per_gb']:.2f}, CPU per connection x{lb['cpu_us_per_conn'] / them['cpu_us_per_conn']:.2f}")
        else:
            print("lbctl/haproxy: not measured (no lbctl NLB)")
        if mismatches:
            status = 1
            print("forwarding check FAILED:")
            for line in mismatches:
                print(f"  {line}")
        else:
            print("forwarding check: the sink received every byte and answered every connection the clients counted")
    finally:
        subprocess.run([LBCTL, "destroy", "-f", os.path.join(stack_dir, "lbctl.yaml"), "--auto-approve", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return status


def platform_line():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; {os.uname().sysname} {os.uname().release}"


if __name__ == "__main__":
    sys.exit(main())
