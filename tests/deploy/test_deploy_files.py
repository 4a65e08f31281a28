"""The deployment files (deploy/, the Procfile) against the code they run.

Every YAML and JSON file parses; every `ld2 …` command line in the Procfile, compose.yaml,
the Kubernetes manifests, the Dockerfile and the deploy READMEs parses with today's command
line (click's own parser on the real typer app: a renamed or removed flag, a bad value or an
unknown command fails here); the environment variables they set are ones ld2 reads; ports,
probe paths and the autoscaler's /backlog field agree with the API's routes and models.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import typer
import yaml

from ld2.api import create_app
from ld2.api.app import BacklogModel
from ld2.api.security import is_open
from ld2.cli import app as cli_app
from tests.conftest import _free_port, make_table
from tests.deploy.test_sigterm_handback import BOUND
from tests.store.helpers import int_axis, registry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCS = [*sorted(DEPLOY.rglob("*.md")), ROOT / "docs" / "deploy.md"]
PORT_SUBSTITUTE = "5000"  # what $PORT stands for when a Procfile line is parsed

# -- reading the files --------------------------------------------------------------------------


def _yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _yaml(path)]


def _kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for d in _k8s()
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = _kind(kind, name)
    return found


def _compose() -> dict[str, Any]:
    (doc,) = _yaml(DEPLOY / "compose.yaml")
    return doc  # type: ignore[no-any-return]


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln.strip())}


def _app_json() -> dict[str, Any]:
    return json.loads((DEPLOY / "heroku" / "app.json").read_text())  # type: ignore[no-any-return]


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, rest) of each instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    last = max(k for k, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def _containers(kind: str = "Deployment") -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) of each container of the Kubernetes workloads of `kind`."""
    for doc in _kind(kind):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            yield doc, container


# -- command lines --------------------------------------------------------------------------------


class CommandLineError(ValueError):
    """What the command line would refuse (its usage message)."""


def parse_ld2(args: list[str]) -> Any:
    """Parse `ld2 ARGS` as the real command line would, without running anything: the
    subcommand is looked up (nested groups too), then click (typer's own, vendored copy) parses
    its options and arguments strictly: unknown options, missing values, wrong types and
    values out of range raise `CommandLineError`. Returns the command's context."""
    command: Any = typer.main.get_command(cli_app)
    parent: Any = None
    name, rest = "ld2", list(args)
    try:
        while hasattr(command, "list_commands"):  # a group: find the subcommand
            ctx = command.context_class(command, info_name=name, parent=parent)
            sub = command.get_command(ctx, rest[0]) if rest else None
            if sub is None:
                known = ", ".join(command.list_commands(ctx))
                raise CommandLineError(f"{name}: no command {rest[:1]}; known: {known}")
            parent, name, command, rest = ctx, rest[0], sub, rest[1:]
        ctx = command.make_context(name, rest, parent=parent, resilient_parsing=False)
    except typer.TyperException as err:  # click's UsageError, BadParameter, NoSuchOption, ...
        raise CommandLineError(str(err)) from err
    return ctx  # its .command and .params


def _after_ld2(argv: list[str]) -> list[str] | None:
    """The arguments of the `ld2` in a container's argv (after tini, say), or None."""
    for k, word in enumerate(argv):
        if os.path.basename(word) == "ld2":
            return argv[k + 1 :]
    return None


SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "(", ")", "2>", "2>&1"}
NOT_LD2_AFTER = {"-t", "--tag", "-n", "--namespace", "namespace", "generic", "-a", "--app"}
"""Words after which `ld2` is a name (an image tag, a namespace, a Secret), not the command."""


