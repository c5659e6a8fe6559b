"""The local stack for dev, demo, tests, chaos and benchmarks: one module per service;
the kafcel processes they start (:mod:`.procs`); ``kafcel demo`` (:mod:`.demo`, its Celery
app :mod:`.demo_tasks`)."""

from .kafka import KafkaRuntime
from .service import ServiceStatus, free_ports
from .stack import BROKERS, DevStack
from .tansu import tansu_binary

__all__ = ["BROKERS", "DevStack", "KafkaRuntime", "ServiceStatus", "free_ports", "tansu_binary"]
