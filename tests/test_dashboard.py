"""``kafcel dashboard`` in headless Chromium: the numbers shown are ``kafcel status --json``'s.

The dashboard runs as its real CLI (``kafcel dashboard --port N``) against a pipeline that
ran tasks, failures and poison records; Playwright drives Debian's Chromium. With
``KAFCEL_SCREENSHOT=docs/dashboard.png`` the test also saves the screenshot shown in the
README and docs/dashboard.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Producer as KafkaProducer

from kafcel import Producer
from kafcel.dev import DevStack, free_ports
from kafcel.dev.procs import ManagedProcess
from kafcel.protocol.deadletter import parse_dlq_headers
from kafcel.settings import Settings

from .conftest import ROOT, Pipeline, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
KAFCEL = str(Path(sys.executable).with_name("kafcel"))
Ledger = tuple[str, "redis.Redis[bytes]"]

POISON: list[tuple[str, bytes, str]] = [
    ("bad-json", b'{"v": 1, "task": "tests.app.record", "args": [', "InvalidJson"),
    ("schema", b'{"v": 1, "task": "tests.app.record", "args": "no"}', "SchemaViolation"),
    ("unknown", b'{"v": 1, "task": "tests.app.nope"}', "TaskNotAllowed"),
]


def start_dashboard(env: dict[str, str], logs_dir: Path, tag: str) -> tuple[ManagedProcess, str]:
    (port,) = free_ports(1)
    proc = ManagedProcess(
        name="kafcel dashboard",
        argv=[KAFCEL, "dashboard", "--port", str(port)],
        env=env,
        log_path=logs_dir / f"{tag}-dashboard.log",
        cwd=ROOT,
    ).start()
    proc.wait_for_log("kafcel dashboard: http://", timeout_s=30)
    return proc, f"http://127.0.0.1:{port}/"


@pytest.fixture()
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make setup` installs Debian's chromium "
            "(apt-get install chromium); Playwright's own browser download is not used"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


def status_json(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [KAFCEL, "status", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def snapshot(page: Any) -> dict[str, str]:
    """Every ``data-testid`` text of the page, read in one go (one consistent render)."""
    shown: dict[str, str] = page.evaluate(
        """() => {
          const out = {};
          for (const n of document.querySelectorAll('[data-testid]'))
            out[n.dataset.testid] = n.textContent.trim();
          out['@at'] = document.querySelector('[data-testid="status-at"]').dataset.at;
          return out;
        }"""
    )
    return shown


def number(text: str | None) -> int | None:
    if text is None or text == "-":
        return None
    return int(text.replace(",", ""))


def expected_numbers(report: dict[str, Any]) -> dict[str, Any]:
    """What the page must show for ``report``, by data-testid."""
    want: dict[str, Any] = {
        "lag-total": report["lag"],
        "dlq-depth": report["dlq"]["depth"],
        "in-flight": report["in_flight"],
        "redispatched": report["redispatched"],
        "bridge-count": len(report["bridges"]),
    }
    for p in report["partitions"]:
        n = p["partition"]
        want[f"partition-{n}-committed"] = p["committed"]
        want[f"partition-{n}-end"] = p["end"]
        want[f"partition-{n}-lag"] = p["lag"]
        if "status" in p:
            want[f"partition-{n}-status"] = p["status"]
    if "evaluation" in report:
        want["overall-status"] = report["evaluation"]["status"]
    # Each consumer (bridge or consuming worker) with the evaluation of what it owns.
    order = ("OK", "WARN", "STALL", "STOP")
    for i, b in enumerate(report["bridges"]):
        owned = [p for p in report["partitions"] if p.get("owner") == b["member"]]
        want[f"bridge-{i}-member"] = b["member"]
        want[f"bridge-{i}-role"] = b.get("role", "bridge")
        want[f"bridge-{i}-partitions"] = ",".join(map(str, b["partitions"])) or "-"
        want[f"bridge-{i}-in-flight"] = b["stats"]["in_flight"]
        if owned:
            want[f"bridge-{i}-lag"] = sum(p["lag"] for p in owned)
            want[f"bridge-{i}-status"] = max((p["status"] for p in owned), key=order.index)
    tasks = report.get("tasks") or {}
    states = tasks.get("states", tasks) if isinstance(tasks, dict) else {}
    for state, count in states.items():
        if isinstance(count, int):
            want[f"task-state-{state}"] = count
    for error_class, count in (report["dlq"].get("by_class") or {}).items():
        want[f"dlq-class-{error_class}"] = count
    return want


def mismatches(want: dict[str, Any], shown: dict[str, str]) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for testid, value in want.items():
        text = shown.get(testid)
        got: Any = text if isinstance(value, str) or text is None else number(text)
        if got != value:
            out[testid] = (value, got)
    return out


def page_matches_status(page: Any, env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Run ``kafcel status --json``, wait for the page's next poll, compare every number.

    A reading can fall between two task events, so a mismatch is retried with a fresh
    reading of both; the comparison is always between a CLI report and a page poll
    taken after it.
    """
    deadline = time.monotonic() + 60
    diff: dict[str, tuple[Any, Any]] = {}
    while time.monotonic() < deadline:
        report = status_json(env)
        wait_until(
            lambda r=report: float(snapshot(page)["@at"] or 0) > r["at"],
            20,
            "the page to poll after kafcel status",
            every_s=0.1,
        )
        want = expected_numbers(report)
        diff = mismatches(want, snapshot(page))
        if not diff:
            return report, len(want)
    raise AssertionError(f"page and kafcel status --json differ (want, shown): {diff}")