def _doc_command_lines(path: Path) -> Iterator[list[str]]:
    """The `ld2 …` invocations in a Markdown file's fenced code blocks: shell lines (joined
    across backslash continuations) where a word `ld2` is followed by a command word, and
    Dockerfile ``CMD [...]`` lines."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", path.read_text(), flags=re.S)
    for block in blocks:
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = line.strip().replace("$PORT", PORT_SUBSTITUTE)  # as in the Procfile
            if line.startswith(("CMD [", "ENTRYPOINT [")):
                argv = _after_ld2(json.loads(line.partition(" ")[2]))
                if argv is not None:
                    yield argv
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.commenters = "#"
            lexer.wordchars += ":@%+,{}$!^[]"  # URLs, user@host, ${VAR}: one word each
            words = list(lexer)
            for k, word in enumerate(words[:-1]):
                after = words[k + 1]
                if word != "ld2" or (k and words[k - 1] in NOT_LD2_AFTER):
                    continue
                if after == "ld2" or after.startswith(("-", ".", "/")):
                    continue  # `docker run ld2 ld2 …` (an image), `-t ld2 .`
                argv = []
                for w in words[k + 1 :]:
                    if w in SHELL_OPERATORS:
                        break
                    argv.append(w)
                yield argv


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, arguments after `ld2`) of every ld2 command line of the deployment files."""
    out: list[tuple[str, list[str]]] = []
    for role, line in _procfile().items():
        argv = _after_ld2(shlex.split(line.replace("$PORT", PORT_SUBSTITUTE)))
        assert argv is not None, f"Procfile {role}: not an ld2 command: {line}"
        out.append((f"Procfile {role}", argv))
    for name, service in _compose()["services"].items():
        cmd = service.get("command")
        if cmd is not None:
            argv = _after_ld2(shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd])
            if argv is not None:
                out.append((f"compose.yaml {name}", argv))
    for kind in ("Deployment", "StatefulSet"):
        for doc, container in _containers(kind):
            argv = _after_ld2([*container.get("command", []), *container.get("args", [])])
            if argv is not None:
                out.append((f"kubernetes {doc['metadata']['name']}", argv))
    for word, rest in _dockerfile():
        if word in ("CMD", "ENTRYPOINT"):
            argv = _after_ld2(json.loads(rest))
            if argv is not None:
                out.append((f"Dockerfile {word}", argv))
    for path in DOCS:
        for argv in _doc_command_lines(path):
            out.append((str(path.relative_to(ROOT)), argv))
    return out


def test_every_ld2_command_line_parses_with_todays_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD2_ALLOW_EVICTION", "")  # (an --allow-eviction callback sets it)
    lines = command_lines()
    wheres = {where.split()[0] for where, _ in lines}
    assert {"Procfile", "compose.yaml", "kubernetes", "Dockerfile"} <= wheres, wheres
    assert any(where.endswith(".md") for where in wheres), "no ld2 command found in the READMEs"
    bad = []
    for where, argv in lines:
        try:
            parse_ld2(argv)
        except CommandLineError as err:
            bad.append(f"{where}: ld2 {shlex.join(argv)}: {err}")
    assert not bad, "\n".join(bad)


def test_the_roles_run_the_commands_the_procfile_names() -> None:
    roles = {role: parse_ld2(argv).command.name for role, argv in command_lines()}
    assert {r: c for r, c in roles.items() if r.startswith("Procfile")} == {
        "Procfile web": "api", "Procfile worker": "worker", "Procfile reaper": "reaper",
    }  # fmt: skip
    assert roles["Dockerfile CMD"] == "api"
    assert roles["kubernetes ld2-api"] == "api"
    assert roles["kubernetes ld2-worker"] == "worker"
    assert roles["kubernetes ld2-reaper"] == "reaper"
    compose = {r.split()[1]: c for r, c in roles.items() if r.startswith("compose.yaml")}
    assert compose == {"api-1": "api", "api-2": "api", "worker": "worker", "reaper": "reaper"}


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--capacity", "mandelbrot", "--max-sise", "auto"],  # a misspelt flag
        ["worker", "--processes"],  # a flag without its value
        ["worker", "--processes", "0"],  # out of range (min=1)
        ["api", "--port", "$PORT"],  # not an int: Procfile lines must be substituted first
        ["api", "--host", "0.0.0.0", "extra"],  # an argument the command does not take
        ["work"],  # no such command
        ["snapshot", "safe", "x.json"],  # no such subcommand of a group
    ],
)
def test_the_check_refuses_what_the_cli_refuses(args: list[str]) -> None:
    with pytest.raises(CommandLineError):
        parse_ld2(args)


def test_the_check_accepts_nested_commands() -> None:
    assert parse_ld2(["snapshot", "save", "x.json"]).params["path"] == Path("x.json")
    assert parse_ld2(["api", "--port", PORT_SUBSTITUTE]).params["port"] == int(PORT_SUBSTITUTE)


