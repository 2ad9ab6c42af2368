"""``bench/e2e.py``'s table: a partial run (``--only-rounds``) prints the rows it has."""

from __future__ import annotations

from bench.e2e import table

RUN = {
    "events": 200_000,
    "python": {
        "version": "3.11.2",
        "executable": "/usr/bin/python3.11",
        "libpython": "static",
        "compiled_core": "24/24",
    },
    "cpu": "Test CPU",
}
WORKER = {
    "events_per_s": 25_000,
    "peak_rss_mb": 180,
    "cpu_us_per_event": 31.5,
    "main_thread_cpu_us_per_event": 27.3,
    "spans_exported": 200_000,
    "spans_dropped": 0,
    "runs": [24_000, 25_000],
    "vs_raw": 0.2,
}


def test_the_rounds_alone_are_a_table_not_json() -> None:
    rounds = {
        **RUN,
        "a_raw_ceiling": 125_000,
        "a_raw_ceiling_runs": [120_000, 125_000],
        "b_batch_path": {**WORKER, "geoip_hit_ratio": 0.99},
        "c_full_null_store": WORKER,
    }
    out = table(rounds)
    assert not out.lstrip().startswith("{")
    assert "a. raw ceiling" in out and "125,000" in out
    assert "c. full worker -> instant bulk ack + OTLP" in out and "0.20" in out
    assert "full path CPU: 31.5 µs/event" in out
    assert "CPU: Test CPU" in out


def test_a_run_without_the_raw_ceiling_shows_no_ratio() -> None:
    out = table({**RUN, "c_full_null_store": {k: v for k, v in WORKER.items() if k != "vs_raw"}})
    row = next(line for line in out.splitlines() if line.startswith("c. full worker"))
    assert "25,000       -  RSS 180 MB" in row
