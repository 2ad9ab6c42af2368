"""Suite-wide: never test a stale compiled core (pipeline/native.py); the longest files
first (for the parallel test workers of `make test`)."""

from __future__ import annotations

import pytest

from pipeline.native import stale_modules


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expected_seconds(n): a file's rough wall time on a quiet 2-core box, "
        "so the test workers take the longest files first",
    )
    stale = stale_modules()
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(stale)}; "
            "run `make native` (or `make clean-native` for plain Python)"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, each file's tests in their own order.

    `make test` runs the suite on pytest-xdist workers with ``--dist loadfile
    --no-loadscope-reorder``: a file goes whole to one worker (its module fixtures,
    such as the dedicated OpenSearch nodes or the three-broker cluster, start once),
    in collection order. Handing out the longest files first keeps the workers
    finishing together (longest-processing-time-first). A file declares its rough
    wall time with ``pytestmark = pytest.mark.expected_seconds(n)``; files without
    one (fast ones) keep their place after them.
    """

    def expected_seconds(item: pytest.Item) -> float:
        module = item.getparent(pytest.Module)
        marker = module.get_closest_marker("expected_seconds") if module else None
        return float(marker.args[0]) if marker else 0.0

    weights = {item.nodeid: expected_seconds(item) for item in items}
    items.sort(key=lambda item: -weights[item.nodeid])  # stable: ties keep their order