def test_markdown_commands_are_found_where_they_are_commands(tmp_path: Path) -> None:
    doc = (
        "```\n"
        "docker build -f deploy/Dockerfile -t ld2 .\n"
        "docker run --rm ld2 ld2 worker --processes 2 | tee log\n"
        "kubectl -n ld2 create secret generic ld2 \\\n  --from-literal=A=b\n"
        "kubectl -n ld2 exec deploy/ld2-api -- ld2 status  # a comment\n"
        "```\n```dockerfile\n"
        'CMD ["ld2", "reaper", "--once"]\n'
        "```\n"
    )
    path = tmp_path / "example.md"
    path.write_text(doc)
    found = list(_doc_command_lines(path))
    assert found == [["worker", "--processes", "2"], ["status"], ["reaper", "--once"]]


# -- files parse ----------------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    yamls = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert len(yamls) >= 7 and jsons
    for path in yamls:
        docs = _yaml(path)
        assert docs and all(isinstance(d, dict) for d in docs), path
    for path in jsons:
        assert isinstance(json.loads(path.read_text()), dict), path


# -- environment variables ------------------------------------------------------------------------

TOOLING_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
"""Variables the deployment files set for Python or the image, not for ld2 (plus UV_* at build)."""


def env_read_by_ld2() -> set[str]:
    """Every variable name the ld2 package reads (`os.environ.get("X")`, `os.environ["X"]`)."""
    pattern = re.compile(r"""os\.environ(?:\.get\(\s*|\[\s*)["']([A-Z][A-Z0-9_]*)["']""")
    names: set[str] = set()
    for path in (ROOT / "ld2").rglob("*.py"):
        names |= set(pattern.findall(path.read_text()))
    return names


def env_set_by_deploy_files() -> dict[str, str]:
    """name -> where, for each variable the deployment files set or reference by key."""
    found: dict[str, str] = {}
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        keys = env if isinstance(env, dict) else [e.partition("=")[0] for e in env]
        found.update({k: f"compose.yaml {name}" for k in keys})
    for doc, container in _containers():
        found.update({e["name"]: f"kubernetes {doc['metadata']['name']}" for e in container["env"]})
    for secret in _kind("Secret"):
        found.update({k: "kubernetes Secret" for k in secret.get("stringData", {})})
    for auth in _kind("TriggerAuthentication"):
        found.update({ref["key"]: "kubernetes TriggerAuthentication" for ref in auth["spec"]["secretTargetRef"]})  # fmt: skip
    found.update({k: "app.json" for k in _app_json()["env"]})
    for word, rest in _dockerfile():
        if word == "ENV":
            found.update(
                {m: "Dockerfile" for m in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest)}
            )
    return found


def test_the_variables_set_are_ones_ld2_reads() -> None:
    read = env_read_by_ld2()
    assert {"LD2_REDIS_URL", "REDIS_URL", "LD2_API_TOKEN", "PORT", "LD2_PREFIX"} <= read, read
    unknown = {
        name: where
        for name, where in env_set_by_deploy_files().items()
        if name not in read and name not in TOOLING_ENV and not name.startswith("UV_")
    }
    assert not unknown, f"set but never read by ld2: {unknown}"


def test_every_ld2_variable_named_in_the_deploy_files_is_read() -> None:
    read = env_read_by_ld2()
    paths = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / "docs" / "deploy.md"]
    named = {
        (name, str(p.relative_to(ROOT)))
        for p in paths
        for name in re.findall(r"\bLD2_[A-Z0-9_]+\b", p.read_text())
    }
    assert named
    assert not [n for n in named if n[0] not in read], sorted(n for n in named if n[0] not in read)


def test_the_api_token_and_redis_url_reach_each_role() -> None:
    for doc, container in _containers():
        names = {e["name"] for e in container["env"]}
        role = doc["metadata"]["name"]
        assert "LD2_REDIS_URL" in names, role
        assert ("LD2_API_TOKEN" in names) == (role == "ld2-api"), role
    for name, service in _compose()["services"].items():
        if name == "redis":
            continue
        env = service["environment"]
        assert urlparse(env["LD2_REDIS_URL"]).hostname == "redis", name
        assert ("LD2_API_TOKEN" in env) == name.startswith("api"), name
        if name.startswith("api"):
            assert env["LD2_API_TOKEN"].startswith("${LD2_API_TOKEN:?"), "no token: no start"


