"""OTLP span sink: the exporter (I/O). Spans arrive encoded (``pipeline.core.otlp``)."""

from pipeline.sinks.otlp.exporter import OtlpExporter, OtlpStats

__all__ = ["OtlpExporter", "OtlpStats"]
