#!/usr/bin/env python3
"""pmcluster's agent against supervisord and PMDaemon, the same scenarios in one run.

Scenarios (loopback only, every loop bounded in count and time):
  crash    SIGKILL an instance, time until its port accepts again (a new process), median of N;
           beside a bare start (the app started directly) and a bare restart (the app killed,
           and started directly as soon as its pidfd reports the exit), and beside bare starts
           taken between the crashes of the same loop (an interpreted app's start drifts by
           milliseconds over minutes, so a crash is also compared with starts of its own time)
  rss      resident memory of the supervisor process while it supervises 50 instances
  cpu      CPU of the supervisor process over an idle period with 50 instances
  start12  time from the start command until 12 instances accept connections, beside the time
           the same 12 processes take when started directly (the app's own start); median of
           --start-runs, each start followed by a direct start, and the ratio is over the
           median of those paired direct starts (on a noisy machine, direct starts taken once
           at the beginning moved a ratio by up to x0.5 between two runs)
  start50  the same with 50 instances (rss and cpu are taken on its last run)
  read     one read command of the supervisor (its list or status), timed after each start12
           pair: about what a start command costs before its first spawn (its exec, connect and
           call), so (read + direct) / direct estimates the lowest start12 ratio a supervisor
           driven by a command could reach; an estimate, not a bound (a start's spawns may
           overlap its command's exit, and a read may do more or less than a start does first)

The app is the same for every system in a run: pmcluster-testapp (release build; `--app testapp`,
the default), whose start is about 1 ms of CPU, so that a supervisor's own cost shows at its
largest; or a small HTTP server as users run them, beside this script: httpapp.py on Python's
standard library (`--app python`) or httpapp.js on Node's (`--app node`), each run from a copy
whose first line names the interpreter's real file (see `pinned_script`). Every process started here is ended by pid (or by its
supervisor) before the script exits. Run by scripts/bench-supervisors.sh.
"""

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
N_MANY = 50
N_FEW = 12
# Quiet time after each stop, before the next start is timed.
SETTLE_S = 0.3


# ----------------------------------------------------------------------------------------------
# /proc and sockets


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_range(n, low=20000, high=30000):
    start = low
    while start + n < high:
        if all(port_free(p) for p in range(start, start + n)):
            return start
        start += n
    raise SystemExit(f"no {n} free ports between {low} and {high}")


def wait_ports(ports, timeout):
    """Seconds until every port accepts a connection, or None after `timeout`."""
    t0 = time.perf_counter()
    left = set(ports)
    while left:
        left = {p for p in left if not port_open(p)}
        if not left:
            break
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(0.002)
    return time.perf_counter() - t0


def wait_port_closely(port, timeout):
    """Seconds until `port` accepts a connection, asking every 0.2 ms as `crash_latency` does,
    or None after `timeout`: the single-app anchors (a bare start, a bare restart) are timed by
    the same poll as the crash they are set beside, not by `wait_ports`' 2 ms steps, which added
    up to 2 ms (1 ms on average) to the anchor alone."""
    t0 = time.perf_counter()
    while not port_open(port):
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(0.0002)
    return time.perf_counter() - t0


def wait_closed(ports, timeout):
    t0 = time.perf_counter()
    while any(port_open(p) for p in ports):
        if time.perf_counter() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def listen_inode(port):
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return parts[9]
    except OSError:
        pass
    return None


