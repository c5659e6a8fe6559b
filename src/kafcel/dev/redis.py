"""The local Redis: Debian's ``redis-server``, in memory only; plain, or (``secure``)
TLS only with an ACL user and password, as a production Redis asks for."""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import redis

from ..errors import DevStackError
from .service import PROBE_TIMEOUT_S, Service, port_open

__all__ = ["REDIS_USER", "RedisAccess", "redis_access", "redis_service"]

REDIS_USER = "kafcel"


@dataclass(frozen=True)
class RedisAccess:
    """How clients reach the dev Redis: plain, or TLS (``ca``: the CA to trust, with the
    server's ``cert`` and ``key``) as ``REDIS_USER`` with ``password``."""

    host: str
    port: int
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    password: str = ""

    @property
    def url(self) -> str:
        if self.ca is None:
            return f"redis://{self.host}:{self.port}/0"
        # The form redis-py, kombu and Celery's result backend all read.
        query = urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.ca)})
        user = f"{REDIS_USER}:{quote(self.password, safe='')}"
        return f"rediss://{user}@{self.host}:{self.port}/0?{query}"


def redis_access(*, host: str, port: int, state_dir: Path, secure: bool) -> RedisAccess:
    """``secure``: certificates and a password made once in ``state_dir``."""
    if not secure:
        return RedisAccess(host=host, port=port)
    from .certs import make_certs  # cryptography: a dev extra, needed only here

    certs = make_certs(state_dir / "redis-tls", hosts=(host, "localhost"))
    secret = state_dir / "redis-tls" / "password"
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(24))
        secret.chmod(0o600)
    password = secret.read_text().strip()
    return RedisAccess(
        host=host, port=port, ca=certs.ca, cert=certs.cert, key=certs.key, password=password
    )


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise DevStackError(
            "redis-server not found: run `make setup` or `apt-get install redis-server`"
        )
    return path


def _version() -> str:
    out = subprocess.run([_redis_server(), "--version"], capture_output=True, text=True).stdout
    # "Redis server v=7.0.15 sha=..."
    word = next((w for w in out.split() if w.startswith("v=")), "v=?")
    return f"redis {word[2:]}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: whatever it resolves to, not only 127.0.0.1


def redis_service(*, access: RedisAccess, state_dir: Path) -> Service:
    host, port, url = access.host, access.port, access.url

    def command() -> list[str]:
        listen = ["--port", str(port), "--bind", host]
        if access.ca is not None:
            acl = state_dir / "redis-tls" / "users.acl"
            acl.write_text(
                f"user default off\nuser {REDIS_USER} on >{access.password} ~* &* +@all\n"
            )
            acl.chmod(0o600)
            listen = [
                *("--port", "0", "--tls-port", str(port), "--bind", host),
                *("--tls-cert-file", str(access.cert), "--tls-key-file", str(access.key)),
                *("--tls-ca-cert-file", str(access.ca), "--tls-auth-clients", "no"),
                *("--aclfile", str(acl)),
            ]
        if not _loopback(host):
            # Without a password, protected mode answers DENIED to every client that is
            # not 127.0.0.1 or ::1: bound to another address on purpose (the chaos suite's
            # network namespaces), the dev Redis must serve that address's clients.
            listen += ["--protected-mode", "no"]
        # No RDB or AOF files: the dev Redis is disposable.
        disk = ["--save", "", "--appendonly", "no", "--dir", str(state_dir)]
        return [_redis_server(), *listen, *disk, "--daemonize", "no"]

    def answers() -> bool:
        if not port_open(host, port):
            return False
        t = PROBE_TIMEOUT_S
        client = redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return Service(
        name="redis",
        host=host,
        port=port,
        markers=("redis-server",),
        command=command,
        answers=answers,
        version=_version,
    )
