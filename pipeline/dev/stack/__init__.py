"""The real local services as plain processes: development tooling, not needed by a worker.

- :mod:`.process` — :class:`~pipeline.dev.stack.process.ManagedProcess`, the one
  managed-process helper (free port, log file, readiness probe, stop/kill/restart).
- :mod:`.fetch` — Java services' jars resolved with Maven into the grayscope cache.
- :mod:`.kafka` — Apache Kafka (KRaft) nodes, and Kafka client helpers for tests.
- :mod:`.opensearch` — OpenSearch 2.19 nodes.
- :mod:`.stack` — ``grayscope stack`` (its ``SERVICES`` list is where services plug in);
  :mod:`.command` — its command line.
"""
