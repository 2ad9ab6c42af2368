"""The compose stack, Dockerfile and collector config agree with each other and with Settings.

No Docker here: the files are parsed and cross-checked, so a renamed setting,
a missing config file or a pipeline naming an undefined exporter fails in CI
instead of at `docker compose up`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.config import Settings, load_settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR = ROOT / "deploy" / "otel-collector.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Settings requested from pipeline/config.py for `grayscope kibana import`;
# the compose file already uses them. Drop this once config.py has them.

INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?(?P<op>[-?+])(?P<arg>[^}]*))?\}")
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def interpolate(value: str) -> str:
    """Compose-style ${VAR:-default} with an empty environment; $$ is a literal $."""
    escaped = value.replace("$$", "\0")

    def sub(match: re.Match[str]) -> str:
        if match.group("op") == "-":
            return match.group("arg") or ""
        return ""

    return INTERPOLATION.sub(sub, escaped).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    data = yaml.safe_load(COLLECTOR.read_text())
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def grayscope_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image") == "grayscope:local"}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for spec in service.get("volumes") or []:
        parts = spec.split(":")
        mounts.append((parts[0], parts[1]))
    return mounts


def published_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports") or []}


# --------------------------------------------------------------------------
# compose file
# --------------------------------------------------------------------------


def test_compose_has_the_stack(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "kafka",
        "elasticsearch",
        "es-setup",
        "kibana",
        "otel-collector",
        "jaeger",
        "grayscope-setup",
        "worker",
        "kibana-objects",
        "traffic",
        "geoipupdate",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert expected <= set(services)


def test_referenced_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for source, _ in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, _ in volume_mounts(service):
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_depends_on_targets_exist_with_valid_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in DEPENDS_CONDITIONS, (name, target, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            # A dependency that only exists under a profile would break plain `up`.
            assert not services[target].get("profiles"), (name, target)


def test_grayscope_env_names_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in services.items():
        for key in environment(service):
            if key.startswith("GRAYSCOPE_"):
                field = key.removeprefix("GRAYSCOPE_").lower()
                assert field in fields, f"{name}: {key}"
                seen.add(field)
    assert {"kafka_brokers", "es_url", "otlp_endpoint", "geoip_city_db"} <= seen


def test_grayscope_env_values_validate(services: dict[str, dict[str, Any]]) -> None:
    for service in grayscope_services(services).values():
        values = {
            key.removeprefix("GRAYSCOPE_").lower(): value
            for key, value in environment(service).items()
            if key.startswith("GRAYSCOPE_")
        }
        values = {k: v for k, v in values.items() if k in Settings.model_fields}
        load_settings(**values)  # raises ConfigError naming the bad variable


def test_grayscope_services_use_the_repo_image(services: dict[str, dict[str, Any]]) -> None:
    ours = grayscope_services(services)
    assert {"grayscope-setup", "worker", "kibana-objects", "traffic"} <= set(ours)
    for name, service in ours.items():
        assert service["build"]["context"] == ".", name
        assert isinstance(service["command"], list), name
    assert services["worker"]["command"] == ["worker"]
    assert services["grayscope-setup"]["command"] == ["setup"]
    assert services["kibana-objects"]["command"] == ["kibana", "import"]
    traffic = services["traffic"]
    assert traffic["profiles"] == ["traffic"]
    assert traffic["command"][:1] == ["produce"] and "--synthetic" in traffic["command"]
    assert traffic["command"][traffic["command"].index("--rate") + 1] == "200"


def test_worker_waits_for_setup_and_healthy_backends(services: dict[str, dict[str, Any]]) -> None:
    deps = depends_on(services["worker"])
    assert deps["grayscope-setup"] == "service_completed_successfully"
    assert deps["kafka"] == "service_healthy"
    assert deps["elasticsearch"] == "service_healthy"
    assert "otel-collector" in deps
    setup = depends_on(services["grayscope-setup"])
    assert setup["kafka"] == setup["elasticsearch"] == "service_healthy"


def test_worker_endpoints_point_at_compose_services(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["worker"])
    kafka_env = environment(services["kafka"])

    host, port = env["GRAYSCOPE_KAFKA_BROKERS"].split(":")
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(listener.endswith(f"//{host}:{port}") for listener in advertised)
    assert host in services

    es = urlsplit(env["GRAYSCOPE_ES_URL"])
    assert es.hostname == "elasticsearch" and es.port == 9200
    assert env["GRAYSCOPE_ES_PASSWORD"], "ES password must default to something for local use"

    otlp = urlsplit(env["GRAYSCOPE_OTLP_ENDPOINT"])
    assert otlp.hostname == "otel-collector" and otlp.port == 4317


def test_elasticsearch_security_and_kibana_system(services: dict[str, dict[str, Any]]) -> None:
    es = environment(services["elasticsearch"])
    assert es["xpack.security.enabled"] == "true"
    assert es["discovery.type"] == "single-node"
    assert services["elasticsearch"]["environment"]["ELASTIC_PASSWORD"].startswith(
        "${ELASTIC_PASSWORD:-"
    )
    kibana = services["kibana"]
    assert kibana["environment"]["ELASTICSEARCH_USERNAME"] == "kibana_system"
    assert kibana["environment"]["ELASTICSEARCH_PASSWORD"].startswith("${KIBANA_PASSWORD:-")
    assert depends_on(kibana)["es-setup"] == "service_completed_successfully"
    setup_script = " ".join(services["es-setup"]["command"])
    assert "/_security/user/kibana_system/_password" in setup_script


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    """Password-like values are ${VAR:-default}, never only literals; no ${VAR:?}
    (that would break `docker compose up` for everyone without a .env)."""
    text = COMPOSE.read_text()
    assert ":?" not in text
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|LICENSE_KEY|API_KEY|ENCRYPTIONKEY", key):
                assert str(value).startswith("${"), f"{name}: {key} is a literal"


def test_geoip_volume_is_shared_at_the_city_db_path(services: dict[str, dict[str, Any]]) -> None:
    city_db = environment(services["worker"])["GRAYSCOPE_GEOIP_CITY_DB"]
    directory = str(Path(city_db).parent)
    worker_mounts = dict(volume_mounts(services["worker"]))
    geoip = services["geoipupdate"]
    assert geoip["profiles"] == ["geoip"]
    updater_mounts = dict(volume_mounts(geoip))
    shared = [v for v, target in worker_mounts.items() if target == directory]
    assert shared, f"nothing mounted at {directory} in the worker"
    assert updater_mounts.get(shared[0]) == environment(geoip)["GEOIPUPDATE_DB_DIR"] == directory
    assert "GeoLite2-City" in environment(geoip)["GEOIPUPDATE_EDITION_IDS"]
    for key in ("GEOIPUPDATE_ACCOUNT_ID", "GEOIPUPDATE_LICENSE_KEY"):
        assert geoip["environment"][key].startswith(f"${{{key}")
    # The image seeds the volume with the demo database at exactly that path.
    assert city_db in DOCKERFILE.read_text()


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    assert 9092 in published_ports(services["kafka"])
    assert 9200 in published_ports(services["elasticsearch"])
    assert 5601 in published_ports(services["kibana"])
    assert 16686 in published_ports(services["jaeger"])
    assert {4317, 4318} <= published_ports(services["otel-collector"])


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert 'ENTRYPOINT ["grayscope"]' in text
    assert 'CMD ["worker"]' in text
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the image should not run as root"
    for match in re.finditer(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / match.group(1)).exists(), match.group(1)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("pyproject.toml", "README.md", "pipeline", "agents", "schemas", "kibana"):
        assert needed not in ignored


# --------------------------------------------------------------------------
# OpenTelemetry Collector config
# --------------------------------------------------------------------------


def test_collector_mounts_its_config(services: dict[str, dict[str, Any]]) -> None:
    service = services["otel-collector"]
    mounts = dict(volume_mounts(service))
    target = mounts["./deploy/otel-collector.yaml"]
    assert f"--config={target}" in service["command"]


def test_collector_pipelines_reference_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert "traces" in pipelines
    for pipeline_name, pipeline in pipelines.items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), pipeline_name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                assert component in (collector.get(kind) or {}), f"{pipeline_name}: {component}"
    for extension in collector["service"].get("extensions") or []:
        assert extension in collector["extensions"]


def test_collector_receives_otlp_and_exports_to_jaeger(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    traces = collector["service"]["pipelines"]["traces"]
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert traces["processors"][-1] == "batch"
    (exporter,) = traces["exporters"]
    assert exporter.split("/")[0] == "otlp"
    host, port = collector["exporters"][exporter]["endpoint"].split(":")
    assert host == "jaeger" and host in services and port == "4317"
    assert environment(services["jaeger"]).get("COLLECTOR_OTLP_ENABLED") == "true"


def test_interpolate() -> None:
    assert interpolate("${A:-x}") == "x"
    assert interpolate("${A-}") == ""
    assert interpolate("${A}") == ""
    assert interpolate("pre $${A} ${B:--Xms1g}") == "pre ${A} -Xms1g"


# --------------------------------------------------------------------------
# Prometheus, Alertmanager, Grafana (deploy/prometheus, deploy/grafana)
# --------------------------------------------------------------------------

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"


def mounted(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> repo-relative source of a service's bind mounts."""
    return {
        target: source.removeprefix("./")
        for source, target in volume_mounts(service)
        if source.startswith("./")
    }


