"""Admin model management against real `branet serve` processes (issue 23): deploy, refusals, activation and
rollback, the audit log, the CLI, a second replica following the models folder, and zero failed analyses
while the server swaps versions 20 times under load.

The second version is the committed US classifier with its last layer scaled by 1.01 (another file, another
sha256, still a working model): the two versions' results are told apart by sha256 alone."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from models.manifest import read_manifest, sha256_file
from server import launcher
from server.launcher import BRANET, free_port, server_env, us_classifier_variant
from tests.live_server import live_server

SWAPS = 20  # activations + rollbacks during the load loop
CLIENTS = 3


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> Path:
    """A `training export`-style folder: classifier-us with its last layer scaled by 1.01, its probe, manifest."""
    return us_classifier_variant(tmp_path_factory.mktemp("variant"), lambda model: model.fc.weight.mul_(1.01))


def start(home: Path, log_name: str, **env: str) -> tuple[subprocess.Popen, int]:
    port, log = free_port(), (home / log_name).open("w")
    proc = launcher.spawn(port, server_env(home, BRANET_TORCH_THREADS="1", OMP_NUM_THREADS="1", **env), log)
    proc.log = log
    return proc, port


def wait_ready(proc: subprocess.Popen, port: int) -> None:
    try:
        launcher.wait_ready(proc, port, proc.log, timeout_s=240)
    except launcher.ServerDidNotStart as e:
        pytest.fail(str(e))


def stop(proc: subprocess.Popen) -> None:
    launcher.stop(proc, timeout_s=30)
    proc.log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two replicas sharing one home: the SQLite store and the models folder (HOME/models)."""
    home = tmp_path_factory.mktemp("home")
    tokens = {}
    for name, admin in (("root", True), ("carol", False)):
        args = ["users", "add", name, "--no-password", *(["--admin"] if admin else [])]
        tokens[name] = subprocess.run([BRANET, *args], env=server_env(home), check=True, capture_output=True,
                                      text=True).stdout.strip()
    # Started together: both register the committed weights, one after the other under the folder's lock.
    first = start(home, "server-a.log")
    second = start(home, "server-b.log", BRANET_MODELS_POLL_S="0.5")
    try:
        wait_ready(*first)
        wait_ready(*second)
        yield {"home": home, "a": first[1], "b": second[1], "tokens": tokens}
    finally:
        stop(second[0])
        stop(first[0])


def client(servers, which: str = "a", user: str = "root") -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{servers[which]}", timeout=300,
                        headers={"Authorization": f"Bearer {servers['tokens'][user]}"})


def upload(c: httpx.Client, folder: Path, role: str = "classifier-us", files: dict[str, Path] | None = None,
           **data: str) -> httpx.Response:
    entry = read_manifest(folder).models["classifier-us"]
    files = files or {name: folder / name for name in (entry.file, entry.sam_probe.file)}
    parts = [("manifest", ("manifest.json", (folder / "manifest.json").read_bytes()))]
    parts += [("files", (name, path.read_bytes())) for name, path in files.items()]
    return c.post("/v1/admin/models", data={"role": role, **data}, files=parts)


