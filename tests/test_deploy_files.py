"""Dockerfile and docker-compose.yml, checked without a Docker engine.

The compose file is read with PyYAML and its settings are held against the
config file it mounts: the database URL the gateway gets must name the `db`
service with its credentials, the published ports must be the ones the config
binds, and every path either file references must exist in the repository.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.cli import main
from gateway.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
APP = PurePosixPath("/app")  # the image's WORKDIR
#: what a user puts in .env; compose refuses to start without the `:?` ones
USER_ENV = {"SOULGATE_ADMIN_TOKEN": "admin-token-from-dotenv"}

_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


def compose_interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's own ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` substitution."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose would refuse: ${{{name}}} is not set ({arg})")
    return _COMPOSE_VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def gateway_service(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["gateway"]


@pytest.fixture(scope="module")
def container_env(gateway_service: dict[str, Any]) -> dict[str, str]:
    """The environment the gateway process sees (from `environment:`; .env holds USER_ENV)."""
    env = gateway_service["environment"]
    assert isinstance(env, dict), "use the mapping form of environment:"
    return {k: compose_interpolate(str(v), USER_ENV) for k, v in env.items()}


def host_path(source: str) -> Path:
    assert source.startswith("./"), f"bind mounts are relative to the repo: {source}"
    return REPO / source[2:]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host source, for bind mounts and named volumes."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        out[target] = source
    return out


@pytest.fixture(scope="module")
def docker_config_path(container_env: dict[str, str], gateway_service: dict[str, Any]) -> Path:
    """The config file the container reads, found on the host through its mount."""
    inside = PurePosixPath(container_env["SOULGATE_CONFIG"])
    for target, source in mounts(gateway_service).items():
        if inside.is_relative_to(target):
            path = host_path(source) / inside.relative_to(target)
            assert path.is_file(), f"SOULGATE_CONFIG={inside} is {path}, which does not exist"
            return path
    raise AssertionError(f"SOULGATE_CONFIG={inside} is not inside any mounted folder")


@pytest.fixture(scope="module")
def docker_config(docker_config_path: Path, container_env: dict[str, str]) -> Config:
    # Only the container's environment: a ${VAR} it does not set makes this raise.
    return load_config(docker_config_path, env=container_env)


# -- docker-compose.yml --------------------------------------------------------------------------


def test_db_is_postgres_with_pgvector_healthchecked_on_a_volume(compose: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    assert db["image"] == "pgvector/pgvector:pg16"
    test = " ".join(db["healthcheck"]["test"])
    assert "pg_isready" in test
    assert f"-U {db['environment']['POSTGRES_USER']}" in test
    data_volume = mounts(db)["/var/lib/postgresql/data"]
    assert data_volume in compose["volumes"], "the data lives in a named volume"
    assert "ports" not in db, "the database is not published on the host"


def test_gateway_waits_for_a_healthy_db_and_is_built_here(gateway_service: dict[str, Any]) -> None:
    assert gateway_service["depends_on"]["db"]["condition"] == "service_healthy"
    assert (REPO / gateway_service["build"] / "Dockerfile").is_file()
    assert gateway_service.get("command", ["run"]) == ["run"]


def test_database_url_names_the_db_service_and_its_credentials(
    compose: dict[str, Any], docker_config: Config
) -> None:
    db_env = {k: compose_interpolate(str(v), USER_ENV) for k, v in compose["services"]["db"]["environment"].items()}
    url = urlsplit(docker_config.database.url.get_secret_value())
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "db" and (url.port or 5432) == 5432
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"]
    assert url.path == f"/{db_env['POSTGRES_DB']}"


def test_admin_token_comes_from_the_environment(docker_config: Config, docker_config_path: Path) -> None:
    assert docker_config.admin.token.get_secret_value() == USER_ENV["SOULGATE_ADMIN_TOKEN"]
    assert "${" in tomllib.loads(docker_config_path.read_text(encoding="utf-8"))["admin"]["token"]


def test_without_the_admin_token_compose_refuses(gateway_service: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="SOULGATE_ADMIN_TOKEN"):
        compose_interpolate(str(gateway_service["environment"]["SOULGATE_ADMIN_TOKEN"]), {})


def _ports(service: dict[str, Any]) -> list[tuple[str | None, int]]:
    """(host ip or None for all, container port), with compose variables at their defaults."""
    out = []
    for entry in service["ports"]:
        parts = compose_interpolate(str(entry), {}).split(":")
        ip = parts[0] if len(parts) == 3 else None
        out.append((ip, int(parts[-1])))
    return out


def test_published_ports_match_the_config(
    compose: dict[str, Any], gateway_service: dict[str, Any], docker_config: Config
) -> None:
    # The proxy publishes the ports, so `--scale gateway=N` never clashes on a host port.
    assert "ports" not in gateway_service, "replicas must not bind host ports (compose --scale)"
    assert {int(p) for p in gateway_service["expose"]} == {docker_config.admin.port, docker_config.http.port}
    proxy = compose["services"]["proxy"]
    ports = dict((port, ip) for ip, port in _ports(proxy))
    assert ports.get(docker_config.admin.port) == "127.0.0.1", "admin is published on the host's loopback only"
    assert docker_config.http.port in ports, "the public webhook port is published"
    # inside the container the listeners must accept connections from the published port
    assert docker_config.admin.host == "0.0.0.0" and docker_config.http.host == "0.0.0.0"
    probe = " ".join(gateway_service["healthcheck"]["test"])
    assert f"127.0.0.1:{docker_config.admin.port}/healthz" in probe


def test_config_and_soul_folders_are_mounted_from_the_repo(
    gateway_service: dict[str, Any], docker_config: Config, docker_config_path: Path
) -> None:
    bound = mounts(gateway_service)
    for target, source in bound.items():
        assert host_path(source).is_dir(), f"{source} (mounted at {target}) is not a folder in the repo"
    assert bound[str(APP / "config")] == "./config"
    soul = docker_config.resolve(docker_config.agents.soul_dir).resolve()
    assert bound[str(APP / soul.relative_to(REPO).as_posix())] == "./soul"
    assert docker_config_path.parent == REPO / "config"


def test_the_docker_config_passes_check(
    container_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in container_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOULGATE_CONFIG", str(REPO / "config" / Path(container_env["SOULGATE_CONFIG"]).name))
    assert main(["check"]) == 0, capsys.readouterr().err


# -- Dockerfile ------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def _args(value: str) -> list[str]:
    return list(json.loads(value)) if value.startswith("[") else shlex.split(value)


def test_dockerfile_base_user_and_entrypoint() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    entry = _args(next(a for i, a in reversed(steps) if i == "ENTRYPOINT"))
    cmd = _args(next(a for i, a in reversed(steps) if i == "CMD"))
    assert entry + cmd == ["soulgate", "run"]
    assert ("WORKDIR", str(APP)) in steps
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in env
    default_config = re.search(r"SOULGATE_CONFIG=(\S+)", env)
    assert default_config and (REPO / PurePosixPath(default_config.group(1)).relative_to(APP)).is_file()


def test_dockerfile_installs_with_the_constraints_file() -> None:
    runs = " ".join(a for i, a in dockerfile() if i == "RUN")
    assert "pip install -c constraints.txt ." in runs


def test_dockerfile_copies_files_that_exist_and_every_package() -> None:
    steps = dockerfile()
    ignored = {
        line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied: set[str] = set()
    for instruction, args in steps:
        if instruction != "COPY":
            continue
        *sources, _dest = _args(args)
        for source in sources:
            assert not source.startswith("--"), "no COPY --from/--chown surprises"
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
            copied.add(source)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]} <= copied
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        if (REPO / package / "__init__.py").exists():
            assert package in copied, f"package {package} is installed by pyproject but not copied"


def test_dockerfile_volumes_and_ports_match_compose(gateway_service: dict[str, Any]) -> None:
    steps = dockerfile()
    volumes = {v for i, a in steps if i == "VOLUME" for v in _args(a)}
    assert volumes == set(mounts(gateway_service)), "the image's volumes are what compose mounts"
    exposed = {int(p) for i, a in steps if i == "EXPOSE" for p in a.split()}
    assert {int(p) for p in gateway_service["expose"]} == exposed


def test_proxy_forwards_both_ports_to_every_replica(compose: dict[str, Any], docker_config: Config) -> None:
    proxy = compose["services"]["proxy"]
    conf_mount = next(m for m in proxy["volumes"] if "nginx.conf" in m)
    conf = (REPO / conf_mount.split(":")[0].removeprefix("./")).read_text()
    assert "resolver 127.0.0.11" in conf, "re-resolve the service name so new replicas are used"
    for port in (docker_config.admin.port, docker_config.http.port):
        assert f"listen {port};" in conf and f"proxy_pass http://$gateway:{port};" in conf
