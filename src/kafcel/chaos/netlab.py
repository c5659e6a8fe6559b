"""Real network partitions for the chaos suite: network namespaces, veth pairs and nft.

The suite's services listen on one address unique to the run, added as a /32 to the
host's ``lo``: processes on the host reach it through ``lo``, processes in a namespace
through their veth pair, and Kafka advertises that one address to both (127.0.0.1 is
each namespace's own loopback, so it cannot serve). :meth:`Netns.cut` drops, inside the
namespace, every packet to and from chosen ports of that address: nothing answers, no
RST is sent, so open connections hang and new ones time out, as across a real partition.

Needs root (``ip netns``, ``nft``). Everything created is named after the run and
removed by :meth:`NetLab.close`, also after a failure half way.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from ..errors import ConfigError, NetLabError

__all__ = ["NetLab", "NetLabError", "Netns"]

_PREFIX = "10.231"
_TABLE = "kafcel"
# A namespace gets a /30 of the run's /24; .0/30 holds the service address itself.
_MAX_NAMESPACES = 63


def _run(argv: Sequence[str], *, timeout_s: float, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetLabError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise NetLabError(f"`{' '.join(argv)}` failed: {why}")
    return done.stdout


class Netns:
    """One network namespace of a :class:`NetLab`, joined to the host by a veth pair."""

    def __init__(self, *, name: str, label: str, service_address: str, timeout_s: float) -> None:
        self.name = name
        self.label = label
        self.service_address = service_address
        self._timeout_s = timeout_s
        self.cut_ports: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"Netns({self.name!r}, label={self.label!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs: same PID)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self, ports: Iterable[int]) -> None:
        """Drop every TCP packet between this namespace and ``ports`` of the service
        address, both ways, until :meth:`heal`."""
        wanted = tuple(sorted(set(ports)))
        if not wanted or any(not 0 < p < 65536 for p in wanted):
            raise ConfigError(f"cut needs TCP ports from 1 to 65535, got {wanted!r}")
        self.heal()
        listed = ", ".join(str(p) for p in wanted)
        addr = self.service_address
        # Filtered in the namespace's own hooks: the host and every other namespace
        # still reach the services.
        rules = (
            f"table inet {_TABLE} {{\n"
            "  chain output { type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {addr} tcp dport {{ {listed} }} drop\n  }}\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {addr} tcp sport {{ {listed} }} drop\n  }}\n"
            "}\n"
        )
        _run(self.argv(["nft", "-f", "-"]), stdin=rules, timeout_s=self._timeout_s)
        self.cut_ports = wanted

    def heal(self) -> None:
        """Remove the cut, if any: the held connections' retransmissions get through."""
        listed = _run(self.argv(["nft", "list", "tables"]), timeout_s=self._timeout_s)
        if f"table inet {_TABLE}" in listed:
            _run(self.argv(["nft", "delete", "table", "inet", _TABLE]), timeout_s=self._timeout_s)
        self.cut_ports = ()


class NetLab:
    """The run's service address and its namespaces. Use as a context manager, or call
    :meth:`close` in ``finally`` (after stopping the processes inside)."""

    def __init__(self, *, timeout_s: float = 10.0, rng: random.Random | None = None) -> None:
        number = isinstance(timeout_s, int | float) and not isinstance(timeout_s, bool)
        # The chained comparison is False for NaN, so NaN is rejected too.
        if not number or not 0 < timeout_s < 600:
            raise ConfigError(
                f"timeout_s must be a number of seconds in (0, 600), got {timeout_s!r}"
            )
        self._timeout_s = float(timeout_s)
        self._rng = rng or random.Random()
        self._tag = f"{self._rng.getrandbits(24):06x}"
        self._namespaces: list[tuple[Netns, str]] = []  # with the host end of its veth
        self._count = 0
        self.address = ""
        self._check()
        self._add_address()

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check() -> None:
        if os.geteuid() != 0:
            raise NetLabError(
                f"network partitions need root (ip netns, veth, nft); running as uid {os.geteuid()}"
            )
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise NetLabError(
                    f"network partitions need `{tool}`: apt-get install iproute2 nftables"
                )

    def _add_address(self) -> None:
        taken = _run(["ip", "-o", "-4", "addr", "show"], timeout_s=self._timeout_s)
        for _ in range(20):
            address = f"{_PREFIX}.{self._rng.randint(1, 254)}.1"
            if f" {address.rsplit('.', 1)[0]}." in taken:
                continue  # another run (or something else) uses that /24
            _run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], timeout_s=self._timeout_s)
            self.address = address
            return
        raise NetLabError(f"no free /24 in {_PREFIX}.0.0/16 for the service address")

    def _host(self, offset: int) -> str:
        return str(ipaddress.IPv4Address(self.address) - 1 + offset)

    def namespace(self, label: str) -> Netns:
        """A new namespace whose default route leads to the host (and the services)."""
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"a namespace needs a label (what runs in it), got {label!r}")
        if not self.address:
            raise NetLabError("this NetLab is closed")
        if self._count >= _MAX_NAMESPACES:
            raise NetLabError(f"at most {_MAX_NAMESPACES} namespaces per NetLab")
        self._count += 1
        i = self._count
        name = f"kafcel-{self._tag}-{i}"
        host_end, ns_end = f"kc{self._tag}{i}h", f"kc{self._tag}{i}n"
        ns = Netns(name=name, label=label, service_address=self.address, timeout_s=self._timeout_s)
        t = self._timeout_s
        # Registered first: a command that times out may still have made its part, and
        # close() removes whatever got created ("No such" is not an error there).
        self._namespaces.append((ns, host_end))
        _run(["ip", "netns", "add", name], timeout_s=t)
        gateway, inside = self._host(4 * i + 1), self._host(4 * i + 2)
        steps = [
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", name],
            ["ip", "addr", "add", f"{gateway}/30", "dev", host_end],
            ["ip", "link", "set", host_end, "up"],
            ["ip", "-n", name, "addr", "add", f"{inside}/30", "dev", ns_end],
            ["ip", "-n", name, "link", "set", ns_end, "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "-n", name, "route", "add", "default", "via", gateway],
        ]
        for argv in steps:
            _run(argv, timeout_s=t)
        return ns

    def release(self) -> None:
        """Delete every namespace and veth made so far (their processes must be stopped)."""
        errors: list[str] = []
        for ns, host_end in self._namespaces:
            # Deleting the namespace does not always take the host end along at once.
            for argv in (["ip", "netns", "del", ns.name], ["ip", "link", "del", host_end]):
                try:
                    _run(argv, timeout_s=self._timeout_s)
                except NetLabError as exc:
                    if "No such" not in str(exc) and "Cannot find" not in str(exc):
                        errors.append(str(exc))
        self._namespaces.clear()
        if errors:
            raise NetLabError("; ".join(errors))

    def close(self) -> None:
        """Remove the namespaces, veths and the service address; safe to call twice."""
        try:
            self.release()
        finally:
            if self.address:
                address, self.address = self.address, ""
                _run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], timeout_s=self._timeout_s)
