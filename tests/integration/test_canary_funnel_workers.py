"""A funnel's rollback across workers: two real ``grayscope worker`` processes in one
consumer group, two canary partitions (one each). The funnel's owner rolls back the
carrier whose partition the other worker owns, through a control record that makes it
sticky in that carrier's state there; after both restart it still says rollback (the
state's changelog), and the mark sent again changes nothing."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipeline.canary.engine import FUNNEL_PREFIX, funnel_reason_head
from pipeline.canary.records import Verdict
from pipeline.canary.routing import partition_for
from pipeline.dev.stack.opensearch import OpenSearchNode
from pipeline.errors import ServiceError
from schemas import VERDICTS_INDEX
from tests.integration.conftest import ReadRecords, unique_name
from tests.integration.ledger import wait_until
from tests.integration.test_worker import base_env
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.expected_seconds(30)

PARTITIONS = 2
STARTUP = 90.0  # guards against hangs on the shared 2-core box, never asserted on
VERDICT = "grayscope_canary_verdict"
PREFIX = "grayscope_canary_funnel_"  # the funnel counters' metrics


def names(tag: str) -> tuple[str, str, str, str]:
    """(funnel, entry path group, carrier elsewhere, bystander): the funnel and its entry
    step on one partition, its second step's path group on the other."""
    funnel = f"{tag}-checkout"
    home = partition_for(FUNNEL_PREFIX + funnel, PARTITIONS)
    entry = next(g for i in range(64) if partition_for(g := f"/{tag}/view{i}", PARTITIONS) == home)
    buy = next(g for i in range(64) if partition_for(g := f"/{tag}/buy{i}", PARTITIONS) != home)
    return funnel, entry, buy, f"/{tag}/about"


def line(at: float, client: str, method: str, path: str, stage: str) -> bytes:
    return orjson.dumps(
        {
            "msec": f"{at:.3f}",
            "remote_addr": client,
            "request_method": method,
            "request_uri": path,
            "status": "200",
            "request_time": "0.050",
            "body_bytes_sent": "100",
            "http_x_go_stage": "canary" if stage == "canary" else "",
        }
    )


# Funnel hits in ``funnel_traffic``: 200 entries, 25 + 75 purchases.
FUNNEL_HITS = 300


def funnel_traffic(entry: str, buy: str) -> list[bytes]:
    """Three minutes ago, 100 canary users of whom 25 buy and 100 stable users of whom 75
    do (the regression only the funnel sees)."""
    t0 = time.time() - 180
    out: list[bytes] = []
    for arm, arm_id, buying in (("canary", 1, 25), ("stable", 2, 75)):
        for i in range(100):
            client = f"10.{arm_id}.0.{i + 1}"
            out.append(line(t0 + i * 0.01, client, "GET", entry, arm))
            if i < buying:
                out.append(line(t0 + 3 + i * 0.01, client, "POST", buy, arm))
    return out


def live_traffic(entry: str, buy: str, bystander: str) -> list[bytes]:
    """Now, identical arms on every path group, none a funnel step (live windows, and a
    stream clock past the users' windows: the timer has the agent judge their strata)."""
    now = time.time()
    out: list[bytes] = []
    for arm, arm_id in (("canary", 1), ("stable", 2)):
        for k, (method, group) in enumerate((("POST", entry), ("GET", buy), ("GET", bystander))):
            for i in range(60):
                client = f"10.{10 + arm_id}.{k}.{i + 1}"
                out.append(line(now + i * 0.01, client, method, group, arm))
    return out


def canary_page(worker: WorkerProcess) -> dict[str, Any]:
    status, body = worker.get("/canary")
    return dict(orjson.loads(body)) if status == 200 else {}


def owned(worker: WorkerProcess) -> set[int]:
    try:
        return set(canary_page(worker).get("owned_partitions") or ())
    except OSError:
        return set()


def verdict(worker: WorkerProcess, group: str) -> dict[str, Any] | None:
    for v in canary_page(worker).get("verdicts") or ():
        if v["gray"]["path_group"] == group:
            return dict(v)
    return None


def decision(worker: WorkerProcess, group: str) -> str | None:
    found = verdict(worker, group)
    return None if found is None else str(found["verdict"]["decision"])


async def start_pair(
    workers: Callable[[dict[str, str]], WorkerProcess], env: dict[str, str]
) -> tuple[WorkerProcess, WorkerProcess]:
    """Two workers of one group, each owning one canary partition."""
    pair = workers(env), workers(env)
    for worker in pair:
        worker.wait_ready(STARTUP)
    await wait_until(
        lambda: sorted(len(owned(w)) for w in pair) == [1, 1] and owned(pair[0]) != owned(pair[1]),
        STARTUP,
        "the canary partitions split between the two workers",
    )
    return pair


def owner_of(pair: tuple[WorkerProcess, WorkerProcess], key: str) -> WorkerProcess:
    partition = partition_for(key, PARTITIONS)
    (worker,) = [w for w in pair if partition in owned(w)]
    return worker


def says_the_funnel(found: dict[str, Any] | None, funnel: str) -> bool:
    reasons = [] if found is None else found["verdict"]["reasons"]
    return any(r.startswith(funnel_reason_head(funnel)) for r in reasons)


