"""The rig's two computers on one machine: two network namespaces joined by a veth pair.

The robot PC is the namespace of the process that calls :func:`enter_namespaces` (it re-executes
itself under ``unshare -Urnm --pid --fork``: an unprivileged user namespace owning a fresh network,
mount and PID namespace, so every process it starts dies with it and no traffic ever leaves it).
:class:`RigLink` then creates the policy host's namespace (its own network and mount namespace
with a private ``/dev/shm``, as on a second computer), the veth pair between them and the
link conditions:

- ``cut()`` / ``restore()``: ``ip link set down`` / ``up`` of the robot's end;
- ``drop(percent)``: an ``nft`` rule on each side that drops that share of the packets leaving it
  (``numgen random``; Debian package ``nftables``);
- ``cap(rate)``: an ``htb`` qdisc with one class of ``rate`` on each end (``tc``);
- ``clear()``: no rule, no qdisc, link up.

DDS crosses the link as on a rig: :func:`dds_env` puts discovery on the subnet (multicast on the
veth) and loads ``config/fastdds_rig.xml`` (UDPv4 only, non-blocking sends, 0.1 s
heartbeats). Both namespaces use one clock, so stamps compare directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

#: Set in the environment of the process re-executed inside the namespaces.
INSIDE_ENV = "FRS_NETNS_INSIDE"
ROBOT_IF, POLICY_IF = "frs-robot", "frs-policy"
# Link-local /30: the two ends of the veth, nothing else can be reached from inside.
ROBOT_ADDR, POLICY_ADDR, PREFIX = "169.254.77.2", "169.254.77.1", 30
MULTICAST = "224.0.0.0/4"
TOOLS = ("unshare", "nsenter", "ip", "tc", "nft")


def unshare_problem() -> str:
    """'' if an unprivileged ``unshare -Urnm`` works here, else why not (the tests skip on it)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-Urnm", "--pid", "--fork", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        return f"unshare -Urnm is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return ""


def missing_tools() -> list[str]:
    """The link tools not installed (``nft`` comes from Debian's ``nftables`` package)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def enter_namespaces(argv: Sequence[str]) -> None:
    """Re-execute ``python argv`` inside fresh user/net/mount/PID namespaces and exit with its
    code, unless this process already runs there (then return).

    The re-executed process is PID 1 of its PID namespace: when it exits, every node it started
    is killed by the kernel, and the namespaces (and their link) vanish.
    """
    if os.environ.get(INSIDE_ENV) == "1":
        return
    problem = unshare_problem()
    if problem:
        raise SystemExit(f"[netns] {problem}")
    missing = missing_tools()
    if missing:
        raise SystemExit(
            f"[netns] missing {', '.join(missing)}: install iproute2 and nftables "
            "(apt-get install iproute2 nftables; scripts/setup.sh does it as root)"
        )
    env = {**os.environ, INSIDE_ENV: "1"}
    command = ["unshare", "-Urnm", "--pid", "--fork", "--kill-child", "--mount-proc"]
    code = subprocess.call([*command, sys.executable, *argv], env=env)
    raise SystemExit(code)


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure raises with its stderr."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def rig_profile() -> Path:
    """The Fast DDS profile for a policy host and a robot PC on a network link
    (``config/fastdds_rig.xml``: UDPv4 only, non-blocking sends, 0.1 s heartbeats)."""
    from frs_steering.package_data import find_package_file

    return find_package_file(
        "frs_bringup", Path(__file__).resolve().parents[1], "config", "fastdds_rig.xml"
    )


def dds_env(domain_id: int) -> dict[str, str]:
    """Environment for ROS processes on either side: DDS over UDP on the link (subnet discovery,
    multicast on the veth), with the rig's Fast DDS profile."""
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(rig_profile()),
    }


