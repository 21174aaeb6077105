"""docker-compose.yml, validated without a Docker engine.

First against the Compose Specification's JSON schema (vendored in compose_schema/, see its
README), then by cross-service checks for mistakes the schema cannot see: a dependency on a
service that does not exist, MLflow and Optuna sharing a database, a bucket the server uses but
nobody creates, a trainer the MLflow server would turn away for its Host header, ...

Each check takes the loaded compose dict and returns a list of problems (empty: fine). Each one
passes on the real file and has a negative test on a broken copy, so none of them passes vacuously.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parent / "compose_schema" / "compose-spec.json"

Compose = dict[str, Any]

# Compose interpolation: `$$` is a literal `$`; `${NAME}`, `${NAME:-x}` and `$NAME` are variables.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>.*)", re.DOTALL)
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://[^\s'\",]+")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


# ---------------------------------------------------------------- helpers


def load_compose(path: Path = COMPOSE_FILE) -> Compose:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def interpolations(text: str) -> Iterator[tuple[str, str | None]]:
    """(variable, its default or None) for every interpolation in `text`; `$$` is skipped."""
    for m in _INTERPOLATION.finditer(text):
        if m["escaped"]:
            continue
        if m["bare"]:
            yield m["bare"], None
            continue
        braced = _BRACED.fullmatch(m["braced"])
        if braced is None or "$" in m["braced"]:  # malformed, or nested (not handled here)
            yield m["braced"], None
        elif braced["op"] in (":-", "-"):
            yield braced["name"], braced["arg"]
        else:
            yield braced["name"], None


def resolve(text: str) -> str:
    """`text` as Compose interpolates it with no variable set: every default taken."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        return next(interpolations(m[0]), ("", None))[1] or ""

    return _INTERPOLATION.sub(one, text)


def walk_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, string) for every string value in the compose tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def argv(service: dict[str, Any], key: str = "command") -> list[str]:
    """A service's command (or entrypoint) as resolved tokens; a string is split like a shell."""
    value = service.get(key) or []
    return shlex.split(resolve(value)) if isinstance(value, str) else [resolve(v) for v in value]


def flag(args: list[str], name: str) -> str | None:
    """Value of `--name=value` or `--name value`; "" for a bare `--name`; None when absent."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            nxt = args[i + 1] if i + 1 < len(args) else ""
            return "" if nxt.startswith("--") else nxt
    return None


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else resolve(str(v)) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """{target: condition}; the short list form means `service_started`."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mlflow_server(compose: Compose) -> tuple[str, dict[str, Any], list[str]]:
    """(name, service, argv) of the one service whose command is `mlflow server`."""
    found = [
        (n, s, argv(s)) for n, s in services(compose).items() if argv(s)[:2] == ["mlflow", "server"]
    ]
    if len(found) != 1:
        raise AssertionError(f"expected one `mlflow server` service, found {[f[0] for f in found]}")
    return found[0]


