"""Render the configuration table of README.md from Settings.

``python -m pipeline.commands.config_doc`` prints it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import SecretStr

from pipeline.config import Settings

HEADER = "| variable | flag | default | meaning |\n|---|---|---|---|\n"


def default_text(name: str) -> str:
    field = Settings.model_fields[name]
    if name == "geoip_city_db":
        return "bundled demo GeoLite2-City (2018)"
    if name == "trusted_proxies":
        return "loopback, RFC 1918, RFC 4193, link-local"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, SecretStr):
        return ""
    if isinstance(value, list):
        return ",".join(value)
    return str(getattr(value, "value", value))


def table() -> str:
    rows = [
        f"| `GRAYSCOPE_{name.upper()}` | `--{name.replace('_', '-')}` | `{default_text(name)}` "
        f"| {field.description} |"
        for name, field in Settings.model_fields.items()
    ]
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    updated = re.sub(
        r"\| variable \| flag \| default \| meaning \|\n\|---\|---\|---\|---\|\n(?:\|.*\|\n)*",
        lambda _: table(),
        text,
        count=1,
    )
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
