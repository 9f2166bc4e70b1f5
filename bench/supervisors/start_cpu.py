#!/usr/bin/env python3
"""Where the CPU of one `pmcluster start ... --instances N` goes, beside N test apps started
directly: on 2 cores, a start's wall time cannot drop below the CPU all its processes use divided
by two, so this says how far the start-N ratio of bench.py can come down, and which part to cut.

For each of --runs starts (after one warm-up): the CPU time of the coordinator, the agent and the
log pump host (every thread, from /proc/PID/task/*/schedstat, in nanoseconds), of the CLI (this
script's children, from getrusage), and of the N apps (schedstat of each, from its fork); then
the same N apps started directly by this script, with its own CPU and theirs. Medians are
printed. Loopback only; every process started here is ended before the script exits.

Usage: start_cpu.py --bin-dir target/release [--instances 12] [--runs 5]
"""

import argparse
import glob
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def cpu_ms(pid):
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e6


def children_cpu_ms():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--instances", type=int, default=12)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.instances
    testapp = os.path.join(args.bin_dir, "pmcluster-testapp")
    cli = os.path.join(args.bin_dir, "pmcluster")
    home = os.path.abspath(os.path.join("target", "bench-start-cpu"))
    env = dict(os.environ, PMCLUSTER_HOME=home)

    def run(*a, check=True):
        return subprocess.run([cli, *a], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=check, timeout=120)

    cport = bench.free_range(1, 30000, 31000)
    base = bench.free_range(n, 20000, 30000)
    ports = list(range(base, base + n))
    run("up", "--listen", f"127.0.0.1:{cport}", "--node-name", "bench")
    daemons = {}
    for name in ("coordinator", "agent"):
        with open(os.path.join(home, f"{name}.pid")) as f:
            daemons[name] = int(f.read().strip())
    seen = {k: [] for k in ("cli", "coordinator", "agent", "pump host", "apps", "wall")}
    direct = {k: [] for k in ("script", "apps", "wall")}
    try:
        for k in range(args.runs + 1):
            before = {name: cpu_ms(pid) for name, pid in daemons.items()}
            hosts_before = {p: cpu_ms(p) for p in bench_pump_hosts(daemons["agent"])}
            c0 = children_cpu_ms()
            t0 = time.perf_counter()
            run("start", testapp, "--name", "many", "--instances", str(n),
                "--port", f"{base}-{base + n - 1}")
            c1 = children_cpu_ms()
            bench.wait_ports(ports, 60)
            wall = time.perf_counter() - t0
            time.sleep(0.05)
            apps = [p for p in app_pids(daemons["agent"])]
            if k > 0:
                seen["cli"].append(c1 - c0)
                for name, pid in daemons.items():
                    seen[name].append(cpu_ms(pid) - before[name])
                seen["pump host"].append(sum(cpu_ms(p) - c for p, c in hosts_before.items()))
                seen["apps"].append(sum(cpu_ms(p) for p in apps))
                seen["wall"].append(wall * 1000)
            run("delete", "many")
            bench.wait_closed(ports, 30)
            time.sleep(bench.SETTLE_S)
            s0 = time.process_time()
            t0 = time.perf_counter()
            procs = [bench.start_app(testapp, p) for p in ports]
            s1 = time.process_time()
            bench.wait_ports(ports, 60)
            wall = time.perf_counter() - t0
            time.sleep(0.05)
            if k > 0:
                direct["script"].append((s1 - s0) * 1000)
                direct["apps"].append(sum(cpu_ms(p.pid) for p in procs))
                direct["wall"].append(wall * 1000)
            for p in procs:
                bench.kill_pid(p.pid)
            for p in procs:
                p.wait()
            bench.wait_closed(ports, 30)
            time.sleep(bench.SETTLE_S)
    finally:
        run("down", check=False)
    med = {k: statistics.median(v) for k, v in seen.items() if v}
    dmed = {k: statistics.median(v) for k, v in direct.items() if v}
    ours = sum(v for k, v in med.items() if k != "wall")
    theirs = dmed["script"] + dmed["apps"]
    print(f"start {n}, medians of {args.runs} (CPU ms):")
    for k in ("cli", "coordinator", "agent", "pump host", "apps"):
        print(f"  pmcluster {k:12s} {med[k]:7.2f}")
    print(f"  pmcluster total        {ours:7.2f}  wall {med['wall']:.1f} ms")
    print(f"  direct script          {dmed['script']:7.2f}")
    print(f"  direct apps            {dmed['apps']:7.2f}")
    print(f"  direct total           {theirs:7.2f}  wall {dmed['wall']:.1f} ms")
    print(f"  floor on 2 cores: pmcluster {ours / 2:.1f} ms, direct {theirs / 2:.1f} ms")


def children_of(pid):
    out = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(d + "/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d.rsplit("/", 1)[1]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def bench_pump_hosts(agent):
    """The agent's log pump host (its child named pmcluster-pumps), which forks a pump per
    instance; the pumps themselves are new processes each run and are not counted."""
    return [p for p in children_of(agent) if comm(p).startswith("pmcluster-pumps")]


def app_pids(agent):
    return [p for p in children_of(agent) if comm(p).startswith("pmcluster-testa")]


if __name__ == "__main__":
    main()