def database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def volume_sources(service: dict[str, Any]) -> Iterator[str]:
    """Source of each mount: a volume name, or a host path starting with `.`, `/` or `~`."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            yield resolve(str(volume.get("source", "")))
        elif ":" in volume:  # a bare container path is an anonymous volume: no source
            yield resolve(volume).split(":", 1)[0]


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable")


# ---------------------------------------------------------------- checks


def check_schema(compose: Compose) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = validator(schema).iter_errors(compose)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def check_depends_on(compose: Compose) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        for target, condition in depends_on(service).items():
            other = services(compose).get(target)
            if other is None:
                problems.append(f"{name} depends on {target!r}, which is not a service")
            elif condition == "service_healthy" and not has_healthcheck(other):
                problems.append(
                    f"{name} waits for {target} to be healthy, but it has no healthcheck"
                )
            elif condition == "service_completed_successfully" and other.get("restart") != "no":
                problems.append(f"{name} waits for one-shot {target} to exit, but it restarts")
    return problems


def check_named_volumes(compose: Compose) -> list[str]:
    declared = set(compose.get("volumes") or {})
    problems = []
    for name, service in services(compose).items():
        for source in volume_sources(service):
            if source and not source.startswith((".", "/", "~")) and source not in declared:
                problems.append(f"{name} mounts volume {source!r}, not declared under `volumes:`")
    return problems


def check_repo_paths(compose: Compose, root: Path = REPO) -> list[str]:
    """Build contexts, Dockerfiles and bind-mount sources exist in the repository."""
    problems = []
    for name, service in services(compose).items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = root / resolve(build.get("context", "."))
            dockerfile = context / resolve(build.get("dockerfile", "Dockerfile"))
            for what, path in (("build context", context), ("Dockerfile", dockerfile)):
                if not path.exists():
                    problems.append(f"{name}: {what} {path.relative_to(root)} does not exist")
        for source in volume_sources(service):
            if source.startswith(".") and not (root / source).exists():
                problems.append(f"{name}: bind-mount source {source} does not exist")
    return problems


def check_mlflow_server(compose: Compose) -> list[str]:
    name, service, args = mlflow_server(compose)
    problems = []
    required = {
        "--backend-store-uri": lambda v: v.startswith("postgresql"),
        "--artifacts-destination": lambda v: v.startswith("s3://"),
        "--serve-artifacts": lambda v: v is not None,
        # Explicit, and no "*": MLflow's defaults reject the Host header `mlflow:5000`.
        "--allowed-hosts": lambda v: bool(v) and "*" not in v.split(","),
        "--cors-allowed-origins": lambda v: bool(v) and "*" not in v.split(","),
    }
    for option, ok in required.items():
        if flag(args, option) is None or not ok(flag(args, option)):
            problems.append(
                f"{name}: `mlflow server` needs a valid {option} (got {flag(args, option)!r})"
            )
    env = environment(service)
    for var in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not env.get(var):
            problems.append(f"{name}: {var} is needed to reach the S3 artifact store")
    if env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "").lower() != "false":
        problems.append(f"{name}: set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false")
    # Every client must reach this service by name and port, with a Host header it accepts.
    allowed = (flag(args, "--allowed-hosts") or "").split(",")
    port = flag(args, "--port") or "5000"
    for client, other in services(compose).items():
        uri = environment(other).get("MLFLOW_TRACKING_URI")
        if uri is None:
            continue
        parts = urlsplit(uri)
        if (parts.hostname, str(parts.port)) != (name, port):
            problems.append(f"{client}: MLFLOW_TRACKING_URI {uri} is not http://{name}:{port}")
        if not any(fnmatch.fnmatch(parts.netloc, pattern) for pattern in allowed):
            problems.append(f"{client}: Host {parts.netloc!r} is not in {name}'s --allowed-hosts")
    return problems


def check_separate_databases(compose: Compose) -> list[str]:
    """MLflow has one database, Optuna (every other PostgreSQL URL) another; both get created."""
    mlflow_name, _, args = mlflow_server(compose)
    mlflow_db = database(flag(args, "--backend-store-uri") or "")
    optuna_dbs = {
        database(m[0])
        for name, service in services(compose).items()
        if name != mlflow_name
        for _, text in walk_strings(service)
        for m in _URL.finditer(resolve(text))
        if m["scheme"].startswith("postgresql")
    }
    problems = []
    if mlflow_db in optuna_dbs:
        problems.append(f"MLflow and Optuna share the database {mlflow_db!r}")
    if len(optuna_dbs) != 1:
        problems.append(f"Optuna services must agree on one database, found {sorted(optuna_dbs)}")
    created = set()
    for service in services(compose).values():
        if str(service.get("image", "")).startswith("postgres"):
            env = environment(service)
            created |= {env.get("POSTGRES_DB") or env.get("POSTGRES_USER") or "postgres"}
            created |= {value for key, value in env.items() if key.endswith("_DB")}
    for db in sorted(({mlflow_db} | optuna_dbs) - created):
        problems.append(f"database {db!r} is not created by the postgres service")
    return problems


def check_service_urls(compose: Compose) -> list[str]:
    """http(s) and postgresql URLs with a bare host name point at a service of this file."""
    problems = []
    for path, text in walk_strings(services(compose)):
        for m in _URL.finditer(resolve(text)):
            host = urlsplit(m[0]).hostname or ""
            internal = host and "." not in host and host not in _LOOPBACK
            if (
                m["scheme"].startswith(("http", "postgresql"))
                and internal
                and host not in services(compose)
            ):
                problems.append(f"{path}: {m[0]} names host {host!r}, which is not a service")
    return problems


def check_trainer(compose: Compose) -> list[str]:
    trainer = services(compose).get("trainer")
    if trainer is None:
        return ["no `trainer` service"]
    problems = []
    if not trainer.get("shm_size"):
        problems.append(
            "trainer: needs shm_size (DataLoader workers share batches through /dev/shm)"
        )
    if "container_name" in trainer:
        problems.append("trainer: container_name prevents `--scale trainer=N`")
    if any(isinstance(p, dict) or ":" in str(p) for p in trainer.get("ports") or []):
        problems.append("trainer: a fixed host port prevents `--scale trainer=N`")
    env = environment(trainer)
    if not env.get("TRAINWISE_OPTUNA_STORAGE", "").startswith("postgresql"):
        problems.append("trainer: TRAINWISE_OPTUNA_STORAGE must be the shared PostgreSQL storage")
    if "build" not in trainer:
        problems.append("trainer: must be built from the project")
    return problems


def check_healthchecks(compose: Compose) -> list[str]:
    """Long-running services (any restart policy but "no") have a working healthcheck."""
    return [
        f"{name}: long-running service without a healthcheck"
        for name, service in services(compose).items()
        if service.get("restart") != "no" and not has_healthcheck(service)
    ]


def check_bucket(compose: Compose) -> list[str]:
    name, service, args = mlflow_server(compose)
    bucket = urlsplit(flag(args, "--artifacts-destination") or "").netloc
    creators = {
        other_name: m["bucket"]
        for other_name, other in services(compose).items()
        for text in argv(other, "entrypoint") + argv(other)
        for m in re.finditer(r"\bmc\s+mb\s+(?:-\S+\s+)*[\"']?[^/\s]+/(?P<bucket>[^/\s\"']+)", text)
    }
    makers = [n for n, b in creators.items() if b == bucket]
    if not makers:
        return [f"{name} writes to bucket {bucket!r}, but the services create {creators}"]
    if all(depends_on(service).get(m) != "service_completed_successfully" for m in makers):
        return [
            f"{name} must wait (service_completed_successfully) for {makers} to create {bucket!r}"
        ]
    return []


def check_interpolation(compose: Compose) -> list[str]:
    """Every ${VAR} has a default, and one variable has the same default everywhere."""
    problems, defaults = [], {}
    for path, text in walk_strings(compose):
        for var, default in interpolations(text):
            if default is None:
                problems.append(
                    f"{path}: ${{{var}}} has no default; write ${{{var}:-...}} ($$ for a literal $)"
                )
            elif defaults.setdefault(var, default) != default:
                problems.append(
                    f"{path}: {var} defaults to {default!r} here, {defaults[var]!r} elsewhere"
                )
    return problems


def check_loopback_ports(compose: Compose) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip = resolve(str(port.get("host_ip", "")))
            else:
                parts = resolve(str(port)).rsplit(":", 2)
                host_ip = parts[0] if len(parts) == 3 else ""
            if host_ip not in _LOOPBACK:
                problems.append(
                    f"{name}: port {port} is published on all interfaces, not 127.0.0.1"
                )
    return problems


# Every check_* above; test_every_check_has_a_negative_case keeps each one honest.
CHECKS: dict[str, Callable[[Compose], list[str]]] = {
    name: f for name, f in list(globals().items()) if name.startswith("check_")
}


def pin_problems(requirements: str, pyproject: str, packages: tuple[str, ...]) -> list[str]:
    """A server image pins `packages` as the project does, so client and server stay compatible."""
    project = tomllib.loads(pyproject).get("project", {})
    lines = [
        *project.get("dependencies", []),
        *chain(*project.get("optional-dependencies", {}).values()),
    ]
    pinned = {req.name: req.specifier for req in map(Requirement, lines)}
    image = [
        Requirement(line)
        for line in (raw.split("#")[0].strip() for raw in requirements.splitlines())
        if line
    ]
    return [
        f"{req.name}: image pins {req.specifier}, pyproject.toml {pinned[req.name]}"
        for req in image
        if req.name in packages and req.name in pinned and req.specifier != pinned[req.name]
    ]


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
def test_compose_file_passes(compose: Compose, check: Callable[[Compose], list[str]]) -> None:
    assert check(compose) == []


def _node(compose: Compose, path: str) -> tuple[Any, str]:
    """(parent, key) for a dotted path under `services`: "mlflow.environment.X"."""
    *parents, last = path.split(".")
    node = compose["services"]
    for key in parents:
        node = node[key]
    return node, last


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    """Mutator: set the key at `path` to `value`; None deletes it."""

    def mutate(compose: Compose) -> None:
        node, key = _node(compose, path)
        if value is None:
            del node[key]
        else:
            node[key] = value

    return mutate


def _replace(path: str, old: str, new: str) -> Callable[[Compose], None]:
    """Mutator: replace `old` by `new` in the string, or in each string of the list, at `path`."""

    def mutate(compose: Compose) -> None:
        node, key = _node(compose, path)
        value = node[key]
        node[key] = (
            value.replace(old, new)
            if isinstance(value, str)
            else [v.replace(old, new) for v in value]
        )

    return mutate


# (check, what breaks the file, a fragment of the problem it must report)
# fmt: off
BROKEN = [
    ("check_schema", _set("mlflow.helthcheck", {}), "helthcheck"),
    ("check_schema", _set("trainer.restart", False), "restart"),  # unquoted `no` in YAML 1.1
    ("check_depends_on", _set("trainer.depends_on.mlfow", {"condition": "service_healthy"}), "'mlfow'"),
    ("check_depends_on", _set("createbucket.restart", "unless-stopped"), "restarts"),
    ("check_depends_on", _set("postgres.healthcheck", {"disable": True}), "no healthcheck"),
    ("check_named_volumes", _set("postgres.volumes", ["pgdata:/var/lib/postgresql/data"]), "'pgdata'"),
    ("check_repo_paths", _set("trainer.build.dockerfile", "docker/nope.Dockerfile"), "nope"),
    ("check_repo_paths", _set("postgres.volumes", ["./docker/postgres/gone.sh:/x.sh:ro"]), "gone.sh"),
    ("check_mlflow_server", _replace("mlflow.command", "postgresql+psycopg2://", "sqlite:///"), "--backend-store-uri"),
    ("check_mlflow_server", _replace("mlflow.command", "s3://", "file:///"), "--artifacts-destination"),
    ("check_mlflow_server", _replace("mlflow.command", "--allowed-hosts=", "--x="), "--allowed-hosts"),
    ("check_mlflow_server", _replace("mlflow.command", "--cors-allowed-origins=", "--x="), "--cors-allowed-origins"),
    ("check_mlflow_server", _replace("mlflow.command", "mlflow,mlflow:5000,", ""), "Host 'mlflow:5000'"),
    ("check_mlflow_server", _set("mlflow.environment.MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None), "JOB"),
    ("check_mlflow_server", _set("trainer.environment.MLFLOW_TRACKING_URI", "http://mlflow:80"), "not http"),
    ("check_separate_databases", _replace("trainer.environment.TRAINWISE_OPTUNA_STORAGE", "OPTUNA_DB:-optuna", "MLFLOW_DB:-mlflow"), "share"),
    ("check_separate_databases", _replace("optuna-dashboard.command", "OPTUNA_DB:-optuna", "OPTUNA_DB:-optuna2"), "agree"),
    ("check_separate_databases", _set("postgres.environment.TRAINWISE_OPTUNA_DB", None), "not created"),
    ("check_service_urls", _replace("mlflow.environment.MLFLOW_S3_ENDPOINT_URL", "minio", "mino"), "'mino'"),
    ("check_trainer", _set("trainer.shm_size", None), "shm_size"),
    ("check_trainer", _set("trainer.container_name", "trainer"), "container_name"),
    ("check_trainer", _set("trainer.ports", ["127.0.0.1:6006:6006"]), "fixed host port"),
    ("check_healthchecks", _set("mlflow.healthcheck", None), "mlflow"),
    ("check_healthchecks", _set("postgres.healthcheck", {"disable": True}), "postgres"),
    ("check_bucket", _replace("mlflow.command", "s3://${MLFLOW_BUCKET:-mlflow}", "s3://artifacts"), "'artifacts'"),
    ("check_bucket", _set("mlflow.depends_on.createbucket", None), "must wait"),
    ("check_interpolation", _set("trainer.environment.X", "${HOME}/x"), "HOME"),
    ("check_interpolation", _set("trainer.environment.X", "$PASSWORD"), "PASSWORD"),
    ("check_interpolation", _set("trainer.environment.X", "${MINIO_ROOT_USER:-admin}"), "elsewhere"),
    ("check_loopback_ports", _set("mlflow.ports", ["5000:5000"]), "all interfaces"),
    ("check_loopback_ports", _set("mlflow.ports", [{"target": 5000, "published": 5000}]), "all interfaces"),
]
# fmt: on


@pytest.mark.parametrize(
    ("check", "mutate", "expected"), BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)]
)
def test_check_rejects_broken_copy(
    compose: Compose, check: str, mutate: Callable, expected: str
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = CHECKS[check](broken)
    assert any(expected in p for p in problems), problems


def test_every_check_has_a_negative_case() -> None:
    assert set(CHECKS) <= {b[0] for b in BROKEN}


def test_interpolation_helpers() -> None:
    assert resolve("a${X:-1}b${Y-2}c$$Z") == "a1b2c$Z"
    assert list(interpolations("${A:?need A} $B $${C}")) == [("A", None), ("B", None)]


@pytest.mark.parametrize("image", ["mlflow", "optuna-dashboard"])
def test_server_images_pin_what_the_project_pins(image: str) -> None:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml yet")
    requirements = (REPO / "docker" / image / "requirements.txt").read_text(encoding="utf-8")
    assert (
        pin_problems(requirements, pyproject.read_text(encoding="utf-8"), ("mlflow", "optuna"))
        == []
    )


def test_pin_check_rejects_a_drifted_pin() -> None:
    pyproject = '[project]\nname = "x"\ndependencies = ["mlflow>=3.17,<4", "optuna>=5,<6"]\n'
    assert (
        pin_problems("mlflow>=3.17,<4\noptuna>=5,<6  # ok\n", pyproject, ("mlflow", "optuna")) == []
    )
    assert pin_problems("mlflow>=2.0,<3\n", pyproject, ("mlflow",)) != []
