"""Apache Kafka for the local stack: pinned jars from Maven Central, KRaft combined nodes.

The broker's runtime classpath is copied once by Maven into ``.kafcel/kafka/`` (the
versions are pinned in ``kafka-pom.xml`` next to this module, every jar's SHA-256 in
``kafka-jars.sha256``; a second run finds the copy and downloads nothing). Each node is
one JVM running broker and controller together (``process.roles=broker,controller``),
its log directory on disk under the stack's state directory, so a killed node restarts
from its data. One node uses a dynamic quorum
formatted ``--standalone``; three nodes a static ``controller.quorum.voters`` list.
Class names and JVM options follow Kafka's own ``bin/kafka-server-start.sh``,
``bin/kafka-run-class.sh`` and ``bin/kafka-storage.sh``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from ..errors import DevStackError
from .service import PROBE_TIMEOUT_S, Service, port_open

# librdkafka reports refused connections on its own threads; route them to logging so
# a probe of a port that is still coming up does not spray stderr.
_log = logging.getLogger(__name__)

__all__ = ["KafkaCluster", "KafkaRuntime", "KafkaSecurity"]

_MIN_JAVA = 17
_HEAP = ["-Xms256m", "-Xmx512m"]
# As bin/kafka-run-class.sh sets them for the broker.
_JVM = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# WARN keeps a busy broker's log small; the two INFO loggers say which version started.
_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = INFO
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""
_POM = "{http://maven.apache.org/POM/4.0.0}"


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def _verify(lib: Path) -> None:
    """Every jar of the copy is one the repository pins, with the pinned SHA-256."""
    pinned = dict(line.split()[::-1] for line in _resource("kafka-jars.sha256").splitlines())
    found = {jar.name: jar for jar in lib.glob("*.jar")}
    wrong = sorted(set(found) ^ set(pinned))
    wrong += [
        name
        for name, jar in sorted(found.items())
        if name in pinned and hashlib.sha256(jar.read_bytes()).hexdigest() != pinned[name]
    ]
    if wrong:
        raise DevStackError(
            f"Apache Kafka's jars differ from kafka-jars.sha256 ({', '.join(wrong[:5])}): "
            "not started; check the Maven repository this machine uses"
        )


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise DevStackError(
            f"java not found: Apache Kafka needs Java {_MIN_JAVA} or newer; run `make setup` "
            "or `apt-get install default-jre-headless`"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392" is Java 8
        major = int(found.group(2))
    if major < _MIN_JAVA:
        raise DevStackError(
            f"{java} is Java {major or '?'}: Apache Kafka needs Java {_MIN_JAVA} or newer; "
            "install default-jre-headless or set JAVA_HOME"
        )
    return java


class KafkaRuntime:
    """The pinned Apache Kafka jars, copied from Maven Central into ``cache_dir`` once."""

    def __init__(self, *, cache_dir: Path) -> None:
        self.cache_dir = cache_dir.expanduser().resolve()
        self._pom = _resource("kafka-pom.xml")

    @cached_property
    def version(self) -> str:
        """The pinned ``kafka_2.13`` version, as the POM names it."""
        root = ElementTree.fromstring(self._pom)
        for dep in root.iter(f"{_POM}dependency"):
            if dep.findtext(f"{_POM}artifactId") == "kafka_2.13":
                return dep.findtext(f"{_POM}version") or "?"
        raise DevStackError("kafka-pom.xml names no kafka_2.13 dependency")

    @property
    def lib_dir(self) -> Path:
        # The pins' hash in the name: changing a pinned version fetches a fresh copy.
        pins = self._pom + _resource("kafka-jars.sha256")
        digest = hashlib.sha256(pins.encode()).hexdigest()[:10]
        return self.cache_dir / f"{self.version}-{digest}" / "lib"

    @property
    def classpath(self) -> str:
        return f"{self.lib_dir}/*"

    def fetched(self) -> bool:
        return self.lib_dir.is_dir()

    def ensure(self) -> Path:
        """Copy the jars unless a complete copy is there; return the directory."""
        if self.fetched():
            return self.lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DevStackError(
                "mvn not found: Maven fetches Apache Kafka's jars from Maven Central; "
                "run `make setup` or `apt-get install maven`"
            )
        parent = self.lib_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        # Copied into a fresh directory, then renamed: a half copy is never taken for one.
        with tempfile.TemporaryDirectory(dir=parent) as tmp:
            pom = Path(tmp) / "kafka-pom.xml"
            pom.write_text(self._pom)
            out = Path(tmp) / "lib"
            argv = [
                mvn, "-B", "-q", "--strict-checksums", "-f", str(pom),
                f"{_DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={out}",
            ]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
                tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
                raise DevStackError(
                    f"Maven could not fetch Apache Kafka {self.version}'s jars: {tail}"
                )
            _verify(out)
            try:
                out.rename(self.lib_dir)
            except OSError:
                if not self.fetched():  # not a concurrent fetch that won the rename
                    raise
        return self.lib_dir

    def jar_version(self) -> str:
        """The version inside the kafka-clients jar the broker runs: what it reports."""
        for jar in self.lib_dir.glob("kafka-clients-*.jar"):
            with zipfile.ZipFile(jar) as zf:
                text = zf.read("kafka/kafka-version.properties").decode()
            for line in text.splitlines():
                if line.startswith("version="):
                    return line.split("=", 1)[1].strip()
        return self.version

    def java_argv(self, main: str, *args: str, jvm: list[str] | None = None) -> list[str]:
        return [_java(), *(jvm or []), "-cp", self.classpath, main, *args]


def _cluster_id() -> str:
    # Kafka's Uuid.randomUuid: 16 random bytes, URL-safe base64 without padding, never
    # starting with '-' (the storage tool would read it as a flag).
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class KafkaSecurity:
    """A SASL_SSL listener beside the plaintext one, as a production cluster has: TLS with
    a keystore (``keystore``, PKCS#12) its clients check against ``ca``, SCRAM-SHA-512
    ``users`` (name: password) made at format time, and the standard authorizer. The
    plaintext and controller listeners' principal (``User:ANONYMOUS``) is a super user:
    the dev stack's own tools; every SASL user needs ACLs."""

    port: int
    ca: Path
    keystore: Path
    keystore_password: str
    users: dict[str, str]

    @property
    def listener(self) -> str:
        return "SECURE"


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int


class KafkaCluster:
    """One or three KRaft combined nodes on ``host``, data under ``state_dir``."""

    def __init__(
        self,
        *,
        host: str,
        ports: list[int],
        state_dir: Path,
        runtime: KafkaRuntime,
        security: KafkaSecurity | None = None,
    ) -> None:
        # ports: client port then controller port of each node.
        if security is not None and len(ports) != 2:
            raise DevStackError("the SASL_SSL listener runs on a one-node cluster only")
        self.security = security
        self.host = host
        self.state_dir = state_dir
        self.runtime = runtime
        pairs = list(zip(ports[::2], ports[1::2], strict=True))
        self.nodes = [_Node(i + 1, p, c) for i, (p, c) in enumerate(pairs)]

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    def label(self) -> str:
        nodes = f" ({self.size} nodes)" if self.size > 1 else ""
        return f"apache-kafka {self.runtime.jar_version()}{nodes}"

    def services(self) -> list[Service]:
        return [self._service(node) for node in self.nodes]

    @staticmethod
    def service_name(node_id: int) -> str:
        return "kafka" if node_id == 1 else f"kafka-{node_id}"

    def active_controller(self, *, timeout_s: float = 30.0) -> int:
        """The node id of the KRaft quorum's leader, as ``kafka-metadata-quorum.sh
        describe --status`` reports it. A broker's own cluster metadata names any live
        node as "controller" (KIP-919), so the quorum itself is asked."""
        argv = self.runtime.java_argv(
            "org.apache.kafka.tools.MetadataQuorumCommand",
            "--bootstrap-server", self.bootstrap_servers, "describe", "--status",
            jvm=["-Xmx128m"],
        )  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise DevStackError(f"kafka-metadata-quorum gave no answer in {timeout_s:g}s") from exc
        found = re.search(r"^LeaderId:\s+(\d+)", done.stdout, re.MULTILINE)
        if done.returncode != 0 or found is None:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            raise DevStackError(f"kafka-metadata-quorum could not name the leader: {tail}")
        return int(found.group(1))

    def _service(self, node: _Node) -> Service:
        props = self._props_path(node)

        def prepare() -> None:
            self.runtime.ensure()
            self._format(node)

        def command() -> list[str]:
            log4j = self.state_dir / "kafka-log4j2.properties"
            jvm = [*_HEAP, *_JVM, f"-Dlog4j2.configurationFile={log4j}"]
            return self.runtime.java_argv("kafka.Kafka", str(props), jvm=jvm)

        def answers() -> bool:
            if not port_open(self.host, node.port):
                return False
            admin = AdminClient({"bootstrap.servers": f"{self.host}:{node.port}"}, logger=_log)
            try:
                brokers = admin.list_topics(timeout=PROBE_TIMEOUT_S).brokers
            except KafkaException:
                return False
            return node.node_id in brokers

        return Service(
            name=self.service_name(node.node_id),
            host=self.host,
            port=node.port,
            markers=("kafka.Kafka", str(props)),
            command=command,
            answers=answers,
            prepare=prepare,
            version=self.label,
        )

    def _log_dir(self, node: _Node) -> Path:
        return self.state_dir / f"kafka-{node.node_id}-data"

    def _props_path(self, node: _Node) -> Path:
        return self.state_dir / f"kafka-{node.node_id}.properties"

    def _properties(self, node: _Node) -> dict[str, str]:
        h = self.host
        replicas = str(min(3, self.size))
        isr = "2" if self.size >= 3 else "1"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "listeners": f"PLAINTEXT://{h}:{node.port},CONTROLLER://{h}:{node.controller_port}",
            "advertised.listeners": (
                f"PLAINTEXT://{h}:{node.port},CONTROLLER://{h}:{node.controller_port}"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._log_dir(node)),
            "default.replication.factor": replicas,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": isr,
            # Internal topics sized for a 2-core machine, not a production cluster.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.num.partitions": "4",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "group.initial.rebalance.delay.ms": "0",
            # KIP-848 groups take session and heartbeat from the broker: quick enough to
            # notice a killed member in a test, as the bridge's classic session does.
            "group.consumer.min.session.timeout.ms": "2000",
            "group.consumer.session.timeout.ms": "10000",
            "group.consumer.min.heartbeat.interval.ms": "500",
            "group.consumer.heartbeat.interval.ms": "1000",
        }
        if self.security is not None:
            props.update(self._secure_properties())
        if self.size == 1:
            props["controller.quorum.bootstrap.servers"] = f"{h}:{node.controller_port}"
        else:
            voters = ",".join(f"{n.node_id}@{h}:{n.controller_port}" for n in self.nodes)
            props["controller.quorum.voters"] = voters
        return props

    def _secure_properties(self) -> dict[str, str]:
        sec = self.security
        assert sec is not None
        name = sec.listener
        plain = f"PLAINTEXT://{self.host}:{self.nodes[0].port}"
        secure = f"{name}://{self.host}:{sec.port}"
        control = f"CONTROLLER://{self.host}:{self.nodes[0].controller_port}"
        return {
            "listeners": f"{plain},{control},{secure}",
            "advertised.listeners": f"{plain},{control},{secure}",
            "listener.security.protocol.map": (
                f"CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,{name}:SASL_SSL"
            ),
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            f"listener.name.{name.lower()}.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(sec.keystore),
            "ssl.keystore.password": sec.keystore_password,
            "ssl.key.password": sec.keystore_password,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _format(self, node: _Node) -> None:
        """Write the node's config; format its log directory unless it holds data."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "kafka-log4j2.properties").write_text(_LOG4J)
        props = self._props_path(node)
        props.write_text("".join(f"{k}={v}\n" for k, v in self._properties(node).items()))
        if (self._log_dir(node) / "meta.properties").exists():
            return
        id_file = self.state_dir / "kafka-cluster-id"
        # Created exclusively: nodes formatted by two racing `up`s share one cluster id.
        with contextlib.suppress(FileExistsError), id_file.open("x") as out:
            out.write(_cluster_id())
        args = ["format", "-c", str(props), "-t", id_file.read_text().strip()]
        if self.size == 1:
            args.append("--standalone")
        for user, password in (self.security.users if self.security else {}).items():
            # SCRAM credentials are cluster metadata: written with the first records.
            args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        log4j = f"-Dlog4j2.configurationFile={self.state_dir / 'kafka-log4j2.properties'}"
        argv = self.runtime.java_argv("kafka.tools.StorageTool", *args, jvm=[log4j])
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            raise DevStackError(f"could not format {self._log_dir(node)}: {tail}")
