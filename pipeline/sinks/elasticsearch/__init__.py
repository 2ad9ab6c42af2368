"""Elasticsearch/OpenSearch sink, in three parts (like Vector's elasticsearch sink).

- ``request``: where a document goes and the NDJSON bulk body (pure);
- ``classify``: what each bulk result means — done, retry, reject, fatal (pure);
- ``service``: the HTTP client (``ElasticsearchService``; imported from its
  module so the pure parts never load the HTTP stack);
- ``sink``: the delivery loop (``ElasticsearchSink.deliver``).
"""

from pipeline.sinks.elasticsearch.classify import BulkResult, Outcome, RequestOutcome
from pipeline.core.bulk import BulkItem, build_bulk_body, build_item, target_for
from pipeline.sinks.elasticsearch.sink import ElasticsearchSink, EsSinkStats

__all__ = [
    "BulkItem",
    "BulkResult",
    "ElasticsearchSink",
    "EsSinkStats",
    "Outcome",
    "RequestOutcome",
    "build_bulk_body",
    "build_item",
    "target_for",
]
