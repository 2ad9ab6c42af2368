"""OTLP span sink: ``encode`` (pure SpanData -> protobuf) and ``exporter`` (I/O)."""

from pipeline.core.otlp_wire import encode_spans, to_bytes
from pipeline.sinks.otlp.exporter import OtlpExporter, OtlpStats

__all__ = ["OtlpExporter", "OtlpStats", "encode_spans", "to_bytes"]