class RigLink:
    """The policy host's namespace and the veth link to it; call from inside the namespaces."""

    def __init__(self) -> None:
        if os.environ.get(INSIDE_ENV) != "1":
            raise RuntimeError("RigLink needs the namespaces of enter_namespaces()")
        # This process's /dev/shm becomes private to the robot PC; the policy host gets its own.
        run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm"])
        self._holder = subprocess.Popen(
            [
                "unshare",
                "-nm",
                "sh",
                "-c",
                "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && echo ready && exec sleep 1000000",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._holder.stdout is None or self._holder.stdout.readline().strip() != "ready":
            raise RuntimeError("could not create the policy host's namespaces")
        pid = self._holder.pid
        self.policy_prefix = [f"--net=/proc/{pid}/ns/net", f"--mount=/proc/{pid}/ns/mnt"]
        run(["ip", "link", "add", ROBOT_IF, "type", "veth", "peer", "name", POLICY_IF])
        run(["ip", "link", "set", POLICY_IF, "netns", f"/proc/{pid}/ns/net"])
        for side, name, addr in ((False, ROBOT_IF, ROBOT_ADDR), (True, POLICY_IF, POLICY_ADDR)):
            self.ip(side, "addr", "add", f"{addr}/{PREFIX}", "dev", name)
            self.ip(side, "link", "set", "lo", "up")
        self.restore()
        self.conditions: list[str] = []

    # ------------------------------------------------------------------ processes
    def on_policy_host(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the policy host's namespaces (pass to Popen)."""
        return ["nsenter", *self.policy_prefix, "--", *argv]

    def ip(self, policy: bool, *args: str) -> None:
        """``ip args`` on the policy host (``policy``) or the robot PC."""
        argv = ["ip", *args]
        run(self.on_policy_host(argv) if policy else argv)

    def _both(self, *argv: str, check: bool = True) -> None:
        run(argv, check=check)
        run(self.on_policy_host(argv), check=check)

    # ------------------------------------------------------------------ conditions
    def cut(self) -> float:
        """Take the link down (both directions); returns ``time.time()`` just after."""
        self.ip(False, "link", "set", ROBOT_IF, "down")
        return time.time()

    def restore(self) -> float:
        """Bring the link up with its routes (an admin-down link loses them)."""
        for policy, name in ((False, ROBOT_IF), (True, POLICY_IF)):
            self.ip(policy, "link", "set", name, "up")
            self.ip(policy, "route", "replace", MULTICAST, "dev", name)
        return time.time()

    def drop(self, percent: float) -> None:
        """Drop ``percent`` % of the packets each side sends over the link (random, nft)."""
        if not 0.0 < percent < 100.0:
            raise ValueError(f"drop percent must be in (0, 100), got {percent}")
        per_mille = round(percent * 10)
        for policy, name in ((False, ROBOT_IF), (True, POLICY_IF)):
            rules = (
                "table inet frs_link {\n"
                "  chain out {\n"
                "    type filter hook output priority 0; policy accept;\n"
                f'    oifname "{name}" numgen random mod 1000 < {per_mille} counter drop\n'
                "  }\n"
                "}\n"
            )
            argv = ["nft", "-f", "-"]
            done = subprocess.run(
                self.on_policy_host(argv) if policy else argv,
                input=rules,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode != 0:
                raise RuntimeError(f"nft failed: {done.stderr.strip()}")
        self.conditions.append(f"drop {percent:g}%")

    def dropped_packets(self) -> int:
        """Packets the drop rules discarded so far (both sides)."""
        total = 0
        for policy in (False, True):
            argv = ["nft", "list", "table", "inet", "frs_link"]
            out = run(self.on_policy_host(argv) if policy else argv, check=False).stdout
            for word, value in zip(out.split(), out.split()[1:], strict=False):
                if word == "packets":
                    total += int(value)
        return total

    def link_bytes(self) -> int:
        """Bytes the robot's end of the link has sent plus received so far."""
        out = run(["ip", "-s", "-j", "link", "show", ROBOT_IF]).stdout
        stats = json.loads(out)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])

    def cap(self, rate: str) -> None:
        """Cap each direction of the link at ``rate`` (tc syntax, e.g. ``1mbit``) with htb."""
        for policy, name in ((False, ROBOT_IF), (True, POLICY_IF)):
            tc = ["tc", "qdisc", "add", "dev", name, "root", "handle", "1:", "htb", "default", "1"]
            cls = ["tc", "class", "add", "dev", name, "parent", "1:", "classid", "1:1", "htb"]
            cls += ["rate", rate, "ceil", rate]
            for argv in (tc, cls):
                run(self.on_policy_host(argv) if policy else argv)
        self.conditions.append(f"cap {rate}")

    def clear(self) -> None:
        """Back to a clean link: no drop rule, no qdisc, link up."""
        for policy, name in ((False, ROBOT_IF), (True, POLICY_IF)):
            for argv in (
                ["nft", "delete", "table", "inet", "frs_link"],
                ["tc", "qdisc", "del", "dev", name, "root"],
            ):
                run(self.on_policy_host(argv) if policy else argv, check=False)
        self.restore()
        self.conditions.clear()

    def close(self) -> None:
        """Remove the policy host (its namespace goes with the holder process)."""
        if self._holder.poll() is None:
            self._holder.kill()
            self._holder.wait(timeout=5)


def interfaces_report(link: RigLink) -> str:
    """``ip -br addr`` of both sides (for logs)."""
    robot = run(["ip", "-br", "addr"]).stdout
    policy = run(link.on_policy_host(["ip", "-br", "addr"])).stdout
    return f"robot PC:\n{robot}policy host:\n{policy}"
