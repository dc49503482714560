"""Hosts of the test's own, on this machine: network namespaces joined by a bridge, each with an
address of a private network (ip netns, veth, a Linux bridge; needs root). Their traffic stays on
the bridge and in their loopbacks.

    with Network(["kafka1", "ws1", "client"]) as net:
        net.run("ws1", "scripts/start_host.sh", "ws1", env=env)
        net.cut("ws1")          # off the bridge, as a failed switch port
        net.restore("ws1")

Everything is removed on the way out, also when the caller fails: the processes left in the
namespaces (found by their network namespace, so never another's) are killed, then the links and
namespaces deleted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

SUBNET = "10.77.{}."
IP = "ip"


def _ip(*args: str, namespace: str | None = None) -> None:
    command = [IP, "netns", "exec", namespace, IP, *args] if namespace else [IP, *args]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        subprocess.run([IP, "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        return f"`ip netns` does not work here: {err}"
    return None


class Network:
    """A bridge, and one namespace per host, each at SUBNET.(11 + its index)."""

    def __init__(self, hosts: list[str]):
        self.tag = f"{random.randrange(16**4):04x}"
        self.subnet = SUBNET.format(random.randrange(1, 250))
        self.bridge = f"esbr{self.tag}"
        self.hosts = list(hosts)
        self.addresses = {h: f"{self.subnet}{11 + i}" for i, h in enumerate(hosts)}
        self._made: list[str] = []

    def namespace(self, host: str) -> str:
        return f"es{self.tag}-{host}"

    def _veth(self, host: str) -> str:
        return f"ve{self.tag}{self.hosts.index(host)}"  # at most 15 characters

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                namespace = self.namespace(host)
                _ip("netns", "add", namespace)
                self._made.append(namespace)
                _ip("link", "add", self._veth(host), "type", "veth", "peer", "name", "eth0",
                    "netns", namespace)
                _ip("link", "set", self._veth(host), "master", self.bridge, "up")
                _ip("addr", "add", f"{self.addresses[host]}/24", "dev", "eth0",
                    namespace=namespace)
                _ip("link", "set", "eth0", "up", namespace=namespace)
                _ip("link", "set", "lo", "up", namespace=namespace)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, host: str, *command: str, env: dict, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
        """``command`` on ``host``, to completion, its output captured."""
        return subprocess.run([IP, "netns", "exec", self.namespace(host), *command], env=env,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, host: str, *command: str, env: dict, **options) -> subprocess.Popen:
        return subprocess.Popen([IP, "netns", "exec", self.namespace(host), *command], env=env,
                                **options)

    def cut(self, host: str) -> None:
        """Take ``host`` off the bridge: its peers' packets to it are lost, and its own."""
        _ip("link", "set", self._veth(host), "down")

    def restore(self, host: str) -> None:
        _ip("link", "set", self._veth(host), "up")

    def processes(self, host: str) -> list[int]:
        """The pids of the processes in ``host``'s namespace."""
        target = _netns_inode(Path("/run/netns") / self.namespace(host))
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.stat(entry / "ns" / "net").st_ino == target:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        """Kill what still runs in the namespaces, then delete them and the bridge."""
        for namespace in [n for n in self._made if n != "bridge"]:
            host = namespace.split("-", 1)[1]
            for _attempt in range(50):
                left = self.processes(host)
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            subprocess.run([IP, "netns", "del", namespace], capture_output=True, timeout=30)
        if "bridge" in self._made:
            subprocess.run([IP, "link", "del", self.bridge], capture_output=True, timeout=30)
        self._made.clear()


def _netns_inode(path: Path) -> int:
    return os.stat(path).st_ino