@pytest.mark.partitions(PARTITIONS)
async def test_a_funnel_rolls_back_a_carrier_another_worker_owns_and_it_survives_restarts(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    produce_lines: Any,
    read_records: ReadRecords,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    tag = unique_name("fx")
    funnel, entry, buy, bystander = names(tag)
    dlq = await topic_factory(partitions=1, prefix="dlq")
    verdict_topic = f"{tag}-verdicts"
    env = base_env(bootstrap, unique_topic, dlq, store) | {
        "GRAYSCOPE_CANARY_PARTITIONS": str(PARTITIONS),
        "GRAYSCOPE_CANARY_INTERVAL": "0.5",
        "GRAYSCOPE_CANARY_TOPIC": verdict_topic,
        "GRAYSCOPE_CANARY_FUNNELS": orjson.dumps(
            [
                {
                    "name": funnel,
                    "user_key": "client_ip",
                    "window_seconds": 10,
                    "steps": [
                        {"path_group": entry, "method": "GET"},
                        {"path_group": buy, "method": "POST"},
                    ],
                }
            ]
        ).decode(),
    }
    pair = await start_pair(workers, env)
    home, elsewhere = owner_of(pair, FUNNEL_PREFIX + funnel), owner_of(pair, buy)
    assert home is not elsewhere and owner_of(pair, entry) is home
    # The users' hits first, all of them in the funnel owner's state, then the live
    # traffic that moves the stream clock past their windows. At once, a worker that
    # reads live lines first has the funnel's strata judged while the other still
    # publishes the users' hits, which then count as late (the funnel's clock is the
    # owner's; noted as a limitation, not what this test is about). Waiting until the
    # workers had matched the hits was not enough: they publish them up to a second
    # later (the observer's flush), and the owner applies them after that (failed in
    # 2 of 2 fresh-clone CI runs in session 16).
    await produce_lines(unique_topic, funnel_traffic(entry, buy))
    await wait_until(
        lambda: home.metric(f"{PREFIX}hits_applied_total") >= FUNNEL_HITS,
        STARTUP,
        "the users' funnel hits applied by the funnel's owner",
    )
    await produce_lines(unique_topic, live_traffic(entry, buy, bystander))

    try:
        await wait_until(
            lambda: decision(elsewhere, buy) == "rollback", STARTUP, "the carrier's rollback"
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nfunnel owner:\n{home.tail(60)}\ncarrier owner:\n{elsewhere.tail(60)}"
        ) from None
    funnels = {f["name"]: f for f in canary_page(home)["funnels"]}
    assert funnels[funnel]["decision"] == "rollback"
    assert (funnels[funnel]["carried_by"], funnels[funnel]["marked"]) == ([entry], [buy])
    assert decision(home, entry) == "rollback"  # judged by the funnel's owner itself
    carried = verdict(elsewhere, buy)
    assert carried is not None and says_the_funnel(carried, funnel)
    assert carried["verdict"]["rule"] == "rollback: rollout evidence reached 1/alpha (sticky)"
    assert any(f"GET {entry} -> POST {buy}: canary" in r for r in carried["verdict"]["reasons"])
    assert canary_page(elsewhere)["funnels"] == []  # it owns no funnel: the mark did it
    assert elsewhere.metric(f"{PREFIX}carriers_marked_total") == 1
    assert home.metric(f"{PREFIX}carrier_marks_sent_total") >= 1
    # its users' strata were due by the stream's clock only: judged by the funnel's agent
    # on the timer's request, not by the timer itself
    assert home.metric(f"{PREFIX}resolves_sent_total") >= 1
    # every hit was in the state before its stratum was judged
    assert home.metric(f"{PREFIX}late_conversions_total") == 0
    assert home.metric(f"{PREFIX}late_entries_total") == 0
    assert elsewhere.metric(VERDICT, f'decision="rollback",path_group="{buy}"') == 1
    assert not says_the_funnel(verdict(owner_of(pair, bystander), bystander), funnel)
    assert decision(owner_of(pair, bystander), bystander) != "rollback"

    # Where else verdicts show: the verdict topic (keyed by path group) and the store.
    await wait_until(lambda: store_decision(store, carried) == "rollback", 60, "the stored verdict")
    records = await read_records(verdict_topic)
    published = [orjson.loads(r.value) for r in records if r.key.decode() == buy]
    assert published and published[-1]["verdict"]["decision"] == "rollback"
    assert says_the_funnel(published[-1], funnel)

    # Both stop; two new processes recover the states from the changelogs. The carrier
    # says rollback from its recovered state: the marks sent again change nothing.
    for worker in pair:
        assert worker.terminate() == 0
    pair = await start_pair(workers, env)
    await wait_until(
        lambda: decision(owner_of(pair, buy), buy) == "rollback",
        STARTUP,
        "the carrier's rollback after the restart",
    )
    elsewhere = owner_of(pair, buy)
    assert elsewhere is not owner_of(pair, FUNNEL_PREFIX + funnel)
    assert says_the_funnel(verdict(elsewhere, buy), funnel)
    assert elsewhere.metric(VERDICT, f'decision="rollback",path_group="{buy}"') == 1
    await wait_until(
        lambda: sum(w.metric(f"{PREFIX}carrier_marks_unchanged_total") for w in pair) >= 1,
        STARTUP,
        "the funnel owner's mark sent again, and ignored",
    )
    assert sum(w.metric(f"{PREFIX}carriers_marked_total") for w in pair) == 0
    assert decision(owner_of(pair, bystander), bystander) != "rollback"
    for worker in pair:
        assert worker.terminate() == 0


def store_decision(store: OpenSearchNode, found: dict[str, Any]) -> str | None:
    """The decision of the stored document of ``found``'s path group and window."""
    doc_id = urllib.parse.quote(Verdict.from_json(found).doc_id, safe="")
    try:
        store.request("POST", f"/{VERDICTS_INDEX}/_refresh")
        source = store.request("GET", f"/{VERDICTS_INDEX}/_doc/{doc_id}")["_source"]
    except ServiceError:  # not stored yet
        return None
    return str(source["verdict"]["decision"])
