"""The group protocol setting: classic (cooperative-sticky) or consumer (KIP-848), and the
consumer configuration librdkafka accepts under each. The bridges' rebalances under both
protocols run on the real stack in tests/test_bridge_lifecycle.py."""

from __future__ import annotations

import logging
import uuid

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer

from kafcel.bridge.clients import consumer_config
from kafcel.bridge.group import prepare_group
from kafcel.cli import cli
from kafcel.dev import DevStack
from kafcel.errors import ConfigError
from kafcel.settings import Settings

REFUSED_UNDER_KIP_848 = (
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
)


def test_classic_is_the_default_and_consumer_is_read_from_the_environment() -> None:
    assert Settings().group_protocol == "classic"
    env = {"KAFCEL_GROUP_PROTOCOL": "consumer"}
    assert Settings.from_env(env).group_protocol == "consumer"
    assert Settings.from_env(env, group_protocol="classic").group_protocol == "classic"


def test_an_unknown_protocol_or_one_set_through_kafka_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="group_protocol must be one of classic, consumer"):
        Settings(group_protocol="eager")
    with pytest.raises(ConfigError, match="KAFCEL_GROUP_PROTOCOL"):
        Settings(kafka_config=("group.protocol=consumer",))


def test_the_bridge_has_a_flag_for_it() -> None:
    out = CliRunner().invoke(cli, ["bridge", "--help"])
    assert out.exit_code == 0
    assert "--group-protocol" in out.output and "KAFCEL_GROUP_PROTOCOL" in out.output


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_librdkafka_takes_the_bridges_consumer_config(protocol: str) -> None:
    settings = Settings(group_protocol=protocol, session_timeout_s=6.0)
    conf = consumer_config(settings, lambda *_: None, tansu=False)
    if protocol == "classic":
        assert conf["partition.assignment.strategy"] == "cooperative-sticky"
        assert conf["session.timeout.ms"] == 6000
        assert "group.protocol" not in conf
    else:
        assert conf["group.protocol"] == "consumer"
        assert not set(REFUSED_UNDER_KIP_848) & set(conf)
    # librdkafka checks the combination when the consumer is made, before any connection.
    Consumer(conf).close()


@pytest.mark.integration
def test_a_session_timeout_the_broker_refuses_leaves_the_brokers_with_a_warning(
    stack: DevStack, caplog: pytest.LogCaptureFixture
) -> None:
    # The test broker allows 2 s to 60 s (group.consumer.min/max.session.timeout.ms).
    group = f"g-{uuid.uuid4().hex[:8]}"
    base = Settings(
        bootstrap_servers=stack.bootstrap_servers, group_id=group, group_protocol="consumer"
    )
    with caplog.at_level(logging.INFO, logger="kafcel.bridge"):
        prepare_group(base.replace(session_timeout_s=7.0))
        prepare_group(base.replace(session_timeout_s=1.0))
    lines = [r.getMessage() for r in caplog.records]
    assert f"group {group}: consumer.session.timeout.ms=7000 (consumer protocol)" in lines
    (refused,) = [line for line in lines if "could not set" in line]
    assert "2000 to 60000" in refused and "the broker's session timeout applies" in refused