def test_prometheus_scrapes_the_worker_with_the_rules_and_alertmanager(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    mounts = mounted(prometheus)
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert mounts[config_path] == "deploy/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / mounts[config_path]).read_text())
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == "deploy/prometheus/grayscope-rules.yml"
    worker_port = int(environment(services["worker"]).get("GRAYSCOPE_WEB_PORT", "6066"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert f"worker:{worker_port}" in targets
    assert worker_port in published_ports(services["worker"])
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    (target,) = alertmanagers["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and int(port) in published_ports(services[host])
    assert depends_on(prometheus).keys() >= {"worker", "alertmanager"}


def test_alertmanager_config_is_mounted(services: dict[str, dict[str, Any]]) -> None:
    alertmanager = services["alertmanager"]
    config_arg = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    source = mounted(alertmanager)[config_arg.split("=", 1)[1]]
    config = yaml.safe_load((ROOT / source).read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers


def test_grafana_provisions_the_data_source_and_the_board(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    mounts = mounted(grafana)
    assert mounts["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus"
    assert url.hostname in services and url.port in published_ports(services[url.hostname])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "grayscope.yml").read_text())[
        "providers"
    ]
    board_dir = provider["options"]["path"]
    assert mounts[board_dir] == "deploy/grafana/dashboards"
    boards = list((ROOT / mounts[board_dir]).glob("*.json"))
    assert boards
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (
        home.startswith(board_dir + "/")
        and (ROOT / mounts[board_dir] / home.removeprefix(board_dir + "/")).is_file()
    )
    assert "prometheus" in depends_on(grafana)


def test_monitoring_ports(services: dict[str, dict[str, Any]]) -> None:
    assert 9090 in published_ports(services["prometheus"])
    assert 9093 in published_ports(services["alertmanager"])
    assert 3000 in published_ports(services["grafana"])
