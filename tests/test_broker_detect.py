"""broker.detect: what the cluster answers decides the Tansu handling, unsure means Tansu's."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException

from kafcel.kafka.broker import APACHE_KAFKA, TANSU, detect

pytestmark = pytest.mark.timeout(30)


@dataclass
class Done:
    value: Any = None
    error: KafkaException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class Node:
    id: int


@dataclass
class Cluster:
    cluster_id: str
    nodes: list[Node] = field(default_factory=lambda: [Node(1)])


class FakeAdmin:
    """Answers DescribeCluster with ``cluster_id`` and DescribeConfigs with ``configs``."""

    calls = 0

    def __init__(self, cluster: Done, configs: Done) -> None:
        self.cluster = cluster
        self.configs = configs

    def __call__(self, conf: dict[str, Any]) -> FakeAdmin:
        FakeAdmin.calls += 1
        return self

    def describe_cluster(self, request_timeout: float) -> Done:
        return self.cluster

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Done]:
        return {resources[0]: self.configs}


def _error(code: int) -> KafkaException:
    return KafkaException(RdKafkaError(code))


def _address() -> str:
    # detect caches per address: every case its own.
    return f"test-{uuid.uuid4().hex[:8]}:9092"


def test_a_tansu_cluster_id_means_tansu() -> None:
    admin = FakeAdmin(Done(Cluster("tansu_cluster")), Done(error=_error(RdKafkaError._TIMED_OUT)))
    kind = detect(_address(), admin=admin)
    assert kind.name == TANSU and kind.needs_tansu_handling


def test_describe_configs_answered_means_apache_kafka_and_is_cached() -> None:
    address = _address()
    admin = FakeAdmin(Done(Cluster("Iy3UnKarSCmPwiDFURNCEA")), Done({}))
    assert detect(address, admin=admin).name == APACHE_KAFKA
    before = FakeAdmin.calls
    assert not detect(address, admin=admin).needs_tansu_handling
    assert FakeAdmin.calls == before


def test_describe_configs_refused_by_an_acl_still_means_apache_kafka() -> None:
    denied = Done(error=_error(RdKafkaError.CLUSTER_AUTHORIZATION_FAILED))
    admin = FakeAdmin(Done(Cluster("abc")), denied)
    assert detect(_address(), admin=admin).name == APACHE_KAFKA


@pytest.mark.parametrize(
    "code",
    [
        RdKafkaError._TIMED_OUT,
        RdKafkaError._TRANSPORT,
        RdKafkaError._ALL_BROKERS_DOWN,
        RdKafkaError.UNSUPPORTED_VERSION,
        RdKafkaError.UNKNOWN,
    ],
)
def test_any_other_answer_gets_the_tansu_handling_and_is_asked_again(code: int) -> None:
    address = _address()
    admin = FakeAdmin(Done(Cluster("custom-id")), Done(error=_error(code)))
    assert detect(address, admin=admin).needs_tansu_handling
    before = FakeAdmin.calls
    detect(address, admin=admin)
    assert FakeAdmin.calls == before + 1


def test_an_unreachable_cluster_gets_the_tansu_handling() -> None:
    admin = FakeAdmin(Done(error=_error(RdKafkaError._TRANSPORT)), Done({}))
    assert detect(_address(), admin=admin).needs_tansu_handling