# -- the API: routes, ports, probes -----------------------------------------------------------------


def api_routes() -> set[str]:
    app = create_app(lambda: None)  # type: ignore[arg-type,return-value]  # (never started)
    return {getattr(route, "path", "") for route in app.routes}


def _api_port(argv: list[str]) -> int:
    ctx = parse_ld2(argv)
    assert ctx.command.name == "api"
    return int(ctx.params["port"])


def test_probes_and_health_checks_ask_ping_an_open_route() -> None:
    routes = api_routes()
    assert {"/ping", "/backlog"} <= routes
    assert is_open("/ping")  # probes carry no token
    assert not is_open("/backlog")  # the autoscaler must send it
    # Kubernetes: both probes on /ping, at the port the API listens on
    for doc, container in _containers():
        if doc["metadata"]["name"] != "ld2-api":
            assert "readinessProbe" not in container and "livenessProbe" not in container
            continue
        port = _api_port(_after_ld2(container["args"]) or [])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/ping"
            assert ports.get(get["port"], get["port"]) == port
    # compose: each API service's health check GETs /ping on its own --port
    for name, service in _compose()["services"].items():
        if not name.startswith("api"):
            continue
        port = _api_port(_after_ld2(service["command"]) or [])
        (url,) = re.findall(r"http://[^'\"\s]+", " ".join(service["healthcheck"]["test"]))
        assert (urlparse(url).port, urlparse(url).path) == (port, "/ping"), name
    # the image: EXPOSE and the default command agree
    expose = [rest for word, rest in _final_stage() if word == "EXPOSE"]
    cmd = [json.loads(rest) for word, rest in _final_stage() if word == "CMD"]
    assert expose == [str(_api_port(_after_ld2(cmd[-1]) or []))]


def test_compose_runs_two_apis_on_distinct_host_ports() -> None:
    services = _compose()["services"]
    apis = [s for n, s in services.items() if n.startswith("api")]
    assert len(apis) >= 2
    published = [str(p).split(":")[-2] for s in apis for p in s["ports"]]
    targets = [str(p).split(":")[-1] for s in apis for p in s["ports"]]
    assert len(set(published)) == len(published) == len(apis)
    assert targets == [str(_api_port(_after_ld2(s["command"]) or [])) for s in apis]


def test_kubernetes_service_reaches_the_api_pods() -> None:
    service = _one("Service", "ld2-api")
    api = _one("Deployment", "ld2-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for other in ("ld2-worker", "ld2-reaper"):
        other_labels = _one("Deployment", other)["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= other_labels.items()
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (sport,) = service["spec"]["ports"]
    assert ports[sport["targetPort"]] == _api_port(_after_ld2(container["args"]) or [])


# -- Kubernetes -------------------------------------------------------------------------------------


def test_kubernetes_objects_and_their_references() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in _k8s()}
    assert {
        ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"), ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"), ("v1", "Secret"),
    } <= kinds  # fmt: skip
    deployments = {d["metadata"]["name"]: d for d in _kind("Deployment")}
    assert set(deployments) == {"ld2-api", "ld2-worker", "ld2-reaper"}
    for kind in ("Deployment", "StatefulSet"):
        for doc in _kind(kind):
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
    api_labels = deployments["ld2-api"]["spec"]["template"]["metadata"]["labels"]
    (pdb,) = _kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= api_labels.items()
    (hpa,) = _kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "ld2-api",
    }  # fmt: skip
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    (api,) = deployments["ld2-api"]["spec"]["template"]["spec"]["containers"]
    assert "cpu" in api["resources"]["requests"]  # CPU utilisation needs a request
    # the Secret example holds every key the pods and KEDA read, with placeholders only
    (secret,) = _kind("Secret")
    keys = set(secret["stringData"])
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for _, c in _containers()
        for e in c["env"]
        if "valueFrom" in e
    }
    refs |= {(r["name"], r["key"]) for a in _kind("TriggerAuthentication") for r in a["spec"]["secretTargetRef"]}  # fmt: skip
    assert refs == {(secret["metadata"]["name"], k) for k in keys}
    assert all("CHANGE-ME" in v for v in secret["stringData"].values())
    # kustomize: its resources exist and are the three roles; the Secret example is not applied
    (kustomization,) = _yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == ["api.yaml", "reaper.yaml", "worker.yaml"]
    assert all((K8S / r).is_file() for r in kustomization["resources"])
    assert [i["name"] for i in kustomization["images"]] == ["ld2"]


