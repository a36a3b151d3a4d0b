"""CPU per node of the simulated stack while it runs episodes.

Starts ``python -m frs_bringup.sim_demo`` (each node in its own process, as the launch files
start them), waits until every node of the stack is running and episodes have begun, then reads
each node process's CPU ticks (``/proc/<pid>/stat``: user + system, the scheduler's own
accounting) at the start and the end of a window. Prints each node's share of one core and the
stack's share of the machine, writes ``results.json`` (the demo's output goes to ``demo.log``
beside it); the demo is stopped after the window. The machine-wide ``/proc/stat`` is not used:
it samples at the timer tick, and nodes that wake at 50-100 Hz for well under a tick read low
there. Not a test; Linux only.

    .venv/bin/python frs_bringup/bench/cpu_per_node.py [--stack sim] [--window 30]
        [--settle 20] [--out DIR] [-- extra sim_demo arguments]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from frs_bringup.stacks import get_stack

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None once
    the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_ticks(pid: int) -> int | None:
    """User + system CPU ticks of ``pid`` so far (None once it is gone)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])  # utime, stime


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(root: int) -> list[int]:
    """Every process under ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def node_processes(root: int, modules: dict[str, str]) -> dict[str, int]:
    """Node name -> pid of the process under ``root`` running that node's module."""
    found = {}
    for pid in descendants(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for name, module in modules.items():
            if module.encode() in argv:
                found[name] = pid
    return found


def stop_group(demo: subprocess.Popen, node_pids: list[int], timeout: float = 20.0) -> None:
    """Stop the demo and every node it started, and return only once all are gone, so no node
    of this stack is still publishing when whatever runs next starts."""
    os.killpg(demo.pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if demo.poll() is not None and not any(map(running, node_pids)):
            return
        time.sleep(0.1)
    os.killpg(demo.pid, signal.SIGKILL)
    demo.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stack", default="sim")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after all nodes run")
    parser.add_argument("--out", type=Path, default=Path("build/cpu_per_node"))
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="after --: sim_demo's")
    args = parser.parse_args()
    stack = get_stack(args.stack)
    modules = {node.name: node.module for node in stack.nodes}
    extra = [a for a in args.demo_args if a != "--"]
    command = [sys.executable, "-m", "frs_bringup.sim_demo", "--stack", args.stack]
    command += ["--episodes", "1000", "--out", str(args.out / "demo"), *extra]
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "demo.log").open("w")
    demo = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120.0
        pids = {}
        while len(pids) < len(modules):
            if demo.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the stack did not come up (running: {sorted(pids)}); see {log.name}"
                )
            time.sleep(0.5)
            pids = node_processes(demo.pid, modules)
        time.sleep(args.settle)
        pids["sim_demo (episodes, lifecycle)"] = demo.pid
        start = {name: process_ticks(pid) for name, pid in pids.items()}
        began = time.monotonic()
        time.sleep(args.window)
        end = {name: process_ticks(pid) for name, pid in pids.items()}
        seconds = time.monotonic() - began
    finally:
        stop_group(demo, node_pids=list(node_processes(demo.pid, modules).values()))
        log.close()
    lost = [name for name in pids if start[name] is None or end[name] is None]
    if lost:
        raise SystemExit(f"processes ended during the window: {lost}")
    per_core = {
        name: 100.0 * (end[name] - start[name]) / (TICKS_PER_SECOND * seconds) for name in pids
    }
    cores = os.cpu_count() or 1
    stack_share = sum(per_core.values()) / cores
    print(f"{args.stack} stack, {seconds:.1f} s window, {cores} cores; % of one core:")
    for name, share in per_core.items():
        print(f"  {name:32s} {share:6.1f}")
    print(f"the stack: {stack_share:.1f} % of the machine")
    results = {
        "stack": args.stack,
        "window_s": seconds,
        "cores": cores,
        "demo_command": command,
        "percent_of_one_core": per_core,
        "stack_percent_of_machine": stack_share,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
