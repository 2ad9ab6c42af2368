"""grayscope core: parse, extract, enrich, build documents and spans.

The pure parts of this package import no Kafka, Faust, HTTP or gRPC client;
the I/O parts live in :mod:`pipeline.sinks`, :mod:`pipeline.config` and
:mod:`pipeline.commands.main`.
"""