def test_dashboard_numbers_match_kafcel_status_and_its_dlq_browser_replays(
    pipeline: Pipeline, ledger: Ledger, browser: Any, logs_dir: Path
) -> None:
    name, client = ledger
    settings = pipeline.settings
    # A bridge and a worker consuming the topic itself share the group: the page lists both.
    pipeline.start_bridge()
    pipeline.start_consumer()
    env = pipeline.env()
    dash, url = start_dashboard(env, logs_dir, settings.topic)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        script_errors: list[str] = []
        page.on("pageerror", lambda exc: script_errors.append(str(exc)))
        page.goto(url)
        page.get_by_test_id("status-at").wait_for()
        wait_until(lambda: snapshot(page)["@at"], 20, "the first status poll")

        # Traffic while the page watches: quick and slow tasks, two that fail for good,
        # two that fail until their "fix" is deployed, and poison records.
        n, slow = 400, 60
        client.set(f"{name}:broken", 1)
        with Producer(settings=settings) as producer:
            for i in range(slow):
                producer.submit("tests.app.slow", args=[name, f"slow-{i}", 0.1], key=f"s-{i % 30}")
            for i in range(n):
                producer.submit("tests.app.record", args=[name, i], key=f"user-{i % 23}")
                if i % 40 == 39:
                    producer.flush()
                    time.sleep(0.25)
            fail_ids = [
                producer.submit("tests.app.always_fail", args=[name, f"fail-{i}"], key=f"order-{i}")
                for i in range(2)
            ]
            broken_ids = [
                producer.submit(
                    "tests.app.fails_while_broken", args=[name, f"bug-{i}"], key=f"b-{i}"
                )
                for i in range(2)
            ]
        raw = KafkaProducer({"bootstrap.servers": settings.bootstrap_servers})
        for label, value, _ in POISON:
            raw.produce(settings.topic, value, key=b"poison", headers=[("origin-app", label)])
        raw.flush(10)

        dead = pipeline.read(settings.dlq_topic, until=lambda got: len(got) >= len(POISON) + 4)
        client.delete(f"{name}:broken")  # the fix is deployed
        effects = f"{name}:effects"
        wait_until(lambda: client.hlen(effects) == n + slow, 120, "tasks to run")
        wait_until(pipeline.fully_committed, 60, "offsets committed to the end")

        # 1. Every number on the page equals kafcel status --json.
        report, compared = page_matches_status(page, env)
        assert report["lag"] == 0 and report["dlq"]["depth"] >= 1
        assert compared >= 4 * 3 + 5
        shown = snapshot(page)
        states = report.get("tasks", {}).get("states")
        if states is not None:  # the status extension with task states has landed
            assert number(shown["task-state-SUCCESS"]) == states["SUCCESS"] >= n
            assert number(shown["task-state-FAILURE"]) == states["FAILURE"] >= 4
        for p in report["partitions"]:
            assert shown[f"partition-{p['partition']}-lag"] == "0"
        roles = {shown[f"bridge-{i}-role"]: i for i in range(len(report["bridges"]))}
        assert sorted(roles) == ["bridge", "worker"], roles
        worker_row = roles["worker"]
        assert shown[f"bridge-{worker_row}-partitions"] not in ("", "-")
        assert shown[f"bridge-{worker_row}-status"] == "OK"
        assert shown["consumer-roles"] == "1 bridge · 1 worker"

        # 2. The DLQ browser lists the poison records and the failures where Kafka has them.
        refs = {}
        for m in dead:
            h = parse_dlq_headers(m.headers())
            refs[f"{m.partition()}-{m.offset()}"] = (h["error.class"], h.get("task_id"))
        page.get_by_test_id("dlq-search").click()
        for ref, (error_class, _) in refs.items():
            row = page.get_by_test_id(f"dlq-row-{ref}")
            row.wait_for(timeout=20_000)
            assert page.get_by_test_id(f"dlq-class-of-{ref}").inner_text() == error_class
        assert {c for c, _ in refs.values()} >= {c for _, _, c in POISON} | {"RuntimeError"}

        # The error-class filter narrows the list to one poison record.
        page.get_by_test_id("dlq-filter-error-class").fill("InvalidJson")
        page.get_by_test_id("dlq-search").click()
        wait_until(lambda: page.get_by_test_id("dlq-count").inner_text() == "1", 20, "filter")
        (invalid,) = [r for r, (c, _) in refs.items() if c == "InvalidJson"]
        assert page.get_by_test_id(f"dlq-row-{invalid}").is_visible()
        page.get_by_test_id("dlq-filter-error-class").fill("")
        page.get_by_test_id("dlq-search").click()
        wait_until(
            lambda: number(page.get_by_test_id("dlq-count").inner_text()) == len(refs),
            20,
            "the unfiltered list",
        )

        # 3. Replay the two tasks that failed before their fix, selected, under their ids:
        # they succeed now.
        broken = [r for r, (_, tid) in refs.items() if tid in broken_ids]
        assert len(broken) == 2
        for ref in broken:
            page.get_by_test_id(f"dlq-select-{ref}").check()
        page.get_by_test_id("dlq-replay-selected").click()
        result = page.get_by_test_id("dlq-replay-result")
        wait_until(lambda: "replayed" in result.inner_text(), 30, "the replay result")
        assert result.inner_text().startswith("replayed 2 of 2 with their ids"), result.inner_text()
        assert sorted(json.loads(result.get_attribute("data-task-ids") or "[]")) == sorted(
            broken_ids
        )
        wait_until(lambda: client.hlen(effects) == n + slow + 2, 60, "replayed tasks to run")
        for tid in broken_ids:
            meta = wait_until(lambda t=tid: client.get(f"celery-task-meta-{t}"), 30, "the result")
            assert json.loads(meta)["status"] == "SUCCESS"

        # 4. Replay one failed task with a new id: the page shows the id it got, and the
        # task runs again under that id (it fails again: the result backend says so).
        (failed,) = [r for r, (_, tid) in refs.items() if tid == fail_ids[0]]
        page.get_by_test_id("dlq-new-id").check()
        page.get_by_test_id(f"dlq-replay-{failed}").click()
        wait_until(lambda: "new ids" in result.inner_text(), 30, "the replay result")
        assert result.inner_text().startswith("replayed 1 of 1 with new ids"), result.inner_text()
        (new_id,) = json.loads(result.get_attribute("data-task-ids") or "[]")
        assert new_id not in fail_ids
        assert new_id in result.inner_text()
        wait_until(
            lambda: new_id in page.get_by_test_id(f"dlq-replayed-{failed}").inner_text(),
            20,
            "the row marked replayed",
        )
        meta = wait_until(
            lambda: client.get(f"celery-task-meta-{new_id}"), 60, "the replayed task's result"
        )
        assert json.loads(meta)["status"] in ("FAILURE", "RETRY", "STARTED", "SUCCESS")

        wait_until(pipeline.fully_committed, 60, "the replay settled")
        page_matches_status(page, env)
        assert not script_errors, script_errors
        screenshot = os.environ.get("KAFCEL_SCREENSHOT")
        if screenshot:
            page.wait_for_timeout(2500)
            page.screenshot(path=str(ROOT / screenshot), full_page=True)
    finally:
        client.delete(f"{name}:broken")
        assert dash.stop(timeout_s=10) == 0, dash.tail()