def test_kubernetes_containers_keep_the_entrypoint_and_the_images_user() -> None:
    (user,) = [rest for word, rest in _final_stage() if word == "USER"]
    uid = int(user.split(":")[0])
    for doc, container in _containers():
        assert container["image"] == "ld2"  # kustomization.yaml's images: rewrite it
        assert "command" not in container and container["args"][0] == "ld2"  # tini stays
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid


def test_workers_have_time_to_hand_back_before_sigkill() -> None:
    worker = _one("Deployment", "ld2-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= 2 * BOUND
    grace = _compose()["services"]["worker"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 2 * BOUND


def test_keda_scales_the_workers_on_a_backlog_field_with_the_api_token() -> None:
    (scaled,) = _kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "ld2-worker"
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "metrics-api"
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is string to string
    assert {"url", "valueLocation", "targetValue", "authMode"} <= set(meta)
    float(meta["targetValue"])
    # the URL: the API Service, its port, in the namespace kustomize puts it in, at /backlog
    url = urlparse(meta["url"])
    (kustomization,) = _yaml(K8S / "kustomization.yaml")
    assert url.hostname == f"ld2-api.{kustomization['namespace']}.svc.cluster.local"
    (sport,) = _one("Service", "ld2-api")["spec"]["ports"]
    assert (url.port, url.path) == (sport["port"], "/backlog")
    assert url.path in api_routes()
    # GJSON path: a plain top-level field of BacklogModel counting waiting work
    assert meta["valueLocation"] == "points_waiting"
    assert BacklogModel.model_fields[meta["valueLocation"]].annotation in (int, int | None)
    # /backlog needs the token: bearer auth from the Secret key the API reads its token from
    assert meta["authMode"] == "bearer"
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["key"]) == ("token", "LD2_API_TOKEN")
    assert scaled["spec"]["fallback"]["replicas"] >= 1  # points_waiting can be null


async def test_backlog_answers_keda_a_number_with_the_bearer_token(
    request: pytest.FixtureRequest,
) -> None:
    """What KEDA's metrics-api trigger sends and reads, through the real app."""
    async with make_table(request, "fake") as table:
        await table.register_study(registry([int_axis("x", 1000)], capacity=["mandelbrot"]))
        app = create_app(table, token="s3cret")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ld2-api") as client:
            assert (await client.get("/backlog")).status_code == 401
            assert (await client.get("/ping")).status_code == 200  # the probes' path is open
            reply = await client.get("/backlog", headers={"Authorization": "Bearer s3cret"})
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == set(BacklogModel.model_fields)
    assert body["points_waiting"] == 1000


def test_the_readme_backlog_example_has_the_models_fields() -> None:
    text = (DEPLOY / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if "points_waiting" in b]
    assert set(json.loads(example)) == set(BacklogModel.model_fields)


# -- compose ---------------------------------------------------------------------------------------


def test_compose_redis_persists_and_never_evicts() -> None:
    services = _compose()["services"]
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "test" in redis["healthcheck"]
    for name, service in services.items():
        if name != "redis":
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["worker"]["deploy"]["replicas"] >= 1
    build = services["worker"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]) == DEPLOY / "Dockerfile"


# -- Heroku ---------------------------------------------------------------------------------------


def test_heroku_app_json_matches_the_procfile() -> None:
    app = _app_json()
    assert set(app["formation"]) == set(_procfile()) == {"web", "worker", "reaper"}
    assert all(f["quantity"] >= 1 for f in app["formation"].values())
    assert [a["plan"].split(":")[0] for a in app["addons"]] == ["heroku-redis"]
    assert app["addons"][0].get("as", "REDIS") + "_URL" == "REDIS_URL"  # what ld2 reads
    assert app["env"]["LD2_API_TOKEN"]["generator"] == "secret"
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    assert (ROOT / ".python-version").is_file() and (ROOT / "uv.lock").is_file()
    assert "$PORT" in _procfile()["web"]  # Heroku's router sends to $PORT


# -- Dockerfile ------------------------------------------------------------------------------------


