#!/usr/bin/env python3
"""`make bench`: lbctl's application load balancer beside nginx and HAProxy.

Two nginx backends serve a small response. In front of them, one at a time
and in alternation, run nginx (`worker_processes 1`), HAProxy (`nbthread 1`)
and an lbctl ALB (`worker_threads: 1`), each pinned to the same core and each
adding X-Forwarded-For, with keep-alive to the backends. wrk (pinned to the
other core with the backends) drives each for the same time. Printed per
proxy: requests/s, p50, p99, CPU time per request (the proxy's own processes,
from /proc), and the ratios lbctl/nginx and lbctl/HAProxy.

BENCH_DURATION, BENCH_ROUNDS and BENCH_CONNECTIONS change the load;
BENCH_PROFILE=FILE records the lbctl proxy with `perf` into FILE.

Everything listens on 127.0.0.1; every process started here is stopped here,
by PID. Figures vary with the machine: compare ratios, not absolutes.
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LBCTL = os.path.join(ROOT, "target", "release", "lbctl")
DURATION = os.environ.get("BENCH_DURATION", "10s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
PROXY_CORE = "0"
LOAD_CORE = "1" if os.cpu_count() and os.cpu_count() > 1 else "0"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, procs=None, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    logs = procs.logs() if procs else ""
    raise SystemExit(f"nothing listens on port {port} after {timeout}s\n{logs}")


def ensure_tools():
    missing = [pkg for tool, pkg in (("nginx", "nginx-light"), ("haproxy", "haproxy"), ("wrk", "wrk"), ("taskset", "util-linux")) if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        print(f"installing {' '.join(missing)} with apt", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def cpu_seconds(pids):
    """User + system CPU time of the processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def children(pid):
    try:
        return [int(it) for it in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


def pin(pids, core):
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], check=True, stdout=subprocess.DEVNULL)


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


def nginx_conf(work, name, body):
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as conf:
        conf.write(f"""daemon off;
master_process on;
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


def wrk(port):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, tool("wrk"), "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True,
    ).stdout
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
    ensure_tools()
    if not os.path.exists(LBCTL) or os.environ.get("BENCH_SKIP_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "-p", "lbctl"], cwd=ROOT, check=True)
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
        ports = {"nginx": free_port(), "haproxy": free_port(), "lbctl": free_port()}
        nginx = procs.start([tool("nginx"), "-c", nginx_conf(work, "proxy", f"""
  upstream backends {{ {upstream} keepalive 128; }}
  server {{
    listen 127.0.0.1:{ports['nginx']};
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}"""), "-p", work])

        haproxy_cfg = os.path.join(work, "haproxy.cfg")
        with open(haproxy_cfg, "w") as cfg:
            servers = "\n".join(f"  server b{idx} 127.0.0.1:{port}" for idx, port in enumerate(backends))
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
  bind 127.0.0.1:{ports['haproxy']}
  default_backend backends
backend backends
  balance roundrobin
{servers}
""")
        haproxy = procs.start([tool("haproxy"), "-f", haproxy_cfg, "-db"])

        spec = os.path.join(stack_dir, "lbctl.yaml")
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
target_groups:
  backends:
    target_type: ip
    port: 80
    targets: [{targets}]
    health_check: {{ path: /, interval: 1s, timeout: 500ms, healthy_threshold: 2 }}
""")
        subprocess.run([LBCTL, "apply", "-f", spec, "--auto-approve", "-q"], check=True, stdout=subprocess.DEVNULL)
        lbctl_pid = int(open(os.path.join(stack_dir, ".lbctl", "run", "lb", "front", "pid")).read())
        for port in ports.values():
            wait_port(port, procs)
        proxies = {
            "nginx": [nginx.pid, *children(nginx.pid)],
            "haproxy": [haproxy.pid],
            "lbctl": [lbctl_pid],
        }
        for pids in proxies.values():
            pin(pids, PROXY_CORE)

        # Warm up every proxy, then alternate.
        for name, port in ports.items():
            subprocess.run(["taskset", "-c", LOAD_CORE, tool("wrk"), "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"], check=True, capture_output=True)
        results = {name: [] for name in ports}
        for round_idx in range(ROUNDS):
            for name, port in ports.items():
                before = cpu_seconds(proxies[name])
                profiler = None
                if name == "lbctl" and os.environ.get("BENCH_PROFILE"):
                    # BENCH_PROFILE=FILE: record the proxy with perf during its runs.
                    profiler = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", os.environ["BENCH_PROFILE"], "-p", str(lbctl_pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                run = wrk(port)
                if profiler:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait()
                run["cpu_us_per_request"] = (cpu_seconds(proxies[name]) - before) / max(run["requests"], 1) * 1e6
                results[name].append(run)
                print(f"round {round_idx + 1} {name:8} {run['rps']:>10.0f} req/s  p50 {run['p50']:.3f} ms  p99 {run['p99']:.3f} ms  "
                      f"cpu {run['cpu_us_per_request']:.1f} us/req  errors {run['errors']} {run['socket_errors']}", flush=True)

        summary = {}
        for name, runs in results.items():
            summary[name] = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99", "cpu_us_per_request")}
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
            lb, them = summary["lbctl"], summary[other]
            print(f"lbctl/{other}: requests/s x{lb['rps'] / them['rps']:.2f}, p99 x{lb['p99'] / them['p99']:.2f}, "
                  f"CPU per request x{lb['cpu_us_per_request'] / them['cpu_us_per_request']:.2f}")
    finally:
        subprocess.run([LBCTL, "destroy", "-f", os.path.join(stack_dir, "lbctl.yaml"), "--auto-approve", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


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