def test_api_errors_are_json_and_writes_are_same_origin_only(
    stack: DevStack, logs_dir: Path
) -> None:
    """No traceback page: a missing topic is a 503 with one JSON error line."""
    settings = Settings(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        topic=f"missing-{os.getpid()}-{time.time_ns()}",
    )
    from .conftest import base_env

    env = {**base_env(stack), **settings.as_env()}
    dash, url = start_dashboard(env, logs_dir, settings.topic)

    def call(path: str, **kw: Any) -> tuple[int, Any]:
        req = urllib.request.Request(url + path.lstrip("/"), **kw)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        code, doc = call("/api/status")
        assert code == 503 and "does not exist" in doc["error"]
        code, doc = call("/api/dlq?since=yesterday-ish")
        assert code == 400 and "not a time" in doc["error"]
        code, doc = call("/api/nope")
        assert code == 404
        body = json.dumps({"records": [{"partition": 0, "offset": 0}]}).encode()
        code, doc = call("/api/dlq/replay", data=body, method="POST")  # no JSON type
        assert code == 415
        code, doc = call(
            "/api/dlq/replay",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Origin": "http://evil.example"},
        )
        assert code == 403 and "cross-origin" in doc["error"]
        code, doc = call("/api/status", headers={"Host": "evil.example"})
        assert code == 403
        code, doc = call(
            "/api/dlq/replay",
            data=b'{"records": [{"partition": "x"}]}',
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        assert code == 400 and "not a record position" in doc["error"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            html = resp.read().decode()
        assert 'data-testid="lag-total"' in html and "http" not in html.split("<script>")[1]
    finally:
        assert dash.stop(timeout_s=10) == 0, dash.tail()


def test_beyond_loopback_replay_needs_the_token_and_no_token_refuses_to_start(
    stack: DevStack, logs_dir: Path
) -> None:
    """Listening on every address, anyone who reaches the page could replay dead letters:
    without a token the dashboard does not start there; with one, a write must carry it
    (reads stay open), and the token never shows in its output."""
    from .conftest import base_env

    token = "s3cret-" + os.urandom(8).hex()
    env = {**base_env(stack), "KAFCEL_TOPIC": f"tok-{os.getpid()}-{time.time_ns()}"}
    (port,) = free_ports(1)
    refused = subprocess.run(
        [KAFCEL, "dashboard", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "KAFCEL_DASHBOARD_TOKEN" in refused.stderr
    proc = ManagedProcess(
        name="kafcel dashboard",
        argv=[KAFCEL, "dashboard", "--host", "0.0.0.0", "--port", str(port)],
        env={**env, "KAFCEL_DASHBOARD_TOKEN": token},
        log_path=logs_dir / f"token-{port}-dashboard.log",
        cwd=ROOT,
    ).start()
    proc.wait_for_log("kafcel dashboard: http://", timeout_s=30)
    url = f"http://127.0.0.1:{port}/api/dlq/replay"
    body = b'{"records": [{"partition": "x"}]}'

    def post(**headers: str) -> int:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert post() == 401
        assert post(Authorization="Bearer wrong") == 401
        assert post(Authorization=f"Bearer {token}") == 400  # past the token: a bad record
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200  # reading needs no token
    finally:
        assert proc.stop(timeout_s=10) == 0, proc.tail()
    assert token not in proc.log_path.read_text()