@pytest.fixture(scope="module")
def deployed(servers, variant) -> dict:
    """The variant deployed (not active) on server a by `branet models deploy` (POST /v1/admin/models with an
    admin token); both versions' ids and sha256."""
    out = subprocess.run([BRANET, "models", "deploy", str(variant), "--server", f"http://127.0.0.1:{servers['a']}",
                          "--token", servers["tokens"]["root"]], env=server_env(servers["home"]), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    with client(servers) as c:
        listed = c.get("/v1/models").json()["versions"]["classifier-us"]
    v1 = next(v for v in listed if v["source"] == "committed")
    version = next(v for v in listed if v["source"] == "upload")
    assert out.stdout.startswith(f"{version['id']}: classifier-us sha256 {version['sha256'][:12]} deployed")
    return {"v1": v1["id"], "v2": version["id"], v1["id"]: v1["sha256"], version["id"]: version["sha256"],
            "version": version}


def test_the_committed_weights_are_the_first_version_of_each_role(servers):
    with client(servers) as c:
        body = c.get("/v1/models").json()
    for role in ("classifier-us", "classifier-dm"):
        (v1,) = [v for v in body["versions"][role] if v["source"] == "committed"]
        assert v1["id"] == f"{role}-v1" and v1["active"] and v1["deployed_by"] == "system"
        assert v1["quality"]["cv_auc"] > 0.5  # measured quality from its manifest
    assert {c["modality"]: c["id"] for c in body["classifiers"]} == {"us": "classifier-us-v1", "dm": "classifier-dm-v1"}


def test_a_deploy_is_validated_and_stored_but_not_served(servers, deployed, variant):
    version = deployed["version"]
    assert version["id"] == "classifier-us-v2" and not version["active"] and version["deployed_by"] == "root"
    assert version["sha256"] == sha256_file(variant / "classifier-us.safetensors") != deployed["classifier-us-v1"]
    # the quality its manifest records, as uploaded
    assert version["quality"]["cv_auc"] == read_manifest(variant).models["classifier-us"].metrics["oof_roc_auc"]
    with client(servers) as c:
        served = {x["modality"]: x for x in c.get("/v1/models").json()["classifiers"]}
    assert served["us"]["id"] == "classifier-us-v1"
    stored = servers["home"] / "models" / "versions" / "classifier-us-v2"
    assert sorted(p.name for p in stored.iterdir()) == ["classifier-us.safetensors", "manifest.json",
                                                         "sam-probe-us.safetensors", "version.json"]


def test_refused_deploys_name_the_check_and_leave_nothing(servers, deployed, variant, tmp_path):
    corrupt = tmp_path / "classifier-us.safetensors"
    data = bytearray((variant / "classifier-us.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    files = {"classifier-us.safetensors": corrupt, "sam-probe-us.safetensors": variant / "sam-probe-us.safetensors"}
    with client(servers) as c:
        bad_sha = upload(c, variant, files=files)
        wrong_role = upload(c, variant, role="classifier-dm")
        missing = upload(c, variant, files={"classifier-us.safetensors": variant / "classifier-us.safetensors"})
        versions = c.get("/v1/models").json()["versions"]["classifier-us"]
    assert bad_sha.status_code == 422 and bad_sha.json()["error"]["code"] == "model_refused"
    assert bad_sha.headers["X-Model-Check"] == "sha256" and "check 'sha256' failed" in bad_sha.json()["error"]["message"]
    assert wrong_role.status_code == 422 and wrong_role.headers["X-Model-Check"] == "role"
    assert "no entry 'classifier-dm'" in wrong_role.json()["error"]["message"]
    assert missing.status_code == 422 and missing.headers["X-Model-Check"] == "files"
    assert [v["id"] for v in versions] == ["classifier-us-v1", "classifier-us-v2"]  # nothing new
    models = servers["home"] / "models"
    assert not list((models / ".staging").iterdir())  # nothing half-written left
    assert sorted(p.name for p in (models / "versions").iterdir()) == [
        "classifier-dm-v1", "classifier-us-v1", "classifier-us-v2", "localiser-us-v1"]


def test_a_non_admin_is_refused(servers, variant):
    with client(servers, user="carol") as c:
        assert upload(c, variant).status_code == 403
        assert c.post("/v1/admin/models/classifier-us-v1/activate").status_code == 403
        assert c.post("/v1/admin/models/classifier-us/rollback").status_code == 403
        res = c.get("/v1/admin/audit")
        assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden"
        assert c.get("/v1/models").status_code == 200  # reading what is served stays open to every user


def analyses_under_swaps(servers, deployed, busi_dir) -> tuple[Counter, list[str], list[dict], list[dict]]:
    """CLIENTS threads analyse real BUSI images (stored ones, cached embeddings, and one-call uploads)
    while the main thread activates and rolls back SWAPS times; every answer is recorded."""
    images = sorted((busi_dir / "malignant").glob("malignant (*).png"))[:2] + \
        sorted((busi_dir / "benign").glob("benign (*).png"))[:2]
    with client(servers) as c:
        stored = [c.post("/v1/images", files={"file": (p.name, p.read_bytes())}, data={"modality": "us"}).json()
                  for p in images]
    stop_flag, failures, results = threading.Event(), [], []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with client(servers) as c:
            i = k
            while not stop_flag.is_set():
                i += 1
                image = stored[i % len(stored)]
                box = [image["width"] * 0.3, image["height"] * 0.3, image["width"] * 0.7, image["height"] * 0.7]
                if i % 4 == 0:  # an upload and its analysis in one call: a fresh embedding
                    path = images[i % len(images)]
                    res = c.post("/v1/analyses", files={"file": (path.name, path.read_bytes())},
                                 data={"modality": "us", "prompt": json.dumps({"box": box})})
                else:
                    res = c.post("/v1/analyses", json={"image_id": image["image_id"], "prompt": {"box": box}})
                with lock:
                    if res.status_code not in (200, 201):
                        failures.append(f"{res.status_code} {res.text[:300]}")
                    else:
                        results.append(res.json()["models"]["classifier"])
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    swaps = []
    try:
        with client(servers) as c:
            time.sleep(1.0)
            for n in range(SWAPS):
                res = (c.post(f"/v1/admin/models/{deployed['v2']}/activate") if n % 2 == 0
                       else c.post("/v1/admin/models/classifier-us/rollback"))
                assert res.status_code == 200, res.text
                swaps.append(res.json())
                time.sleep(0.1)
    finally:
        time.sleep(1.0)
        stop_flag.set()
        for t in threads:
            t.join(timeout=300)
    return Counter(r["id"] for r in results), failures, results, swaps


def test_zero_failed_analyses_while_swapping_20_times(servers, deployed, busi_dir):
    start = time.perf_counter()
    by_version, failures, results, swaps = analyses_under_swaps(servers, deployed, busi_dir)
    elapsed = time.perf_counter() - start
    print(f"{len(results)} analyses in {elapsed:.1f} s during {SWAPS} swaps; by version {dict(by_version)}")
    assert not failures, failures[:5]
    assert [s["active"] for s in swaps] == [deployed["v2"], deployed["v1"]] * (SWAPS // 2)
    assert all(s["embeddings_dropped"] == [] for s in swaps)  # the SAM did not change: the cache stays valid
    for r in results:  # every result names the version it was computed with, and that version's sha256
        assert r["id"] in (deployed["v1"], deployed["v2"]) and r["sha256"] == deployed[r["id"]]
    assert len(results) >= 2 * CLIENTS and set(by_version) == {deployed["v1"], deployed["v2"]}
    with client(servers) as c:  # ended on a rollback: v1 served, and both replicas say so
        assert {x["modality"]: x["id"] for x in c.get("/v1/models").json()["classifiers"]}["us"] == deployed["v1"]


def test_the_other_replica_follows_an_activation(servers, deployed):
    """Server b shares the models folder: an activation on a reaches it by polling active.json."""
    with client(servers, "a") as a, client(servers, "b") as b:
        res = a.post(f"/v1/admin/models/{deployed['v2']}/activate")
        assert res.status_code == 200, res.text
        start = time.perf_counter()
        while True:
            served = {x["modality"]: x["id"] for x in b.get("/v1/models").json()["classifiers"]}
            if served["us"] == deployed["v2"]:
                break
            assert time.perf_counter() - start < 30, "server b did not follow within 30 s"
            time.sleep(0.2)
        followed = time.perf_counter() - start
        print(f"server b served {deployed['v2']} {followed:.2f} s after the activation on a")
        res = a.post("/v1/admin/models/classifier-us/rollback")
        assert res.status_code == 200 and res.json()["active"] == deployed["v1"]


def test_cli_over_the_api_and_on_the_folder(servers, deployed):
    """`branet models list` with an admin token asks the server; `activate` without one writes the models folder,
    and the running server (polling it) serves the change."""
    env = server_env(servers["home"])
    url = f"http://127.0.0.1:{servers['a']}"
    listed = subprocess.run([BRANET, "models", "list", "--server", url, "--token", servers["tokens"]["root"]],
                            env=env, check=True, capture_output=True, text=True).stdout
    assert "classifier-us-v2" in listed and "classifier-dm-v1" in listed
    (active_us,) = [line for line in listed.splitlines() if line.startswith("classifier-us ") and " * " in line]
    assert deployed["v1"] in active_us
    local = subprocess.run([BRANET, "models", "activate", deployed["v2"]], env=env, check=True, capture_output=True,
                           text=True)
    assert f"classifier-us: {deployed['v2']} active (was {deployed['v1']})" in local.stdout
    with client(servers) as c:
        start = time.perf_counter()
        while {x["modality"]: x["id"] for x in c.get("/v1/models").json()["classifiers"]}["us"] != deployed["v2"]:
            assert time.perf_counter() - start < 30, "server a did not follow the CLI's activation"
            time.sleep(0.2)
        res = c.post("/v1/admin/models/classifier-us/rollback")
        assert res.status_code == 200 and res.json()["active"] == deployed["v1"]
    events = [e for e in c_audit(servers) if e["action"] == "activate" and e["actor"].startswith("cli:")]
    assert [e["version"] for e in events] == [deployed["v2"]]


def c_audit(servers) -> list[dict]:
    with client(servers) as c:
        return c.get("/v1/admin/audit").json()["events"]


def test_the_audit_log_records_every_change(servers, deployed):
    with client(servers) as c:
        events = c.get("/v1/admin/audit").json()["events"]
    actions = Counter(e["action"] for e in events)
    assert actions["register"] == 3 and actions["upload"] == 1  # classifier-us, classifier-dm, localiser-us
    assert actions["activate"] >= 2 + SWAPS // 2 and actions["rollback"] >= SWAPS // 2
    refusals = [e for e in events if e["action"] == "refuse"]
    assert {"sha256", "role", "files"} <= {e["check"] for e in refusals}
    upload_event = next(e for e in events if e["action"] == "upload")
    assert (upload_event["actor"], upload_event["version"], upload_event["sha256"]) == (
        "root", deployed["v2"], deployed[deployed["v2"]])
    assert {e["actor"] for e in events if e["action"] in ("activate", "rollback")} <= {"system", "root"} | {
        e["actor"] for e in events if e["actor"].startswith("cli:")}
    times = [e["at"] for e in events]
    assert times == sorted(times)  # appended, oldest first


def test_a_committed_version_is_read_from_the_checkout_that_starts(tmp_path):
    """A models folder outlives the checkout that registered its committed weights (a moved clone, CI clones
    sharing a home): the next checkout's server reads the same sha256 from its own folder, not the gone one."""
    from models.manifest import WEIGHTS_DIR
    from server.engine import Engine
    from server.model_registry import ModelRegistry
    from server.settings import Settings
    first, second = tmp_path / "first" / "weights", tmp_path / "second" / "weights"
    shutil.copytree(WEIGHTS_DIR, first)
    shutil.copytree(WEIGHTS_DIR, second)
    home = tmp_path / "home"
    settings = Settings(home=home, weights=first, create_dev_user=False)
    ModelRegistry(settings.models_root).register_committed(first)
    shutil.rmtree(first.parent)
    registry = ModelRegistry(settings.models_root, second)
    assert {d for _, d in registry.active_dirs().values()} == {second.resolve()}
    assert registry.register_committed(second) == []  # the same sha256: no new version
    engine = Engine(settings.model_copy(update={"weights": second}))
    engine.load()  # the real models, from the second checkout
    engine.close()
    # a committed version this checkout does not hold (another sha256) keeps the folder it was registered from
    (version, _), = [v for role, v in registry.active_dirs().items() if role == "classifier-dm"]
    other = version.model_copy(update={"sha256": "0" * 64})
    assert registry.weights_dir(other) == Path(version.weights_dir) == first.resolve()


def test_a_swap_drops_only_the_embeddings_of_a_changed_sam(tmp_path):
    """Engine.install: a SAM whose decoder or kept encoder stages changed loses its cached embeddings (they
    would lack what the new probe reads); an unchanged SAM keeps them."""
    import torch

    from models.segmentation import Embedding
    from server.engine import Engine, Served
    from server.settings import Settings
    engine = Engine(Settings(home=tmp_path, models_poll_s=60))
    try:
        old = Served({}, {}, {}, {}, {}, {"litemedsam": (None, ("neck",)), "mobilesam": (None, ())})
        new = Served({}, {}, {}, {}, {}, {"litemedsam": (None, ("layer3", "neck")), "mobilesam": (None, ())})
        engine.install(old)
        for model in ("litemedsam", "mobilesam"):
            engine.cache.put("user:abc", Embedding(model, torch.zeros(1, 4, 2, 2), (8, 8), (8, 8)))
        assert engine.install(new) == ["litemedsam"]
        assert engine.cache.get("user:abc", "litemedsam") is None
        assert engine.cache.get("user:abc", "mobilesam") is not None
        assert engine.install(new) == []  # the same again: nothing to drop
    finally:
        engine.close()


@pytest.fixture(scope="module")
def inverted(tmp_path_factory) -> Path:
    """classifier-us with its last layer negated: it loads and runs (finite outputs) but ranks lesions backwards."""
    def negate(model) -> None:
        model.fc.weight.mul_(-1)
        model.fc.bias.mul_(-1)
    return us_classifier_variant(tmp_path_factory.mktemp("inverted"), negate)


def test_the_gate_refuses_a_version_worse_than_the_active_one(servers, deployed, inverted, busi_dir, tmp_path):
    """A validation folder named by the admin (two benign, two malignant BUSI lesions with their masks): the
    inverted model's AUC there is far below the active version's, so it is refused and nothing is stored."""
    for label in ("benign", "malignant"):
        folder = tmp_path / "val" / "Dataset_BUSI_with_GT" / label
        folder.mkdir(parents=True)
        for i in (1, 2):
            for suffix in ("", "_mask"):
                shutil.copy(busi_dir / label / f"{label} ({i}){suffix}.png", folder)
    with client(servers) as c:
        res = upload(c, inverted, gate_data=str(tmp_path / "val"), gate_roi_source="expert")
        versions = [v["id"] for v in c.get("/v1/models").json()["versions"]["classifier-us"]]
    assert res.status_code == 422 and res.headers["X-Model-Check"] == "gate", res.text
    assert "below the active" in res.json()["error"]["message"]
    assert versions == ["classifier-us-v1", "classifier-us-v2"]
    refusal = c_audit(servers)[-1]
    assert (refusal["action"], refusal["check"]) == ("refuse", "gate")


def test_a_version_with_its_own_sam_decoder_is_deployed_served_and_rolled_back(servers, deployed, busi_dir,
                                                                               tmp_path):
    """A version as `training export` writes it after `finetune-sam`: classifier-us whose box route is a SAM
    decoder of its own (`sam_decoders`, here LiteMedSAM's decoder with its IoU head scaled: another sha256,
    the same masks). It is verified, stored with the decoder, served by the activation (results name the
    decoder's SAM), and a rollback serves the earlier version again."""
    from safetensors.torch import save_file

    from models.manifest import SamDecoderEntry
    from models.sam import load_sam
    folder = us_classifier_variant(tmp_path / "with-decoder", lambda model: model.fc.weight.mul_(1.02))
    decoder = load_sam("litemedsam").model.mask_decoder
    state = {k: v.detach().half().contiguous() for k, v in decoder.state_dict().items()}
    state["iou_prediction_head.layers.2.weight"] = state["iou_prediction_head.layers.2.weight"] * 0.99
    name = "sam-litemedsam-us-decoder.safetensors"
    save_file(state, str(folder / name))
    manifest = read_manifest(folder)
    entry = manifest.models["classifier-us"]
    manifest.models["classifier-us"] = entry.model_copy(update={"input": entry.input.model_copy(
        update={"sam": "litemedsam-us"})})
    manifest.sam_decoders = {"litemedsam-us": SamDecoderEntry(name="litemedsam-us", base="litemedsam", file=name,
                                                              sha256=sha256_file(folder / name), modality="us")}
    (folder / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    files = {n: folder / n for n in (entry.file, entry.sam_probe.file, name)}
    image = sorted((busi_dir / "malignant").glob("malignant (*).png"))[0]
    with client(servers) as c:
        res = upload(c, folder, files=files)
        assert res.status_code == 201, res.text
        version = res.json()["id"]
        stored = servers["home"] / "models" / "versions" / version
        assert name in {p.name for p in stored.iterdir()}
        before = c.get("/v1/models").json()["classifiers"]
        activated = c.post(f"/v1/admin/models/{version}/activate")
        assert activated.status_code == 200, activated.text
        res = c.post("/v1/analyses", files={"file": (image.name, image.read_bytes())},
                     data={"modality": "us", "prompt": json.dumps({"box": [60, 40, 300, 220]})})
        assert res.status_code == 201, res.text
        assert res.json()["segmentation"]["sam_model"] == "litemedsam-us"
        assert res.json()["models"]["classifier"]["id"] == version
        assert c.post("/v1/admin/models/classifier-us/rollback").status_code == 200
        assert c.get("/v1/models").json()["classifiers"] == before


def test_a_replica_with_a_read_only_models_folder_serves_and_names_the_writer(tmp_path):
    """deploy/k8s mounts the models folder read-only in every replica: it starts, serves, and answers admin
    writes with a 503 that names the server that writes the folder, not a 500."""
    import os
    home, models = tmp_path / "home", tmp_path / "models"
    home.mkdir()
    models.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(models)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a read-only folder needs root and mount(8) (a tmpfs remounted read-only)")
    try:
        env = server_env(home, BRANET_MODELS_DIR=str(models))
        token = subprocess.run([BRANET, "users", "add", "root", "--admin", "--no-password"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        subprocess.run([BRANET, "models", "list"], env=env, check=True, capture_output=True)  # the seeding Job's step
        subprocess.run(["mount", "-o", "remount,ro", str(models)], check=True)
        with live_server(home, BRANET_MODELS_DIR=str(models)) as port:
            c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                             timeout=120)
            assert c.get("/v1/models").json()["versions"]["classifier-us"][0]["id"] == "classifier-us-v1"
            manifest = ("manifest", ("manifest.json", b"{}"))
            for res in (c.post("/v1/admin/models/classifier-us-v1/activate"),
                        c.post("/v1/admin/models", data={"role": "classifier-us"},
                               files=[manifest, ("files", ("classifier-us.safetensors", b"0"))])):
                assert res.status_code == 503, res.text
                assert res.json()["error"]["code"] == "models_read_only"
                assert "branet-admin" in res.json()["error"]["message"]
    finally:
        subprocess.run(["umount", str(models)], check=False)


def localiser_variant(out: Path, scale: float, **update) -> Path:
    """A `training export`-style folder holding localiser-us only: the committed one with its last convolution
    scaled by `scale` (another sha256, still a working localiser) and its entry changed by `update`."""
    from safetensors.torch import load_file, save_file

    from models.manifest import Manifest
    from server.settings import Settings
    weights = Settings().weights  # what the servers serve: the committed models/weights (BRANET_WEIGHTS)
    entry = read_manifest(weights).localisers["localiser-us"]
    state = load_file(str(weights / entry.file))
    last = max((k for k in state if k.startswith("body.") and k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    state[last] = (state[last].float() * scale).to(state[last].dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / entry.file))
    entry = entry.model_copy(update={"sha256": sha256_file(out / entry.file), **update})
    (out / "manifest.json").write_text(Manifest(localisers={"localiser-us": entry}).model_dump_json(indent=2))
    return out


def test_a_localiser_version_is_deployed_validated_activated_and_rolled_back(servers, busi_dir, tmp_path):
    """localiser-us is a role like the classifiers' (issue 24): the committed one is version 1; a new one is
    validated (here refused at `load` when it reads another SAM than the box route's), deployed by the CLI,
    activated (automatic results name it) and rolled back."""
    folder = localiser_variant(tmp_path / "localiser", 1.01)
    elsewhere = localiser_variant(tmp_path / "elsewhere", 1.02, sam="mobilesam")
    image = busi_dir / "benign" / "benign (3).png"
    with client(servers) as c:
        listed = c.get("/v1/models").json()
        (v1,) = listed["versions"]["localiser-us"]
        assert v1["id"] == "localiser-us-v1" and v1["active"] and v1["source"] == "committed"
        assert [x["id"] for x in listed["localisers"]] == ["localiser-us-v1"]
        parts = [("manifest", ("manifest.json", (elsewhere / "manifest.json").read_bytes())),
                 ("files", ("localiser-us.safetensors", (elsewhere / "localiser-us.safetensors").read_bytes()))]
        refused = c.post("/v1/admin/models", data={"role": "localiser-us"}, files=parts)
        assert refused.status_code == 422 and refused.headers["X-Model-Check"] == "load", refused.text
        assert "box route is litemedsam" in refused.json()["error"]["message"]
    out = subprocess.run([BRANET, "models", "deploy", str(folder), "--server", f"http://127.0.0.1:{servers['a']}",
                          "--token", servers["tokens"]["root"]], env=server_env(servers["home"]), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"localiser-us-v2: localiser-us sha256 {sha256_file(folder / 'localiser-us.safetensors')[:12]}")
    with client(servers) as c:
        assert [x["id"] for x in c.get("/v1/models").json()["localisers"]] == ["localiser-us-v1"]  # not served yet
        activated = c.post("/v1/admin/models/localiser-us-v2/activate")
        assert activated.status_code == 200 and activated.json()["previous"] == "localiser-us-v1", activated.text
        assert activated.json()["embeddings_dropped"] == []  # the SAM did not change
        res = c.post("/v1/analyses", files={"file": (image.name, image.read_bytes())}, data={"modality": "us"})
        assert res.status_code == 201, res.text
        assert res.json()["segmentation"]["auto_mode"] == "localiser"
        assert res.json()["models"]["localiser"]["id"] == "localiser-us-v2"
        back = c.post("/v1/admin/models/localiser-us/rollback")
        assert back.status_code == 200 and back.json()["active"] == "localiser-us-v1", back.text
        assert [x["id"] for x in c.get("/v1/models").json()["localisers"]] == ["localiser-us-v1"]
