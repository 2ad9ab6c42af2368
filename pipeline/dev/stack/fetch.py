"""Java services from Maven Central, resolved once into the grayscope cache.

Each Java service keeps a small pom as package data
(``pipeline/dev/stack/recipes/<service>/pom.xml``); :func:`resolve_jars` runs
``mvn -q dependency:copy-dependencies`` on it into
``<cache>/<service>-<version>/lib`` and skips that when the folder is complete
(a marker file is written last, so an interrupted download is redone). Maven's
own repository (``~/.m2`` unless ``MAVEN_OPTS`` says otherwise) keeps the
downloaded artifacts too; a second resolve fetches nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.errors import ServiceError

log = logging.getLogger(__name__)

RECIPES = Path(__file__).parent / "recipes"
_MARKER = ".complete"


def recipe_pom(service: str) -> Path:
    return RECIPES / service / "pom.xml"


def pom_property(service: str, name: str) -> str:
    """A <properties> value of the service's pom (e.g. its version)."""
    text = recipe_pom(service).read_text()
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", text)
    if match is None:
        raise ServiceError(f"{recipe_pom(service)} has no <{name}> property")
    return match.group(1).strip()


def java_binary(java_home: str | None = None) -> str:
    """The java launcher: JAVA_HOME's when given, else the one on PATH."""
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise ServiceError("no `java` on PATH: the local stack needs a Java 17 runtime")
    return found


def resolve_jars(service: str, version: str, cache_dir: Path) -> Path:
    """The lib folder with every jar the service needs; downloads it the first time."""
    home = cache_dir / f"{service}-{version}"
    lib = home / "lib"
    if (lib / _MARKER).exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(f"no `mvn` on PATH: needed once to fetch the {service} jars")
    home.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s %s jars into %s (first run only)", service, version, lib)
    # Into a fresh folder next to lib, renamed at the end: a half-copied lib is
    # never taken for a complete one.
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=home))
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(recipe_pom(service)),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ))
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (result.stdout + result.stderr)[-3000:]
        raise ServiceError(f"fetching the {service} jars failed ({' '.join(argv)}):\n{tail}")
    (staging / _MARKER).write_text(version + "\n")
    if lib.exists():
        shutil.rmtree(lib)
    staging.rename(lib)
    return lib
