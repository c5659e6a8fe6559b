"""The local stack: a Kafka broker (Apache Kafka, or Tansu), Redis and, when asked for,
RabbitMQ (Celery's broker instead of Redis), for dev, demo, tests, chaos and the bench.

Apache Kafka is the default broker: one KRaft combined node, or three
(``brokers=3``: replication 3, ``min.insync.replicas=2``). Tansu stays available as the
second broker (``broker="tansu"``), the one kafcel's Tansu handling is checked against.
"""

from __future__ import annotations

import fcntl
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from ..errors import ConfigError, DevStackError
from ..kafka.admin import ensure_topics
from .kafka import KafkaCluster, KafkaRuntime, KafkaSecurity
from .rabbitmq import rabbitmq_services, rabbitmq_url
from .redis import redis_access, redis_service
from .service import PROBE_TIMEOUT_S, Service, ServiceStatus, Supervisor, port_open
from .tansu import tansu_service

# librdkafka reports refused connections on its own threads; route them to logging so
# a probe of a port that is still coming up does not spray stderr.
_log = logging.getLogger(__name__)

__all__ = ["BROKERS", "DevStack"]

BROKERS = ("kafka", "tansu")
SERVICES = ("kafka", "redis", "rabbitmq")
# AMQP (RabbitMQ's own), Erlang distribution (AMQP + 20000, as RabbitMQ's), and an epmd
# port of the stack's own: 4369 is every Erlang node's on the machine.
RABBITMQ_PORTS = (5672, 25672, 24369)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but port=True is a mistake, not port 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_port(label: str, port: object) -> None:
    if not _is_int(port) or not 1 <= port <= 65535:  # type: ignore[operator]
        raise ConfigError(f"{label} must be an integer from 1 to 65535, got {port!r}")


