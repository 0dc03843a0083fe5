#!/usr/bin/env python3
"""Count the scheduler's work behind a load run: wake-ups, IPIs and context switches.

On a small virtual machine a wake-up of a task on another vCPU can cost the waker tens
of microseconds (an inter-processor interrupt traps to the hypervisor), so two servers
with the same CPU work per request can differ by a third in throughput only because of
where the kernel placed nginx, wrk and the workers. This tool shows that: run it as root
while a load runs, and it records the whole machine for a few seconds through tracefs
(its own trace instance, so nothing else's tracing is touched) and prints, per second or
per request:

- wake-ups by waker and wakee process name, and whether the wakee was on the other CPU
  (`cross`: what costs an IPI) or the same one; `+irq` / `+softirq` when the waker
  was interrupt context running on that task's time (loopback TCP delivers in softirq);
- IPIs sent, by sender and by kernel call site;
- context switches by process name: `sleep` (it blocked) or `preempted` (still runnable).

    # in one shell: a load of known length
    wrk -t1 -c32 -d6s http://127.0.0.1:8080/page
    # in another, during it: two seconds, divided by the requests of those two seconds
    sudo python3 benches/sched_trace.py --seconds 2 --rps 30000 --name python=worker

Standard library only. Needs root and tracefs (mounted at /sys/kernel/tracing, or
under /sys/kernel/debug/tracing; the tool mounts it if neither is).
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import time

EVENTS = (
    "sched/sched_switch",
    "sched/sched_waking",
    "ipi/ipi_send_cpu",
    "ipi/ipi_send_cpumask",
)
INSTANCE = "pyfpm-sched-trace"
# "<comm>-<pid> [cpu] <flags> <seconds>: <event>: <fields>"; comm may hold '-' and spaces.
LINE = re.compile(r"^\s*(.*)-(\d+)\s+\[(\d+)\]\s+(\S+)\s+[\d.]+: (\w+): (.*)$")
WAKING = re.compile(r"comm=(.*) pid=\d+ prio=-?\d+ target_cpu=(\d+)")
SWITCH = re.compile(r"prev_comm=(.*) prev_pid=\d+ prev_prio=-?\d+ prev_state=(\S+) ==>")
CALLSITE = re.compile(r"callsite=([\w.]+)")


def tracefs():
    """The tracefs mount point, mounting it if needed."""
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(os.path.join(path, "instances")):
            return path
    path = "/sys/kernel/tracing"
    done = subprocess.run(["mount", "-t", "tracefs", "nodev", path], capture_output=True)
    if done.returncode != 0 or not os.path.exists(os.path.join(path, "instances")):
        sys.exit(f"sched_trace: no tracefs at {path} and mounting it failed "
                 f"({done.stderr.decode().strip() or 'no instances directory'}); run as root")
    return path


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def record(seconds, buffer_kb):
    """Trace the events for `seconds` in a private instance; return the trace text."""
    root = os.path.join(tracefs(), "instances", INSTANCE)
    if os.path.exists(root):
        os.rmdir(root)  # left by a killed run
    os.mkdir(root)
    try:
        write(os.path.join(root, "buffer_size_kb"), str(buffer_kb))
        enabled = []
        for event in EVENTS:
            enable = os.path.join(root, "events", event, "enable")
            if os.path.exists(enable):  # the ipi events are missing before Linux 6.6
                write(enable, "1")
                enabled.append(event)
        if "sched/sched_switch" not in enabled:
            sys.exit("sched_trace: this kernel has no sched_switch trace event")
        write(os.path.join(root, "tracing_on"), "1")
        time.sleep(seconds)
        write(os.path.join(root, "tracing_on"), "0")
        with open(os.path.join(root, "trace")) as f:
            text = f.read()
        kept = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text)
        lost = int(kept.group(2)) - int(kept.group(1)) if kept else 0
        if lost:
            print(f"sched_trace: {lost} events lost (raise --buffer-kb)", file=sys.stderr)
        return text
    finally:
        os.rmdir(root)


def count(text, rename):
    """Tally the trace: {(kind, ...): n}."""
    tally = collections.Counter()
    name = lambda comm: rename.get(comm, comm)
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, _pid, cpu, flags, event, fields = m.groups()
        if event == "sched_waking":
            w = WAKING.match(fields)
            if not w:
                continue
            context = "+irq" if "h" in flags else "+softirq" if "s" in flags else ""
            where = "same" if int(w.group(2)) == int(cpu) else "cross"
            tally[("wake-up", f"{name(comm)}{context} -> {name(w.group(1))}", where)] += 1
        elif event == "sched_switch":
            s = SWITCH.match(fields)
            if s:
                kind = "preempted" if s.group(2).startswith("R") else "sleep"
                tally[("switch", name(s.group(1)), kind)] += 1
        elif event in ("ipi_send_cpu", "ipi_send_cpumask"):
            c = CALLSITE.search(fields)
            site = c.group(1).split("+")[0] if c else "?"
            tally[("IPI", name(comm), site)] += 1
    return tally


def report(tally, divisor, unit, floor):
    order = {"wake-up": 0, "IPI": 1, "switch": 2}
    totals = collections.Counter()
    for key, n in tally.items():
        totals[key[0]] += n
    rows = sorted(tally.items(), key=lambda kv: (order[kv[0][0]], -kv[1]))
    print(f"{'what':8} {'who':48} {'':20} {unit:>12}")
    for key, n in rows:
        if n / divisor < floor:
            continue
        print(f"{key[0]:8} {key[1]:48} {key[2]:20} {n / divisor:12.3f}")
    for kind, plural in (("wake-up", "wake-ups"), ("IPI", "IPIs"), ("switch", "switches")):
        print(f"{plural:8} {'(all)':48} {'':20} {totals[kind] / divisor:12.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="how long to record")
    ap.add_argument("--rps", type=float,
                    help="requests per second of the load, to print figures per request "
                         "(default: per second)")
    ap.add_argument("--name", action="append", default=[], metavar="COMM=LABEL",
                    help="report process name COMM as LABEL (repeatable), e.g. "
                         "python=worker uwsgi=worker")
    ap.add_argument("--floor", type=float, default=0.01,
                    help="hide rows below this many per request (default 0.01); per "
                         "second, below 1000 times it")
    ap.add_argument("--buffer-kb", type=int, default=32768,
                    help="trace buffer per CPU in KiB (default 32768)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("sched_trace: needs root (tracefs)")
    rename = dict(item.split("=", 1) for item in args.name)
    tally = count(record(args.seconds, args.buffer_kb), rename)
    if args.rps:
        report(tally, args.rps * args.seconds, "per request", args.floor)
    else:
        report(tally, args.seconds, "per second", args.floor * 1000)


if __name__ == "__main__":
    main()
