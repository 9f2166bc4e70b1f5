#!/usr/bin/env python3
"""An agent whose log pump host is stopped (SIGSTOP), then a start of 8 instances: when each
port answers, and when `pmcluster list` shows each instance online.

The instance whose pump request the stopped host holds cannot be online before the agent gives
up on the host (2 s, then it starts that pump on its own); the question is what the other
instances wait for. Loopback only; a local cluster of its own (`pmcluster up` in a temporary
PMCLUSTER_HOME), stopped at the end.

Usage: python3 bench/supervisors/stuck_pump_host.py [BIN_DIR] [COORDINATOR_PORT]
  BIN_DIR           where pmcluster, pmcluster-agent, pmcluster-coordinator and
                    pmcluster-testapp are (default: target/release)
  COORDINATOR_PORT  a free loopback port for the coordinator (default: 7621); the apps use
                    the 200 ports from COORDINATOR_PORT + 1000
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench import port_open

N = 8


def wait(pred, what, limit=30):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.002)


def pump_hosts(agent):
    """The agent's children named like its pump host."""
    found = []
    for task in os.listdir(f"/proc/{agent}/task"):
        with open(f"/proc/{agent}/task/{task}/children") as f:
            for kid in f.read().split():
                try:
                    with open(f"/proc/{kid}/comm") as c:
                        if c.read().strip() == "pmcluster-pumps":
                            found.append(int(kid))
                except OSError:
                    pass
    return found


def main():
    bin_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
    listen = int(sys.argv[2]) if len(sys.argv) > 2 else 7621
    home = tempfile.mkdtemp(prefix="pmcluster-stuck-host-")
    env = dict(os.environ, PMCLUSTER_HOME=home,
               PMCLUSTER_COORDINATOR=f"http://127.0.0.1:{listen}")

    def cli(*args):
        return subprocess.run([f"{bin_dir}/pmcluster", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    app = f"{bin_dir}/pmcluster-testapp"
    base_a, base_b = listen + 1000, listen + 1100
    up = cli("up", "--listen", f"127.0.0.1:{listen}")
    if up.returncode != 0:
        raise SystemExit(f"pmcluster up failed: {up.stderr}")
    try:
        r = cli("start", app, "--name", "a", "--instances", "1", "--port",
                f"{base_a}-{base_a + 9}")
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        wait(lambda: port_open(base_a), "app a")
        with open(f"{home}/agent.pid") as f:
            agent = int(f.read())
        # The host starts with the first instance's pump, just after the instance.
        wait(lambda: len(pump_hosts(agent)) == 1, "the pump host")
        host = pump_hosts(agent)[0]
        os.kill(host, 19)  # SIGSTOP: it takes no request until the agent ends it
        t0 = time.perf_counter()
        r = cli("start", app, "--name", "b", "--instances", str(N), "--port",
                f"{base_b}-{base_b + 99}")
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        answered, online = {}, {}

        def all_answer():
            for i in range(N):
                if i not in answered and port_open(base_b + i):
                    answered[i] = time.perf_counter() - t0
            return len(answered) == N

        def all_online():
            rows = json.loads(cli("list", "b", "-o", "json").stdout)
            rows = rows if isinstance(rows, list) else rows.get("instances", [])
            now = time.perf_counter() - t0
            for row in rows:
                if row.get("status") == "online" and row.get("index") not in online:
                    online[row.get("index")] = now
            return len(online) == N

        wait(all_answer, "app b's ports")
        wait(all_online, "app b online")
        ports = sorted(answered.values())
        listed = ", ".join(f"{t * 1000:.0f}" for t in sorted(online.values()))
        print(f"ports answering: first {ports[0] * 1000:.0f} ms, last {ports[-1] * 1000:.0f} ms;"
              f" listed online: {listed} ms")
    finally:
        cli("down")
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