def _dockerignored(rel: str) -> bool:
    """Whether BuildKit leaves `rel` out of the context (Dockerfile.dockerignore: the last
    matching pattern decides; a pattern matching a parent directory matches its contents)."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    parts = rel.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(p, glob) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_builds_with_uv_in_two_stages_as_non_root() -> None:
    steps = _dockerfile()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert froms[1] == "python:${PYTHON_VERSION}-slim"
    assert ("ARG", "PYTHON_VERSION=3.11") in steps
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    final = _final_stage()
    (user,) = [rest for word, rest in final if word == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    copies = [rest for word, rest in final if word == "COPY"]
    assert any(c.startswith("--from=builder ") for c in copies)
    (entrypoint,) = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint[0].endswith("tini") and "tini" in runs
    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert json.loads(health.partition("CMD ")[2]) == ["ld2-healthcheck"]
    assert any(c.endswith("deploy/healthcheck.py /usr/local/bin/ld2-healthcheck") for c in copies)


def test_dockerfile_copies_only_what_the_context_sends() -> None:
    sources = []
    for word, rest in _dockerfile():
        if word == "COPY" and "--from=" not in rest:
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = str(f.relative_to(ROOT))
            if "__pycache__" not in rel:
                assert not _dockerignored(rel), f"{rel} is copied but ignored"
    for unsent in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/common.py"):
        assert _dockerignored(unsent), unsent
    assert _dockerignored("ld2/__pycache__/cli.cpython-311.pyc")


# -- the image's health check --------------------------------------------------------------------


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ld2_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/ping"
        body = b'{"ok":true}' if ok else b"{}"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _ping_server() -> Iterator[int]:
    """A stand-in for the API's /ping on a free loopback port (its own thread)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_finds_the_api_process_and_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    hc = _healthcheck()
    assert hc.api_argv(["/opt/ld2/bin/python", "/opt/ld2/bin/ld2", "api", "--port", "9"]) == [
        "--port", "9",
    ]  # fmt: skip
    assert hc.api_argv(["python", "-m", "ld2", "api"]) == []
    assert hc.api_argv(["/opt/ld2/bin/ld2", "worker", "--capacity", "api"]) is None
    assert hc.api_argv(["/usr/bin/tini", "--", "ld2", "reaper"]) is None
    assert hc.port_of(["--host", "0.0.0.0", "--port", "8123"], {"PORT": "1"}) == 8123
    assert hc.port_of(["--port=8124"], {}) == 8124
    assert hc.port_of([], {"PORT": "5001"}) == 5001
    assert hc.port_of([], {}) == 8000
    # the default (no port in the command) is the API's: the image's CMD and EXPOSE say 8000
    (expose,) = [rest for word, rest in _final_stage() if word == "EXPOSE"]
    assert int(expose) == hc.DEFAULT_PORT
    procs = [(["/usr/bin/tini", "--", "ld2", "worker"], {}), (["/opt/ld2/bin/ld2", "worker"], {})]
    monkeypatch.setattr(hc, "_processes", lambda: iter(procs))
    assert hc.find_api_port() is None
    assert hc.main([]) == 0  # a worker container: healthy without HTTP
    procs.append((["/opt/ld2/bin/python", "/opt/ld2/bin/ld2", "api"], {"PORT": "8999"}))
    assert hc.find_api_port() == 8999


def test_healthcheck_asks_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    hc = _healthcheck()
    closed = _free_port()
    with _ping_server() as port:
        assert hc.ping(port) is True
        monkeypatch.setattr(hc, "find_api_port", lambda: port)
        assert hc.main([]) == 0
        assert hc.main([str(closed)]) == 1
        # the script as the image runs it (its own interpreter, no ld2 needed)
        script = [sys.executable, "-I", str(DEPLOY / "healthcheck.py")]
        assert subprocess.run([*script, str(port)], timeout=30).returncode == 0
        assert (
            subprocess.run([*script, str(closed)], timeout=30, capture_output=True).returncode == 1
        )
        # compose's one-line check, at this port instead of 8000
        (test,) = {tuple(s["healthcheck"]["test"]) for n, s in _compose()["services"].items() if n.startswith("api")}  # fmt: skip
        assert test[:3] == ("CMD", "python", "-c")
        for target, status in ((port, 0), (closed, 1)):
            code = test[3].replace(":8000/", f":{target}/")
            done = subprocess.run(
                [sys.executable, "-I", "-c", code], timeout=30, capture_output=True
            )
            assert done.returncode == status, done.stderr