class DevStack:
    """A local broker and Redis server, started on demand and stopped by pid file."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        kafka_port: int = 9092,
        redis_port: int = 6379,
        state_dir: Path | str = ".kafcel/devstack",
        start_timeout_s: float = 60.0,
        services: tuple[str, ...] = ("kafka", "redis"),
        broker: str = "kafka",
        brokers: int = 1,
        kafka_ports: Sequence[int] = (),
        rabbitmq_ports: Sequence[int] = RABBITMQ_PORTS,
        cache_dir: Path | str = ".kafcel/kafka",
        redis_tls: bool = False,
        kafka_secure_port: int | None = None,
    ) -> None:
        if not isinstance(host, str) or not host.strip() or ":" in host:
            raise ConfigError(f"host must be a hostname or IPv4 address, got {host!r}")
        if broker not in BROKERS:
            raise ConfigError(f"broker must be one of {', '.join(BROKERS)}, got {broker!r}")
        if not _is_int(brokers) or brokers not in (1, 3):
            raise ConfigError(f"brokers must be 1 or 3, got {brokers!r}")
        if broker == "tansu" and brokers != 1:
            raise ConfigError("Tansu runs as one broker: use --brokers 3 with Apache Kafka")
        _check_port("kafka_port", kafka_port)
        _check_port("redis_port", redis_port)
        # Apache Kafka: the client and controller port of each node, in that order.
        ports = list(kafka_ports) or [kafka_port + i for i in range(2 * brokers)]
        if broker == "kafka" and len(ports) != 2 * brokers:
            raise ConfigError(
                f"kafka_ports must give {2 * brokers} ports (client and controller per node)"
            )
        for port in ports:
            _check_port("kafka_ports", port)
        rabbitmq = list(rabbitmq_ports)
        if len(rabbitmq) != 3:
            raise ConfigError("rabbitmq_ports must give 3 ports (AMQP, distribution, epmd)")
        for port in rabbitmq:
            _check_port("rabbitmq_ports", port)
        used = [*(ports if broker == "kafka" else [kafka_port]), redis_port]
        used += rabbitmq if "rabbitmq" in services else []
        if len(set(used)) != len(used):
            raise ConfigError(f"the stack's ports must differ, got {used}")
        number = _is_int(start_timeout_s) or isinstance(start_timeout_s, float)
        # The chained comparison is False for NaN, so NaN is rejected too.
        if not number or not 0 < start_timeout_s < math.inf:
            raise ConfigError(f"start_timeout_s must be a positive number, got {start_timeout_s!r}")
        unknown = sorted(set(services) - set(SERVICES))
        if unknown or not services:
            raise ConfigError(f"services must name some of {', '.join(SERVICES)}, got {services!r}")
        self.host = host
        self.broker = broker
        self.redis_port = redis_port
        self.rabbitmq_port = rabbitmq[0]
        # Absolute, so a later chdir does not lose the pid files and redis --dir stays valid.
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.start_timeout_s = float(start_timeout_s)
        self.runtime = KafkaRuntime(cache_dir=Path(cache_dir))
        self.kafka = KafkaCluster(
            host=host,
            ports=ports,
            state_dir=self.state_dir,
            runtime=self.runtime,
            security=None if kafka_secure_port is None else self._kafka_security(kafka_secure_port),
        )
        self.kafka_port = ports[0] if broker == "kafka" else kafka_port
        self._supervisor = Supervisor(state_dir=self.state_dir, start_timeout_s=start_timeout_s)
        tansu = tansu_service(host=host, port=kafka_port, answers=self._broker_answers)
        broker_services = self.kafka.services() if broker == "kafka" else [tansu]
        # redis_tls: TLS only, an ACL user with a password (dev/redis.py).
        self._redis = redis_access(
            host=host, port=redis_port, state_dir=self.state_dir, secure=redis_tls
        )
        redis_ = redis_service(access=self._redis, state_dir=self.state_dir)
        chosen = [*(broker_services if "kafka" in services else [])]
        chosen += [redis_] if "redis" in services else []
        amqp_port, dist_port, epmd_port = rabbitmq
        rabbit = rabbitmq_services(
            host=host,
            port=amqp_port,
            dist_port=dist_port,
            epmd_port=epmd_port,
            state_dir=self.state_dir,
        )
        chosen += rabbit if "rabbitmq" in services else []
        self._services = {s.name: s for s in chosen}
        self._broker_service = broker_services[0]
        # What `down` may find from an `up` with the other broker: stopping needs only the
        # pid file and the markers, so ports do not matter here.
        others = [tansu, *rabbit, *KafkaCluster(
            host=host, ports=[1, 2] * 3, state_dir=self.state_dir, runtime=self.runtime
        ).services()]  # fmt: skip
        self._known = {s.name: s for s in [*others, *self._services.values()]}

    def _kafka_security(self, port: int) -> KafkaSecurity:
        """The SASL_SSL listener's certificates and SCRAM users, made once per state
        directory (a restarted node, and its clients, keep them)."""
        import json
        import secrets

        from .certs import make_certs, pkcs12

        _check_port("kafka_secure_port", port)
        directory = self.state_dir / "kafka-tls"
        certs = make_certs(directory, hosts=(self.host, "localhost"))
        stored = directory / "secrets.json"
        if not stored.exists():
            names = ("bridge", "producer", "worker", "operator")
            made = {
                "keystore": secrets.token_urlsafe(16),
                "users": {name: secrets.token_urlsafe(18) for name in names},
            }
            stored.write_text(json.dumps(made))
            stored.chmod(0o600)
        found = json.loads(stored.read_text())
        keystore = pkcs12(certs, password=found["keystore"])
        return KafkaSecurity(
            port=port,
            ca=certs.ca,
            keystore=keystore,
            keystore_password=found["keystore"],
            users=dict(found["users"]),
        )

    @property
    def kafka_secure_bootstrap(self) -> str:
        """The SASL_SSL listener's address (``kafka_secure_port``)."""
        if self.kafka.security is None:
            raise ConfigError("this stack's Kafka has no SASL_SSL listener (kafka_secure_port)")
        return f"{self.host}:{self.kafka.security.port}"

    @property
    def bootstrap_servers(self) -> str:
        if self.broker == "kafka":
            return self.kafka.bootstrap_servers
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return self._redis.url

    @classmethod
    def remembered(
        cls,
        state_dir: Path,
        *,
        kafka_port: int,
        redis_port: int,
        broker: str | None,
        brokers: int | None,
        rabbitmq: bool | None,
    ) -> DevStack:
        """The stack the last :meth:`remember` in ``state_dir`` described, where the
        arguments (None: not given) do not say otherwise."""
        found = state_dir / "broker"
        remembered = found.read_text().split() if found.exists() else []
        if broker is None:
            broker = remembered[0] if remembered else "kafka"
        if brokers is None:
            same = len(remembered) > 1 and broker == remembered[0]
            brokers = int(remembered[1]) if same else 1
        if rabbitmq is None:
            rabbitmq = "rabbitmq" in remembered[2:]
        return cls(
            kafka_port=kafka_port,
            redis_port=redis_port,
            state_dir=state_dir,
            broker=broker,
            brokers=brokers,
            services=("kafka", "redis", "rabbitmq") if rabbitmq else ("kafka", "redis"),
        )

    def remember(self) -> None:
        """Note what this stack runs, for a later :meth:`remembered` (``dev down``)."""
        extra = " rabbitmq" if "rabbitmq" in self._services else ""
        (self.state_dir / "broker").write_text(f"{self.broker} {self.kafka.size}{extra}\n")

    @property
    def rabbitmq_url(self) -> str:
        """Celery's broker URL for this stack's RabbitMQ (user guest)."""
        return rabbitmq_url(self.host, self.rabbitmq_port)

    @property
    def service_names(self) -> list[str]:
        return list(self._services)

    def broker_label(self) -> str:
        """What the broker is, e.g. ``apache-kafka 4.4.0`` or ``tansu 0.6.0``."""
        return self._broker_service.version()

    def up(self) -> list[str]:
        """Start every service not already answering; return the names started now."""
        started: list[str] = []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # One `up` at a time per state directory: two would both spawn a service (its
        # pid file naming only one) and race the jar fetch and the storage format.
        lock = (self.state_dir / "up.lock").open("w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        # On any failure stop what this call started, so a failed up leaves no half stack.
        try:
            waiting: list[tuple[Service, int]] = []
            for service in self._services.values():
                spawned, pid = self._supervisor.launch(service)
                started += [service.name] if spawned else []
                waiting += [(service, pid)] if pid is not None else []
            for service, pid in waiting:
                self._supervisor.wait_ready(service, pid)
            if self.broker == "kafka" and "kafka" in self._services:
                self._wait_cluster()
        except BaseException:
            self.stop_started(started)
            raise
        finally:
            lock.close()  # releases the lock
        return started

    def down(self) -> list[str]:
        """Stop the services this stack started (per pid file); return the names stopped."""
        # In reverse start order: RabbitMQ before its epmd (a node losing its epmd while
        # stopping would start a daemon one that outlives it).
        known = reversed(list(self._known.items()))
        return [name for name, svc in known if self._supervisor.stop(svc)]

    def stop_started(self, names: list[str]) -> None:
        """Stop the named services if they are ours; others on those ports are left alone."""
        for name in names:
            self._supervisor.stop(self._service(name))

    def status(self) -> list[ServiceStatus]:
        """Whether each service answers now, whether this stack started it, its version."""
        return [self._supervisor.status(service) for service in self._services.values()]

    def ensure_topics(self, topics: dict[str, int]) -> None:
        """Create missing topics (the broker's replication) and wait until metadata lists them."""
        ensure_topics(self.bootstrap_servers, topics, timeout_s=self.start_timeout_s)

    # Node faults, for the chaos suite and tests: only processes this stack started.

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` to our process of service ``name``; return its pid."""
        return self._supervisor.signal(self._service(name), sig)

    def start(self, name: str) -> None:
        """Start service ``name`` again (a killed Kafka node restarts from its log directory)."""
        self._supervisor.start(self._service(name))

    def active_controller(self) -> str:
        """The service name of the Kafka node leading the KRaft quorum."""
        return self.kafka.service_name(self.kafka.active_controller())

    def node_name(self, node_id: int) -> str:
        """The service name of Kafka node ``node_id`` (as metadata names leaders)."""
        return self.kafka.service_name(node_id)

    def _service(self, name: str) -> Service:
        service = self._services.get(name)
        if service is None:
            known = ", ".join(self._services)
            raise ConfigError(f"unknown service {name!r}: this stack runs {known}")
        return service

    def _broker_answers(self) -> bool:
        # The TCP check keeps librdkafka from retrying against a closed port for a second.
        if not port_open(self.host, self.kafka_port):
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers}, logger=_log)
        try:
            admin.list_topics(timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            return False
        return True

    def _wait_cluster(self) -> None:
        # Every node answers on its own; the cluster is ready when metadata lists them all.
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers}, logger=_log)
        deadline = time.monotonic() + self.start_timeout_s
        want = {n.node_id for n in self.kafka.nodes}
        while True:
            try:
                if want <= set(admin.list_topics(timeout=PROBE_TIMEOUT_S).brokers):
                    return
            except KafkaException:
                pass
            if time.monotonic() >= deadline:
                raise DevStackError(
                    f"Apache Kafka's {len(want)} nodes did not all join within "
                    f"{self.start_timeout_s:g}s: see {self.state_dir}/kafka*.log"
                )
            time.sleep(0.2)