def listener_pid(port):
    """The pid of the process that listens on 127.0.0.1:port."""
    inode = listen_inode(port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
        except OSError:
            continue
    return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------------------------
# The systems under test


class Pmcluster:
    name = "pmcluster"

    def __init__(self, bin_dir, testapp, work):
        self.bin = bin_dir
        self.testapp = testapp
        self.home = os.path.join(work, "pmcluster")
        self.cport = free_range(1, 31000, 32000)
        self.env = dict(os.environ, PMCLUSTER_HOME=self.home,
                        PMCLUSTER_COORDINATOR=f"http://127.0.0.1:{self.cport}")

    def cli(self, *args, check=True):
        r = subprocess.run([os.path.join(self.bin, "pmcluster"), *args], env=self.env,
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"pmcluster {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def setup(self):
        self.cli("up", "--listen", f"127.0.0.1:{self.cport}", "--node-name", "bench")

    def daemon_pid(self):
        with open(os.path.join(self.home, "agent.pid")) as f:
            return int(f.read().strip())

    def coordinator_pid(self):
        with open(os.path.join(self.home, "coordinator.pid")) as f:
            return int(f.read().strip())

    def start_one(self, port):
        self.cli("start", self.testapp, "--name", "crash", "--port", str(port))

    def stop_one(self):
        self.cli("delete", "crash")

    def start_many(self, base, n=N_MANY):
        self.cli("start", self.testapp, "--name", "many", "--instances", str(n),
                 "--port", f"{base}-{base + n - 1}")

    def stop_many(self):
        self.cli("delete", "many")

    def read(self):
        self.cli("list")

    def teardown(self):
        self.cli("down", check=False)


class PmclusterNoCgroups(Pmcluster):
    """The same agent with per-instance cgroups off (`PMCLUSTER_NO_CGROUPS=1`)."""
    name = "pmcluster --no-cgroups"

    def __init__(self, bin_dir, testapp, work):
        super().__init__(bin_dir, testapp, os.path.join(work, "no-cgroups"))
        self.env["PMCLUSTER_NO_CGROUPS"] = "1"


class Supervisord:
    name = "supervisord"

    def __init__(self, testapp, work):
        self.testapp = testapp
        self.dir = os.path.join(work, "supervisord")
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        self.conf = os.path.join(self.dir, "supervisord.conf")
        self.proc = None
        self.group = "many"

    def write_conf(self, crash_port, base):
        d = self.dir
        # An unprivileged, self-contained instance: its own unix socket, logs and pid file in a
        # temporary dir; nothing of the system service is used. Same policy as the others:
        # restart on any exit, no delay, the whole group stopped.
        text = f"""
[unix_http_server]
file={d}/supervisor.sock

[supervisord]
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}/logs
nodaemon=true
loglevel=warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[program:crash]
command={self.testapp}
environment=PORT="{crash_port}"
autostart=false
autorestart=true
startsecs=1
stopasgroup=true
killasgroup=true
stdout_logfile={d}/logs/crash.out
stderr_logfile={d}/logs/crash.err

[program:many]
command={self.testapp}
process_name=%(program_name)s_%(process_num)02d
numprocs={N_MANY}
numprocs_start={base % 100}
environment=PORT="{base // 100}%(process_num)02d"
autostart=false
autorestart=true
startsecs=1
stopasgroup=true
killasgroup=true
stdout_logfile={d}/logs/%(program_name)s_%(process_num)02d.out
stderr_logfile={d}/logs/%(program_name)s_%(process_num)02d.err

[program:few]
command={self.testapp}
process_name=%(program_name)s_%(process_num)02d
numprocs={N_FEW}
numprocs_start={base % 100}
environment=PORT="{base // 100}%(process_num)02d"
autostart=false
autorestart=true
startsecs=1
stopasgroup=true
killasgroup=true
stdout_logfile={d}/logs/%(program_name)s_%(process_num)02d.out
stderr_logfile={d}/logs/%(program_name)s_%(process_num)02d.err
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def ctl(self, *args):
        r = subprocess.run(["supervisorctl", "-c", self.conf, *args], capture_output=True,
                           text=True, timeout=120)
        return r

    def setup(self):
        self.proc = subprocess.Popen(["supervisord", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.ctl("status").returncode in (0, 3):
                return
            time.sleep(0.05)
        raise RuntimeError("supervisord did not answer")

    def daemon_pid(self):
        return self.proc.pid

    def start_one(self, port):
        self.ctl("start", "crash")

    def stop_one(self):
        self.ctl("stop", "crash")

    def start_many(self, base, n=N_MANY):
        # A group each: `start GROUP:*` starts its processes together, while naming processes
        # one by one waits for each to be up (startsecs) before the next.
        self.group = "many" if n == N_MANY else "few"
        self.ctl("start", f"{self.group}:*")

    def stop_many(self):
        self.ctl("stop", f"{self.group}:*")

    def read(self):
        # Exits 3 while a process is stopped: an answer all the same.
        r = self.ctl("status")
        if r.returncode not in (0, 3):
            raise RuntimeError(f"supervisorctl status: exit {r.returncode}: {r.stdout}{r.stderr}")

    def teardown(self):
        if self.proc:
            self.ctl("stop", "all")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_pid(self.proc.pid)
                self.proc.wait()


class Pmdaemon:
    name = "pmdaemon"

    def __init__(self, binary, testapp, work):
        self.bin = binary
        self.testapp = testapp
        self.home = os.path.join(work, "pmdaemon")
        os.makedirs(self.home, exist_ok=True)
        self.env = dict(os.environ, HOME=self.home, NO_COLOR="1")

    def cmd(self, *args):
        return subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True,
                              timeout=120)

    def setup(self):
        pass

    def daemon_pid(self):
        # PMDaemon 0.1.x keeps no resident process: `start` spawns the app and exits.
        return None

    def start_one(self, port):
        self.cmd("start", self.testapp, "--name", "crash", "--port", str(port))

    def stop_one(self):
        self.cmd("delete", "crash")
        self.kill_leftovers()

    def start_many(self, base, n=N_MANY):
        self.cmd("start", self.testapp, "--name", "many", "--instances", str(n),
                 "--port", f"{base}-{base + n - 1}")

    def stop_many(self):
        # `delete many` (0.1.4) finds no process of that name, only many-0 ... many-N, and
        # leaves their configurations, so the next `start --name many` fails with
        # ProcessAlreadyExists. This run's HOME is private, so "all" is just these.
        self.cmd("delete", "all", "--force")
        self.kill_leftovers()

    def read(self):
        r = self.cmd("list")
        if r.returncode != 0:
            raise RuntimeError(f"pmdaemon list: exit {r.returncode}: {r.stdout}{r.stderr}")

    def teardown(self):
        # Without --force it asks for confirmation, and with no answer deletes nothing.
        self.cmd("delete", "all", "--force")
        self.kill_leftovers()

    def kill_leftovers(self):
        """`pmdaemon delete` (0.1.4) leaves the processes running: end the ones it started here
        (the app, as argv[0] or an interpreter's argv[1], with this run's private HOME in its environment), by pid."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().split(b"\0")
            except OSError:
                continue
            app = os.path.basename(self.testapp).encode()
            if any(arg.endswith(app) for arg in cmdline[:2]) \
                    and f"HOME={self.home}".encode() in env:
                kill_pid(int(pid))


# ----------------------------------------------------------------------------------------------
# Scenarios


def crash_latency(system, port, n, testapp, bare_port):
    """Median seconds from SIGKILL of the instance to its port answering from a new process, and
    the median of the bare starts (the app started directly, on `bare_port`) taken between the
    crashes: an app whose start drifts by milliseconds over minutes (the interpreted ones) is
    compared with itself at the same time."""
    system.start_one(port)
    if wait_ports([port], 30) is None:
        return None, "did not start", None
    samples, bares = [], []
    note = ""
    for _ in range(n):
        # Past every system's minimum uptime (1 s), so each kill is a "stable" crash; the bare
        # start between two is done with before the kill.
        time.sleep(1.0)
        bare = bare_once(testapp, bare_port)
        if bare is not None:
            bares.append(bare)
        time.sleep(0.5)
        pid = listener_pid(port)
        if pid is None:
            note = "no listener found"
            break
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            note = "the listener ended before the kill"
            break
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        # The killed process's socket still answers for a few hundred microseconds, until the
        # kernel closes its files; it reports the exit (to the supervisor, and to this pidfd)
        # only after, so no restart can answer sooner. A connect before then that the old
        # socket answered sent the loop into the /proc walk below (2.5-7.5 ms) and the new
        # socket was seen only after it: the slow half of the samples.
        try:
            select.select([pidfd], [], [], 10)
        finally:
            os.close(pidfd)
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed > 10:
                note = "never restarted (waited 10 s)"
                break
            if port_open(port):
                # Timed when the port answers; whose answer it was is checked after, untimed
                # (the /proc walk takes milliseconds in Python).
                answered = time.perf_counter() - t0
                new = listener_pid(port)
                if new is not None and new != pid:
                    samples.append(answered)
                    break
            time.sleep(0.0002)
        if note:
            break
    system.stop_one()
    wait_closed([port], 30)
    if not samples:
        return None, note, median_of(bares)
    return statistics.median(samples), f"n={len(samples)} min={min(samples) * 1000:.1f}ms " \
        f"max={max(samples) * 1000:.1f}ms", median_of(bares)


def start_app(testapp, port):
    """The app started directly (no supervisor), listening on `port`, its output discarded."""
    return subprocess.Popen([testapp], env=dict(os.environ, PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def direct_restart(testapp, port, n):
    """Median seconds from SIGKILL of a directly started app to its port answering from a new
    one that this script starts as soon as the old one's pidfd says it has ended: a supervisor
    that costs nothing. Above a bare start by the kernel's teardown of the old process (its
    memory, then its sockets), which no supervisor can see past: the exit is reported after it."""
    samples = []
    proc = start_app(testapp, port)
    if wait_ports([port], 10) is None:
        kill_pid(proc.pid)
        proc.wait()
        return None
    for _ in range(n):
        time.sleep(0.3)
        pidfd = os.pidfd_open(proc.pid)
        try:
            t0 = time.perf_counter()
            os.kill(proc.pid, signal.SIGKILL)
            select.select([pidfd], [], [], 10)
        finally:
            os.close(pidfd)
        proc.wait()
        proc = start_app(testapp, port)
        if wait_port_closely(port, 10) is not None:
            samples.append(time.perf_counter() - t0)
    kill_pid(proc.pid)
    proc.wait()
    wait_closed([port], 10)
    return statistics.median(samples) if samples else None


def direct_one(testapp, port, n):
    """Median seconds from starting one test app directly to its port accepting: the floor
    under any supervisor's crash-to-restart (which adds noticing the exit and spawning)."""
    return median_of([bare_once(testapp, port) for _ in range(n)])


def bare_once(testapp, port):
    """Seconds from starting one app directly to its port accepting (None if it never did); the
    app is ended and its port closed before the return."""
    t0 = time.perf_counter()
    proc = start_app(testapp, port)
    took = wait_port_closely(port, 10)
    took = None if took is None else time.perf_counter() - t0
    kill_pid(proc.pid)
    proc.wait()
    wait_closed([port], 10)
    return took


def direct_start(testapp, base, n=N_MANY):
    """Seconds for n test apps started directly (no supervisor) to accept connections."""
    ports = list(range(base, base + n))
    t0 = time.perf_counter()
    procs = [start_app(testapp, p) for p in ports]
    took = wait_ports(ports, 60)
    took = None if took is None else time.perf_counter() - t0
    for p in procs:
        kill_pid(p.pid)
    for p in procs:
        p.wait()
    wait_closed(ports, 30)
    time.sleep(SETTLE_S)
    return took


def median_of(samples):
    samples = [s for s in samples if s is not None]
    return statistics.median(samples) if samples else None


def start_stop(system, base, n):
    """Seconds from the start command until n instances accept connections; stops them after."""
    ports = list(range(base, base + n))
    t0 = time.perf_counter()
    system.start_many(base, n)
    took = wait_ports(ports, 120)
    took = None if took is None else time.perf_counter() - t0
    system.stop_many()
    wait_closed(ports, 60)
    # A supervisor's work after the ports close (records, cgroups, log files) must not land in
    # the next measurement, which may be the direct start it is compared with.
    time.sleep(SETTLE_S)
    return took


def read_once(system):
    """Seconds for one read command of `system` (its list or status), from the harness's spawn of
    it to its exit: about what a start command costs before its first spawn (see the module's
    `read`)."""
    t0 = time.perf_counter()
    system.read()
    return time.perf_counter() - t0


def many(system, testapp, base, idle_seconds, runs):
    """start12 and start50 seconds (medians of `runs`), each start paired with a direct start of
    the bare apps right after it (the ratios divide by the medians of these pairs, so a machine
    that slows down during the run moves both sides), and RSS KiB and CPU % of the supervisor
    with 50 instances (on the last start50)."""
    start12, direct12, reads = [], [], []
    for _ in range(runs):
        start12.append(start_stop(system, base, N_FEW))
        direct12.append(direct_start(testapp, base, N_FEW))
        reads.append(read_once(system))
    out = {"start12_s": median_of(start12), "direct12_s": median_of(direct12),
           "read_s": median_of(reads)}
    start50, direct50 = [], []
    for _ in range(runs - 1):
        start50.append(start_stop(system, base, N_MANY))
        direct50.append(direct_start(testapp, base, N_MANY))
    # The last start of 50 stays up for RSS and CPU: its direct start goes first.
    direct50.append(direct_start(testapp, base, N_MANY))
    ports = list(range(base, base + N_MANY))
    t0 = time.perf_counter()
    system.start_many(base)
    took = wait_ports(ports, 120)
    took = None if took is None else time.perf_counter() - t0
    start50.append(took)
    out["start50_s"] = median_of(start50)
    out["start50_runs_s"] = start50
    out["direct50_s"] = median_of(direct50)
    pid = system.daemon_pid()
    if pid is not None and took is not None:
        time.sleep(2)  # settle: first samples, first heartbeats
        out["rss_kib"] = rss_kib(pid)
        c0, w0 = cpu_ticks(pid), time.perf_counter()
        time.sleep(idle_seconds)
        c1, w1 = cpu_ticks(pid), time.perf_counter()
        out["cpu_pct"] = (c1 - c0) / CLK_TCK / (w1 - w0) * 100
        out["rss_kib_after"] = rss_kib(pid)
    system.stop_many()
    wait_closed(ports, 60)
    return out


# ----------------------------------------------------------------------------------------------


def pinned_script(app, work):
    """A copy of the app's script in `work` whose first line names its interpreter's real file:
    `#!/usr/bin/env python3` finds whatever PATH puts first, which on a machine with pyenv is a
    shell-script shim that forks a dozen processes (about 100 ms) before Python starts."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = "httpapp.py" if app == "python" else "httpapp.js"
    if app == "python":
        interpreter = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    else:
        interpreter = shutil.which("node")
        if interpreter is None:
            raise SystemExit("--app node: node is not installed (apt-get install nodejs)")
    interpreter = os.path.realpath(interpreter)
    with open(os.path.join(here, script)) as f:
        body = f.read().split("\n", 1)[1]
    path = os.path.join(work, script)
    with open(path, "w") as f:
        f.write(f"#!{interpreter}\n{body}")
    os.chmod(path, 0o755)
    print(f"interpreter: {interpreter}")
    return path


def fmt_ms(s):
    return "-" if s is None else f"{s * 1000:.1f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--pmdaemon", default="")
    ap.add_argument("--pmdaemon-note", default="")
    ap.add_argument("--crash-samples", type=int, default=20)
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--start-runs", type=int, default=7)
    ap.add_argument("--app", choices=["testapp", "python", "node"], default="testapp")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pmcluster-bench-")
    if args.app != "testapp":
        testapp = pinned_script(args.app, work)
    else:
        testapp = os.path.join(args.bin_dir, "pmcluster-testapp")
    print(f"app: {testapp}")
    crash_port = free_range(1, 20000, 21000)
    bare_port = free_range(1, crash_port + 1, 21000)
    base = free_range(N_MANY, 21000, 29900)
    base -= base % 100  # supervisord builds ports from a prefix and a 2-digit process number
    while not all(port_free(p) for p in range(base, base + N_MANY)):
        base += 100

    systems = [Pmcluster(args.bin_dir, testapp, work),
               PmclusterNoCgroups(args.bin_dir, testapp, work)]
    if shutil.which("supervisord"):
        sv = Supervisord(testapp, work)
        sv.write_conf(crash_port, base)
        systems.append(sv)
    else:
        print("supervisord: not installed (apt-get install -y supervisor); skipped")
    if args.pmdaemon:
        systems.append(Pmdaemon(args.pmdaemon, testapp, work))
    else:
        print(f"pmdaemon: not available ({args.pmdaemon_note or 'not installed'}); skipped")

    runs = max(1, args.start_runs)
    # The direct starts of 12 and 50 are taken beside each system's starts (see `many`).
    bare = direct_one(testapp, crash_port, args.crash_samples)
    print(f"baseline: one app started directly accepts after {fmt_ms(bare)} (median)")
    bare_restart = direct_restart(testapp, crash_port, args.crash_samples)
    print(f"baseline: one app killed and started again directly at its exit accepts after "
          f"{fmt_ms(bare_restart)} (median, from the kill)")
    results = {}
    for system in systems:
        print(f"== {system.name}", flush=True)
        r = {}
        try:
            system.setup()
            r["crash_s"], r["crash_note"], r["paired_bare_s"] = crash_latency(
                system, crash_port, args.crash_samples, testapp, bare_port)
            print(f"   crash-to-restart median {fmt_ms(r['crash_s'])} ({r['crash_note']})",
                  flush=True)
            r.update(many(system, testapp, base, args.idle_seconds, runs))
            print(f"   {json.dumps(r)}", flush=True)
            if isinstance(system, Pmcluster):
                r["coordinator_rss_kib"] = rss_kib(system.coordinator_pid())
        finally:
            system.teardown()
        results[system.name] = r

    # The table: one row per metric, the ratio pmcluster / peer in each peer's column.
    me = results.get("pmcluster", {})

    def per_instance_ms(r):
        if r.get("start50_s") is None or r.get("direct50_s") is None:
            return None
        return (r["start50_s"] - r["direct50_s"]) / N_MANY * 1000

    def over_direct(start, paired):
        return lambda r: r[start] / r[paired] if r.get(start) and r.get(paired) else None

    def floor12(r):
        if r.get("read_s") is None or not r.get("direct12_s"):
            return None
        return (r["read_s"] + r["direct12_s"]) / r["direct12_s"]

    def over_bare_ms(r):
        if r.get("crash_s") is None or bare is None:
            return None
        return (r["crash_s"] - bare) * 1000

    def over_paired_bare_ms(r):
        if r.get("crash_s") is None or r.get("paired_bare_s") is None:
            return None
        return (r["crash_s"] - r["paired_bare_s"]) * 1000

    def over_bare_restart_ms(r):
        if r.get("crash_s") is None or bare_restart is None:
            return None
        return (r["crash_s"] - bare_restart) * 1000

    rows = [
        ("crash-to-restart median", lambda r: r.get("crash_s"), lambda v: f"{v * 1000:.1f} ms",
         "< 20 ms"),
        ("crash-to-restart over a bare start", over_bare_ms, lambda v: f"{v:+.1f} ms", "<= 2 ms"),
        ("  over the bare starts between crashes", over_paired_bare_ms,
         lambda v: f"{v:+.1f} ms", "<= 2 ms"),
        ("crash-to-restart over a bare restart", over_bare_restart_ms, lambda v: f"{v:+.1f} ms",
         ""),
        ("agent RSS, 50 instances", lambda r: r.get("rss_kib"), lambda v: f"{v / 1024:.1f} MiB",
         "<= 15 MiB"),
        (f"agent CPU, {args.idle_seconds} s idle, 50 instances", lambda r: r.get("cpu_pct"),
         lambda v: f"{v:.3f} %", "<= 0.5 %"),
        ("start 12: total", lambda r: r.get("start12_s"), lambda v: f"{v * 1000:.0f} ms", ""),
        ("start 12: direct start, paired", lambda r: r.get("direct12_s"),
         lambda v: f"{v * 1000:.0f} ms", ""),
        ("start 12: over the direct start", over_direct("start12_s", "direct12_s"),
         lambda v: f"x{v:.2f}", "<= x1.1"),
        ("a read command (list or status)", lambda r: r.get("read_s"),
         lambda v: f"{v * 1000:.1f} ms", ""),
        ("start 12: estimated floor", floor12, lambda v: f"x{v:.2f}", ""),
        ("start 50: overhead per instance", per_instance_ms, lambda v: f"{v:.2f} ms", "< 5 ms"),
        ("start 50: total", lambda r: r.get("start50_s"), lambda v: f"{v * 1000:.0f} ms", ""),
        ("start 50: direct start, paired", lambda r: r.get("direct50_s"),
         lambda v: f"{v * 1000:.0f} ms", ""),
        ("start 50: over the direct start", over_direct("start50_s", "direct50_s"),
         lambda v: f"x{v:.2f}", "<= x1.1"),
    ]
    names = list(results)
    print()
    header = f"{'metric':<40}" + "".join(f"{n:>22}" for n in names) + f"{'goal':>12}"
    print(header)
    print("-" * len(header))
    for label, get, show, goal in rows:
        line = f"{label:<40}"
        mine = get(me)
        for n in names:
            v = get(results[n])
            if v is None:
                cell = "n/a"
            else:
                cell = show(v)
                if n != "pmcluster" and mine is not None and v:
                    cell += f" ({mine / v:.2f}x)"
            line += f"{cell:>22}"
        print(line + f"{goal:>12}")
    print("(x) = pmcluster / peer: below 1 means pmcluster is lower (better) on that metric")
    if "pmcluster" in results:
        print(f"pmcluster coordinator RSS (not a peer of any process above): "
              f"{results['pmcluster'].get('coordinator_rss_kib', 0) / 1024:.1f} MiB")
    for n in names:
        note = results[n].get("crash_note", "")
        if results[n].get("crash_s") is None and note:
            print(f"{n}: crash-to-restart n/a: {note}")
        if results[n].get("rss_kib") is None and n == "pmdaemon":
            print(f"{n}: RSS/CPU n/a: no resident supervisor process ('pmdaemon start' spawns "
                  "the app and exits; nothing watches it afterwards; 'pmdaemon delete' leaves "
                  "the processes running, so this script ends them by pid)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
