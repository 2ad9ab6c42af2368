"""Which aggregates partition a path group lives on (pure, stable across processes).

The worker sets the partition explicitly instead of leaving it to the
producer's partitioner, so the verdict side can tell from a table key alone
whether this worker owns it (standby copies of other workers' partitions
live in the same table and must not be judged twice).
"""

from __future__ import annotations

import zlib


def partition_for(path_group: str, partitions: int) -> int:
    return zlib.crc32(path_group.encode("utf-8", "surrogatepass")) % partitions
