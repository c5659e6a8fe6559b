"""One Settings object, read from ``KAFCEL_*`` environment variables and CLI flags.

Nothing is read at import time: call :meth:`Settings.from_env` where the settings are
needed (CLI entry, worker process start), so tests and embedders control the source.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["COMPANION_SUFFIXES", "ENV_PREFIX", "LaneSpec", "Settings"]

ENV_PREFIX = "KAFCEL_"

_ORDERINGS = ("key", "partition", "none")
_GROUP_PROTOCOLS = ("classic", "consumer")
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Consumer settings of the classic protocol that librdkafka refuses under KIP-848.
_CLASSIC_ONLY = frozenset(
    {"session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"}
)
_LOG_FORMATS = ("text", "json")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# The topics kafcel makes beside a task topic: never task topics of a pattern's lanes.
COMPANION_SUFFIXES = (".results", ".dlq", ".scheduled")


@dataclass(frozen=True)
class LaneSpec:
    """One entry of ``topics``: a task topic, or a pattern (``^regex``), and its weight."""

    text: str
    weight: int = 1

    @property
    def pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.text) if self.text.startswith("^") else None

    @classmethod
    def parse(cls, entry: str) -> LaneSpec:
        text, weight = entry.strip(), 1
        head, sep, tail = text.rpartition(":")
        if sep and tail.strip().isdigit():
            text, weight = head.strip(), int(tail)
        if not text:
            raise ConfigError(f"topics entry {entry!r} names no topic")
        if weight < 1:
            raise ConfigError(f"topics entry {entry!r}: the weight must be at least 1")
        if text.startswith("^"):
            try:
                re.compile(text)
            except re.error as exc:
                raise ConfigError(f"topics entry {entry!r} is not a valid pattern: {exc}") from exc
        elif not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", text):
            raise ConfigError(
                f"topics entry {entry!r} is not a topic name (letters, digits, '.', '_', '-'; "
                "a pattern starts with ^)"
            )
        return cls(text, weight)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every tunable of kafcel. Field ``foo_bar`` is env ``KAFCEL_FOO_BAR``, flag ``--foo-bar``."""

    bootstrap_servers: str = field(
        default="127.0.0.1:9092", metadata={"help": "Kafka bootstrap servers"}
    )
    topic: str = field(default="celery-tasks", metadata={"help": "topic of task envelopes"})
    results_topic: str = field(
        default="", metadata={"help": "topic of task outcomes (default: TOPIC.results)"}
    )
    dlq_topic: str = field(default="", metadata={"help": "dead-letter topic (default: TOPIC.dlq)"})
    scheduled_topic: str = field(
        default="",
        metadata={"help": "where tasks due later wait (default: TOPIC.scheduled)"},
    )
    topics: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "lanes: the task topics bridges and consuming workers read, each "
            "TOPIC[:WEIGHT] or a pattern ^REGEX[:WEIGHT] (comma separated; default: TOPIC "
            "alone). Each lane has its results, DLQ and scheduled topics (TOPIC.results...), "
            "or shares RESULTS_TOPIC and DLQ_TOPIC when those are set, and its WEIGHT's share "
            "of max_in_flight"
        },
    )
    lane_queues: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "TOPIC=QUEUE: the Celery queue of a lane's tasks that name none "
            "(comma separated)"
        },
    )
    queue: str = field(
        default="",
        metadata={"help": "Celery queue of the tasks that name none (default: Celery's routing)"},
    )
    topics_refresh_s: float = field(
        default=30.0,
        metadata={"help": "how often the topics' patterns are matched against Kafka's topics"},
    )
    schedule_after_s: float = field(
        default=60.0,
        metadata={
            "help": "tasks due later than this wait in the scheduled topic, not in the "
            "bridge (0: never)"
        },
    )
    group_id: str = field(default="kafcel-bridge", metadata={"help": "bridge consumer group"})
    group_instance_id: str = field(
        default="", metadata={"help": "static membership id of this bridge (optional)"}
    )
    partitions: int = field(
        default=8, metadata={"help": "partitions when kafcel creates a missing topic"}
    )
    max_in_flight: int = field(
        default=10_000,
        metadata={"help": "fetched-but-unsettled records above which the bridge pauses"},
    )
    max_in_flight_bytes: int = field(
        default=128 * 1024 * 1024,
        metadata={"help": "bytes of fetched-but-unsettled records above which the bridge pauses"},
    )
    max_record_bytes: int = field(
        default=1_048_576, metadata={"help": "largest record value accepted (bytes)"}
    )
    commit_interval_s: float = field(
        default=1.0, metadata={"help": "period of asynchronous offset commits"}
    )
    drain_timeout_s: float = field(
        default=30.0, metadata={"help": "how long SIGTERM waits for in-flight tasks"}
    )
    session_timeout_s: float = field(
        default=10.0, metadata={"help": "consumer group session timeout"}
    )
    group_protocol: str = field(
        default="classic",
        metadata={
            "help": "classic (cooperative-sticky: every broker) | consumer (KIP-848: Apache "
            "Kafka 4.0+)"
        },
    )
    ordering: str = field(
        default="key",
        metadata={"help": "key (one unsettled task per key) | partition | none"},
    )
    gap_wait_s: float = field(
        default=2.0,
        metadata={
            "help": "how long a missing offset is waited for before it counts as a gap "
            "(on Tansu only: Apache Kafka never waits)"
        },
    )
    outcome_batch_ms: int = field(
        default=10,
        metadata={
            "help": "how long outcomes wait to share one Kafka request, written by workers "
            "and read by bridges: less broker CPU per task, settles up to twice this later "
            "(0: a request per outcome)"
        },
    )
    allow: tuple[str, ...] = field(
        default=(), metadata={"help": "glob patterns of task names allowed (comma separated)"}
    )
    deny: tuple[str, ...] = field(
        default=(), metadata={"help": "glob patterns of task names refused (comma separated)"}
    )
    # repr=False here and below: a URL or librdkafka entry may hold a password.
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        repr=False,
        metadata={"help": "Redis of the once-guard (worker side)"},
    )
    once_lease_s: float = field(
        default=30.0,
        metadata={"help": "once-guard lease of a running task (renewed every third of it)"},
    )
    redispatch_after_s: float = field(
        default=120.0,
        metadata={"help": "unsettled this long with no live lease: the task is sent again"},
    )
    queued_ttl_s: float = field(
        default=600.0,
        metadata={
            "help": "how long the bridge's queued mark vouches for a task no worker has claimed"
        },
    )
    max_attempts: int = field(
        default=3,
        metadata={"help": "attempts a task may lose with its worker before it is dead-lettered"},
    )
    once_done_ttl_s: float = field(
        default=7 * 24 * 3600.0, metadata={"help": "how long a finished task id is remembered"}
    )
    result_backend: str = field(
        default="",
        repr=False,
        metadata={"help": "Celery result backend read by status (default: REDIS_URL)"},
    )
    lag_window_s: float = field(
        default=60.0,
        metadata={"help": "sliding window of the lag evaluation (OK/WARN/STALL/STOP)"},
    )
    metrics_port: int = field(
        default=0, metadata={"help": "port of the bridge's Prometheus /metrics (0: off)"}
    )
    worker_metrics_port: int = field(
        default=0,
        metadata={"help": "port of a worker's Prometheus /metrics, via install() (0: off)"},
    )
    worker_consume: bool = field(
        default=False,
        metadata={
            "help": "Celery workers installed with install() consume the task topic "
            "themselves, no bridge needed (also the worker flag --kafcel-consume)"
        },
    )
    dlq_revoked: bool = field(
        default=False,
        metadata={
            "help": "dead-letter tasks an operator revoked (default: they settle as REVOKED; "
            "expired tasks always go to the DLQ)"
        },
    )
    log_format: str = field(default="text", metadata={"help": "text | json (one line per event)"})
    # A secret: never in repr(), logs or status output.
    dashboard_token: str = field(
        default="",
        repr=False,
        metadata={
            "help": "token the dashboard's replay endpoint requires (Authorization: Bearer); "
            "needed when it listens beyond 127.0.0.1 (prefer the variable: a flag shows in ps)"
        },
    )
    kafka_config: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata={"help": "extra librdkafka settings, key=value (comma separated)"},
    )
    # Kafka security, for every client kafcel makes (kafka_config entries win over them).
    security_protocol: str = field(
        default="",
        metadata={"help": "Kafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"},
    )
    sasl_mechanism: str = field(
        default="", metadata={"help": "Kafka SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"}
    )
    sasl_username: str = field(default="", metadata={"help": "Kafka SASL user"})
    # A secret: never in repr(), logs or status output.
    sasl_password: str = field(
        default="",
        repr=False,
        metadata={"help": "Kafka SASL password (prefer the variable: a flag shows in ps)"},
    )
    ssl_ca_location: str = field(
        default="",
        metadata={"help": "CA certificates (PEM file) Kafka's brokers are checked against"},
    )
    ssl_certificate_location: str = field(
        default="", metadata={"help": "client certificate (PEM), for brokers that ask for one"}
    )
    ssl_key_location: str = field(
        default="", metadata={"help": "the client certificate's private key (PEM)"}
    )

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers must not be empty")
        if not self.topic.strip():
            raise ConfigError("topic must not be empty")
        # The companions as given, before the defaults below: set ones are shared by lanes.
        object.__setattr__(
            self, "_as_given", (self.results_topic, self.dlq_topic, self.scheduled_topic)
        )
        self._check_lanes()
        if not self.results_topic:
            object.__setattr__(self, "results_topic", f"{self.topic}.results")
        if not self.dlq_topic:
            object.__setattr__(self, "dlq_topic", f"{self.topic}.dlq")
        if not self.scheduled_topic:
            object.__setattr__(self, "scheduled_topic", f"{self.topic}.scheduled")
        if len({self.topic, self.results_topic, self.dlq_topic, self.scheduled_topic}) != 4:
            raise ConfigError(
                "topic, results_topic, dlq_topic and scheduled_topic must be different topics"
            )
        if self.schedule_after_s < 0:
            raise ConfigError(f"schedule_after_s must be >= 0, got {self.schedule_after_s}")
        for name in (
            "partitions",
            "max_in_flight",
            "max_in_flight_bytes",
            "max_record_bytes",
            "max_attempts",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gap_wait_s < 0:
            raise ConfigError(f"gap_wait_s must be >= 0, got {self.gap_wait_s}")
        if not 0 <= self.outcome_batch_ms <= 1000:
            raise ConfigError(f"outcome_batch_ms must be 0 to 1000, got {self.outcome_batch_ms}")
        for name in (
            "commit_interval_s",
            "drain_timeout_s",
            "session_timeout_s",
            "once_lease_s",
            "once_done_ttl_s",
            "redispatch_after_s",
            "queued_ttl_s",
            "topics_refresh_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lag_window_s <= 0:
            raise ConfigError(f"lag_window_s must be positive, got {self.lag_window_s}")
        for name in ("metrics_port", "worker_metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be a port (0 to 65535), got {getattr(self, name)}")
        if self.log_format not in _LOG_FORMATS:
            raise ConfigError(
                f"log_format must be one of {', '.join(_LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.ordering not in _ORDERINGS:
            raise ConfigError(
                f"ordering must be one of {', '.join(_ORDERINGS)}, got {self.ordering!r}"
            )
        if self.security_protocol and self.security_protocol.upper() not in _SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security_protocol must be one of {', '.join(_SECURITY_PROTOCOLS)}, "
                f"got {self.security_protocol!r}"
            )
        # kafka_config wins over the named settings, its security.protocol too.
        raw = dict(item.split("=", 1) for item in self.kafka_config if "=" in item)
        protocol = raw.get("security.protocol", self.security_protocol).upper()
        if (self.sasl_mechanism or self.sasl_username) and not protocol.startswith("SASL_"):
            raise ConfigError(
                "sasl_mechanism and sasl_username need security_protocol SASL_SSL "
                "(or SASL_PLAINTEXT)"
            )
        if bool(self.sasl_username) != bool(self.sasl_password):
            raise ConfigError("sasl_username and sasl_password go together: set both")
        if self.sasl_username and not (self.sasl_mechanism or "sasl.mechanism" in raw):
            # librdkafka would try GSSAPI (Kerberos), and fail with a puzzling error.
            raise ConfigError("set sasl_mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
        if self.group_protocol not in _GROUP_PROTOCOLS:
            raise ConfigError(
                f"group_protocol must be one of {', '.join(_GROUP_PROTOCOLS)}, "
                f"got {self.group_protocol!r}"
            )
        for item in self.kafka_config:
            if "=" not in item:
                raise ConfigError(f"kafka_config entry {item!r} is not key=value")
            key = item.split("=", 1)[0].strip()
            if key == "group.protocol":
                # The bridge's consumer config differs by protocol, not just this key.
                raise ConfigError(
                    "set the group protocol with group_protocol (KAFCEL_GROUP_PROTOCOL), "
                    "not kafka_config"
                )
            if self.group_protocol == "consumer" and key in _CLASSIC_ONLY:
                # librdkafka refuses them with KIP-848 only when the consumer is created.
                raise ConfigError(
                    f"kafka_config sets {key}, which group_protocol=consumer does not take: "
                    "the broker assigns partitions and sets the session (session_timeout_s)"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``KAFCEL_*`` variables, then apply non-None ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        types = {f.name: f.type for f in fields(cls)}
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in types:
                raise ConfigError(f"unknown setting {name!r}")
            if isinstance(value, str):
                value = _parse(name, types[name], value)  # a CLI flag: same rules as env
            values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def _given(self) -> tuple[str, str, str]:
        """results_topic, dlq_topic and scheduled_topic as set ("": defaulted)."""
        given: tuple[str, str, str] = vars(self)["_as_given"]
        return given

    def _check_lanes(self) -> None:
        specs = self.lane_specs()
        if len({spec.text for spec in specs}) != len(specs):
            raise ConfigError("topics names a topic or pattern twice")
        if self.topics and self.scheduled_topic:
            # Each lane's scheduled partitions go with its task partitions (one reader each).
            raise ConfigError(
                "scheduled_topic cannot be shared by lanes: each lane has TOPIC.scheduled "
                "(unset it, or use topic)"
            )
        self._lane_queues()

    def _lane_queues(self) -> dict[str, str]:
        """``lane_queues`` as task topic -> Celery queue; ConfigError on a bad entry."""
        queues: dict[str, str] = {}
        for entry in self.lane_queues:
            topic, sep, queue = entry.partition("=")
            if not sep or not topic.strip() or not queue.strip():
                raise ConfigError(f"lane_queues entry {entry!r} is not TOPIC=QUEUE")
            queues[topic.strip()] = queue.strip()
        return queues

    def lane_specs(self) -> list[LaneSpec]:
        """The lanes' topics and patterns with their weights (none: ``topic`` alone)."""
        return [LaneSpec.parse(entry) for entry in self.topics]

    def has_lane_patterns(self) -> bool:
        """Whether a lane is a pattern, matched against Kafka's topics (again and again)."""
        return any(spec.pattern is not None for spec in self.lane_specs())

    def lane_topics(self, existing: Iterable[str]) -> dict[str, int]:
        """The lanes' task topics and weights: every named topic, and those of
        ``existing`` (Kafka's topics) that a pattern matches, but no companion topic."""
        if not self.topics:
            return {self.topic: 1}
        shared = {t for t in self._given()[:2] if t}
        found: dict[str, int] = {}
        for spec in self.lane_specs():
            pattern = spec.pattern
            if pattern is None:
                found.setdefault(spec.text, spec.weight)
                continue
            for name in sorted(existing):
                if (
                    pattern.fullmatch(name)
                    and not name.startswith("__")
                    and not name.endswith(COMPANION_SUFFIXES)
                    and name not in shared
                ):
                    found.setdefault(name, spec.weight)
        return found

    def lane(self, topic: str, *, weights: Mapping[str, int]) -> Settings:
        """The settings of the lane reading ``topic``: its companions, its Celery queue
        and its weight's share of the in-flight budget among ``weights``."""
        total = sum(weights.values()) or 1
        share = weights.get(topic, 1) / total
        return self.replace(
            topic=topic,
            topics=(),
            queue=self._lane_queues().get(topic, self.queue),
            max_in_flight=max(1, int(self.max_in_flight * share)),
            max_in_flight_bytes=max(1, int(self.max_in_flight_bytes * share)),
            group_instance_id=f"{self.group_instance_id}.{topic}" if self.group_instance_id else "",
            # The lanes of a process share one /metrics (bridge/lanes.py).
            metrics_port=0,
        )

    def replace(self, **changes: Any) -> Settings:
        # The companions as given, not as defaulted: a copy with another topic gets that
        # topic's, and a lane derived from a copy shares only what was set.
        results, dlq, scheduled = self._given()
        given = {"results_topic": results, "dlq_topic": dlq, "scheduled_topic": scheduled}
        return dataclasses.replace(self, **{**given, **changes})

    def librdkafka(self) -> dict[str, str]:
        """What every Kafka client takes besides the bootstrap servers: the security
        settings, then the extra librdkafka settings."""
        security = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        out = {key: value for key, value in security.items() if value}
        for item in self.kafka_config:
            key, value = item.split("=", 1)
            out[key] = value
        return out

    def as_env(self) -> dict[str, str]:
        """These settings as ``KAFCEL_*`` variables, to hand to a subprocess."""
        out: dict[str, str] = {}
        # The companions as given: a subprocess defaults them (and shares them) alike.
        given = dict(
            zip(("results_topic", "dlq_topic", "scheduled_topic"), self._given(), strict=True)
        )
        for f in fields(self):
            value = given[f.name] if f.name in given else getattr(self, f.name)
            out[ENV_PREFIX + f.name.upper()] = (
                ",".join(value) if isinstance(value, tuple) else str(value)
            )
        return out


def _parse(name: str, type_name: Any, raw: str) -> Any:
    env_name = ENV_PREFIX + name.upper()
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.strip().lower() in _TRUE:
                return True
            if raw.strip().lower() in _FALSE:
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {kind}") from exc
