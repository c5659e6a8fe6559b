"""Where a ``Producer.submit`` call's time goes: pyinstrument over 100,000 submits.

Starts its own Apache Kafka on free ports (the local stack's pinned jars), warms the
producer with 2,000 submits, profiles 100,000 more and their flush, and writes the text
report to ``benchmarks/results/submit-profile.txt`` (docs/benchmarks.md reads it).

    .venv/bin/python -m benchmarks.submit_profile [--submits N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pyinstrument import Profiler

import kafcel
from kafcel.dev import DevStack, free_ports

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def profile(submits: int) -> str:
    ports = free_ports(3)
    with tempfile.TemporaryDirectory(prefix="kafcel-submit-profile-") as tmp:
        stack = DevStack(
            kafka_ports=ports[:2],
            redis_port=ports[2],
            state_dir=Path(tmp),
            services=("kafka",),
            cache_dir=ROOT / ".kafcel" / "kafka",
        )
        stack.up()
        try:
            stack.ensure_topics({"profile-tasks": 8})
            servers = stack.bootstrap_servers
            with kafcel.Producer(bootstrap_servers=servers, topic="profile-tasks") as producer:
                for i in range(2000):
                    producer.submit("tasks.add", args=[i, i], key=f"user-{i % 100}")
                producer.flush()
                profiler = Profiler(interval=0.0001)
                profiler.start()
                for i in range(submits):
                    producer.submit("tasks.add", args=[i, i], key=f"user-{i % 100}")
                producer.flush()
                profiler.stop()
        finally:
            stack.down()
    return str(profiler.output_text(unicode=True, color=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=100_000)
    args = parser.parse_args()
    report = profile(args.submits)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "submit-profile.txt").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
