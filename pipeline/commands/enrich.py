"""``grayscope enrich``: raw message values on stdin -> enriched documents on stdout.

One document (JSON) per accepted line, in input order; one dead-letter record
(JSON: reason, detail, raw) per rejected line to ``--dlq PATH`` (default:
stderr). Never crashes on bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO

import orjson

from pipeline.config import Settings, enrich_context
from pipeline.core.process import Enriched, process
from pipeline.errors import ConfigError
from pipeline.geoip import GeoIPResolver

EXIT_OK = 0


def _open_geoip(settings: Settings) -> GeoIPResolver | None:
    if not settings.geoip_city_db and not settings.geoip_asn_db:
        return None
    return GeoIPResolver.from_settings(settings.geoip)


def run_enrich(args: argparse.Namespace, settings: Settings) -> int:
    geoip = _open_geoip(settings)
    ctx = enrich_context(settings, geoip)
    out = sys.stdout.buffer
    try:
        dlq: IO[bytes] = open(args.dlq, "wb") if args.dlq else sys.stderr.buffer  # noqa: SIM115
    except OSError as exc:
        raise ConfigError("--dlq", f"cannot write {args.dlq}: {exc.strerror}") from exc
    dumps = orjson.dumps
    try:
        for line in sys.stdin.buffer:
            raw = line.rstrip(b"\r\n")
            result = process(raw, ctx)  # a blank line is dead-lettered as "empty", not skipped
            if isinstance(result, Enriched):
                out.write(result.source + b"\n")
            else:
                dlq.write(dumps(result.to_json_dict()) + b"\n")
    except BrokenPipeError:  # `grayscope enrich | head` is fine
        return EXIT_OK
    finally:
        out.flush()
        dlq.flush()
        if args.dlq:
            dlq.close()
    return EXIT_OK
