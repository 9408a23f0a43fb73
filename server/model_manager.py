"""Deploying, activating and rolling back model versions in a running server (or, from the CLI, on the
models folder alone), and following activations made by other replicas.

A deploy is validated before anything is served, in this order, and refused (ModelRefused, a 422 naming
the check) at the first check that fails: `manifest` (it parses), `role` (it has the role's entry, of the
role's modality), `files` (every file it names was sent), `sha256` (each file is what the manifest says),
`architecture`, `input_spec` (what the server can feed it), `load` (the classifier, its SAM probe and SAM
decoders load, verified), `smoke` (analyses of real probe images give finite outputs) and, when the admin
names a validation folder, `gate` (its ROC AUC there, as `evaluate` measures it, is not below the active
version's by more than the margin). A refused upload is deleted from the staging folder; only a validated
one is renamed into versions/. The served models are never touched by a deploy.

An activation (or rollback) builds the new Served off the inference thread (reusing every SAM whose
embeddings do not change), records the choice in active.json, then installs it on the inference thread
between two jobs: a job in flight finishes on what it started with, the next one runs on the new version.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.manifest import LocaliserEntry, Manifest, ModelEntry, WeightsError, sha256_file, verified_file
from models.preprocessing import MEAN, STD
from models.sam import SAM_MODELS
from models.segmentation import NoLesionFound, Prompt
from server.engine import Engine, Served, Timer
from server.model_registry import (ROLES, SYSTEM, ModelRegistry, VersionInfo, is_localiser, manifest_for_role, now,
                                   role_modality)
from server.schemas import ModelQuality
from server.settings import Settings

log = logging.getLogger("branet.models")
PROBES_PER_MODALITY = 2
INTENSITIES = ("raw", "percentile")
CLASSES = ["benign", "malignant"]


class ModelRefused(Exception):
    """A deploy or activation failed `check`; nothing served changed."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check, self.message = check, message


class NotFound(Exception):
    pass


class NothingToRollBack(Exception):
    pass


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def needed_files(manifest: Manifest, role: str) -> dict[str, str]:
    """Every file a version of `role` consists of, and its sha256 from the manifest."""
    if is_localiser(role):
        entry = manifest.localisers[role]
        return {entry.file: entry.sha256}
    entry = manifest.models[role]
    files = {entry.file: entry.sha256}
    if entry.sam_probe:
        files[entry.sam_probe.file] = entry.sam_probe.sha256
    for decoder in manifest_for_role(manifest, role).sam_decoders.values():
        files[decoder.file] = decoder.sha256
    return files


def check_localiser(manifest: Manifest, role: str) -> LocaliserEntry:
    """A localiser role: its entry, of the role's modality, on a known SAM, with settings it can be served with
    (that SAM must be the modality's box route: checked at `load`)."""
    entry = manifest.localisers.get(role)
    if entry is None:
        raise ModelRefused("role", f"the manifest has no localiser {role!r} (it lists: "
                                   f"{', '.join(sorted(manifest.localisers)) or 'nothing'})")
    if entry.modality != role_modality(role):
        raise ModelRefused("role", f"the localiser {role!r} is for modality {entry.modality!r}; {role} needs "
                                   f"{role_modality(role)!r}")
    problems = []
    if entry.sam not in set(SAM_MODELS) | set(manifest.sam_decoders):
        problems.append(f"sam {entry.sam!r} is not a known SAM")
    if not (0 <= entry.threshold <= 1 and 0 < entry.level <= 1 and 1 <= entry.limit <= 16):
        problems.append(f"threshold {entry.threshold} / level {entry.level} / limit {entry.limit}")
    if problems:
        raise ModelRefused("input_spec", "; ".join(problems))
    return entry


def check_entry(manifest: Manifest, role: str) -> ModelEntry | LocaliserEntry:
    """`role`, `architecture` and `input_spec`: what the server can serve in this role."""
    if role not in ROLES:
        raise ModelRefused("role", f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    if is_localiser(role):
        return check_localiser(manifest, role)
    if role not in manifest.models:
        raise ModelRefused("role", f"the manifest has no entry {role!r} (it lists: "
                                   f"{', '.join(sorted(manifest.models)) or 'nothing'})")
    entry = manifest.models[role]
    if entry.name != role or entry.modality != role_modality(role):
        raise ModelRefused("role", f"the entry {role!r} is named {entry.name!r} for modality {entry.modality!r}; "
                                   f"{role} needs modality {role_modality(role)!r}")
    if not entry.architecture.startswith("torchvision.resnet18") or entry.classes != CLASSES \
            or not 1 <= entry.members <= 16:
        raise ModelRefused("architecture", f"{role} serves a ResNet18 (or a mean of 1-16) over classes {CLASSES}; "
                                           f"the entry is {entry.architecture!r} x{entry.members} over {entry.classes}")
    spec = entry.input
    sams = set(SAM_MODELS) | set(manifest_for_role(manifest, role).sam_decoders)
    problems = []
    if spec.channels not in (1, 2):
        problems.append(f"channels {spec.channels} (1: gray ROI, 2: ROI + mask)")
    if (spec.mean, spec.std) != (MEAN, STD):
        problems.append(f"normalisation mean {spec.mean}, std {spec.std} (the server's is {MEAN}, {STD})")
    if not 32 <= spec.size <= 1024 or not 0 <= spec.roi_margin <= 1:
        problems.append(f"size {spec.size} / roi_margin {spec.roi_margin}")
    if spec.intensity not in INTENSITIES:
        problems.append(f"intensity {spec.intensity!r} (known: {', '.join(INTENSITIES)})")
    if spec.sam is not None and spec.sam not in sams:
        problems.append(f"input.sam {spec.sam!r} is neither a known SAM nor a SAM decoder of this manifest")
    if entry.sam_probe and entry.sam_probe.sam not in sams:
        problems.append(f"sam_probe.sam {entry.sam_probe.sam!r} is not a known SAM")
    if not (math.isfinite(entry.temperature) and entry.temperature > 0 and 0 <= entry.threshold <= 1):
        problems.append(f"temperature {entry.temperature} / threshold {entry.threshold}")
    if problems:
        raise ModelRefused("input_spec", "; ".join(problems))
    return entry


def probe_images(settings: Settings, modality: str) -> list[tuple[np.ndarray, list[float]]]:
    """Real images of the modality with a box around the lesion (from its mask where the set has one, else
    the image's middle): BRANET_PROBE_IMAGES/<modality>/, else BUSI or mini-MIAS under BRANET_DATA."""
    if settings.probe_images is not None:
        folders = [settings.probe_images / modality]
    elif modality == "us":
        base = settings.data / "busi" / "Dataset_BUSI_with_GT"
        folders = [base / "benign", base / "malignant"]
    else:
        folders = [settings.data / "mias" / "all-mias"]
    paths: list[Path] = []
    for folder in folders:
        found = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".pgm")
                       and "_mask" not in p.stem) if folder.is_dir() else []
        paths += found[:max(1, PROBES_PER_MODALITY // len(folders))]
    out = []
    for path in paths[:PROBES_PER_MODALITY]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        box = [w * 0.3, h * 0.3, w * 0.7, h * 0.7]
        mask_path = path.with_name(f"{path.stem}_mask.png")
        if mask_path.is_file():
            ys, xs = np.nonzero(np.asarray(Image.open(mask_path).convert("L")))
            if len(xs):
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        out.append((rgb, box))
    return out


def smoke_localiser(engine: Engine, served: Served, modality: str,
                    images: list[tuple[np.ndarray, list[float]]]) -> list[float]:
    """The localiser on real images' box-route embeddings (not the cache), and the box route's outline of its best
    candidate where it finds one: the highest lesion probability of each; ModelRefused when it is not a finite
    probability or a candidate box is outside the image. Runs on the inference thread."""
    localiser, _ = served.localisers[modality]
    peaks = []
    for rgb, _box in images:
        segmenter = engine.route(modality, "box", served)
        embedding = segmenter.encode(rgb)
        found = localiser.locate(embedding.features, embedding.input_size, embedding.original_size)
        height, width = rgb.shape[:2]
        if not (math.isfinite(found.peak) and 0 <= found.peak <= 1):
            raise ModelRefused("smoke", f"a probe image gave the lesion probability {found.peak}")
        for c in found.candidates:
            x0, y0, x1, y1 = c.box
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and math.isfinite(c.score)):
                raise ModelRefused("smoke", f"a probe image gave the candidate {c} outside its {width}x{height}")
        if found.found:
            try:
                engine.outline(localiser, segmenter, embedding, found, found.found[0])
            except NoLesionFound:
                pass  # SAM outlining nothing in a region is an answer, not a broken model
        peaks.append(found.peak)
    return peaks


def smoke(engine: Engine, served: Served, modality: str, images: list[tuple[np.ndarray, list[float]]],
          role: str | None = None) -> list[float]:
    """Box-prompted analyses of real images on `served` (not the cache): p(malignant) of each; ModelRefused
    when anything is not finite. A localiser role: `smoke_localiser`. Runs on the inference thread."""
    if role is not None and is_localiser(role):
        return smoke_localiser(engine, served, modality, images)
    ps = []
    for rgb, box in images:
        segmenter = engine.route(modality, "box", served)
        seg = segmenter.predict(segmenter.encode(rgb), Prompt(box=box))
        result = engine.classify(rgb, modality, seg, Timer(), None, served)
        if not (math.isfinite(result.p_malignant) and 0 <= result.p_malignant <= 1 and np.isfinite(result.cam).all()):
            raise ModelRefused("smoke", f"a probe image gave p(malignant) {result.p_malignant} "
                                        f"(finite heat map: {bool(np.isfinite(result.cam).all())})")
        ps.append(result.p_malignant)
    return ps


def gate_auc(folder: Path, weights: Path, role: str, roi_source: str, timeout_s: float = 3600) -> tuple[float, int]:
    """ROC AUC of `role` from `weights` on the lesions in `folder` and their number, computed by the offline
    phase's own `python -m training evaluate` in a child process: the same figures as an admin's evaluation,
    while the server imports nothing from training/ (and the child's memory goes when it ends)."""
    with tempfile.TemporaryDirectory(prefix="branet-gate-") as out:
        try:
            done = subprocess.run([sys.executable, "-m", "training", "evaluate", "--weights", str(weights),
                                   "--data", str(folder), "--out", out, "--modality", role_modality(role),
                                   "--model", role, "--roi-source", roi_source], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ModelRefused("gate", f"evaluating on {folder} took over {timeout_s:g} s") from None
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            raise ModelRefused("gate", said[-1].removeprefix("error:").strip() if said
                               else f"evaluating on {folder} failed: {done.stderr.strip()[-500:]}")
        report = json.loads((Path(out) / "report.json").read_text())
    if report.get("roc_auc") is None:
        raise ModelRefused("gate", f"{folder} needs benign and malignant lesions for an AUC")
    return float(report["roc_auc"]), int(report["n"])


class ModelManager:
    """The models folder and the engine serving its active versions; `engine` None: the folder alone (the
    CLI with the server down), where activations only check the files' sha256."""

    def __init__(self, settings: Settings, registry: ModelRegistry, engine: Engine | None = None):
        self.settings, self.registry, self.engine = settings, registry, engine
        self._lock = threading.Lock()  # one deploy step / activation at a time in this process
        self._failed: dict[str, str] | None = None  # an active set this replica could not load (polling)

    # deploy
    def deploy(self, staging: Path, manifest_bytes: bytes, role: str, actor: str, gate_data: str | None = None,
               gate_margin: float | None = None, gate_roi_source: str = "sam") -> VersionInfo:
        """Validate the upload in `staging` (its files already there) and make it a version; ModelRefused
        (audited, `staging` deleted) at the first failing check."""
        try:
            version = self._validate(staging, manifest_bytes, role, actor, gate_data, gate_margin, gate_roi_source)
            version = self.registry.commit_upload(staging, version)
        except ModelRefused as refused:
            self.registry.discard(staging)
            self.registry.append_audit({"action": "refuse", "actor": actor, "role": role, "check": refused.check,
                                        "message": refused.message})
            raise
        except BaseException:
            self.registry.discard(staging)
            raise
        self.registry.append_audit({"action": "upload", "actor": actor, "role": role, "version": version.id,
                                    "sha256": version.sha256, **({"gate": version.gate} if version.gate else {})})
        return version

    def _validate(self, staging: Path, manifest_bytes: bytes, role: str, actor: str, gate_data: str | None,
                  gate_margin: float | None, gate_roi_source: str) -> VersionInfo:
        try:
            manifest = Manifest.model_validate_json(manifest_bytes)
        except ValueError as e:
            raise ModelRefused("manifest", f"not a weight manifest as `training export` writes it: "
                                           f"{str(e).splitlines()[0]}") from None
        entry = check_entry(manifest, role)
        files = needed_files(manifest, role)
        bad = [name for name in files if not _plain(name)]
        missing = [name for name in files if _plain(name) and not (staging / name).is_file()]
        if bad or missing:
            raise ModelRefused("files", f"the manifest names {', '.join(bad + missing)}, "
                                        + ("not plain file names" if bad else "which were not sent"))
        for name, expected in files.items():
            actual = sha256_file(staging / name)
            if actual != expected:
                raise ModelRefused("sha256", f"{name}: the manifest says {expected}, the file sent is {actual}")
        for extra in set(p.name for p in staging.iterdir()) - set(files):
            (staging / extra).unlink()
        (staging / "manifest.json").write_text(manifest_for_role(manifest, role).model_dump_json(indent=2) + "\n")
        gate = None
        if self.engine is not None:
            modality = role_modality(role)
            dirs = self._active_dirs() | {role: ("candidate", staging)}
            try:
                candidate = self.engine.build(dirs, self.engine.served, keep=False)
            except (WeightsError, ValueError, RuntimeError) as e:
                raise ModelRefused("load", str(e)) from None
            images = probe_images(self.settings, modality)
            if not images:
                raise ModelRefused("smoke", f"no probe images of {modality} (BRANET_PROBE_IMAGES or BRANET_DATA)")
            try:
                self.engine.on_inference_thread(smoke, self.engine, candidate, modality, images, role)
            except ModelRefused:
                raise
            except Exception as e:  # a network that loads but cannot run
                raise ModelRefused("smoke", f"{type(e).__name__}: {e}") from None
        if gate_data and is_localiser(role):
            raise ModelRefused("gate", f"the gate measures a classifier's AUC; {role} is a localiser")
        if gate_data:
            gate = self._gate(staging, role, gate_data, gate_margin, gate_roi_source)
        return VersionInfo(id="", role=role, sha256=entry.sha256, files=files, source="upload", deployed_by=actor,
                           deployed_at=now(), gate=gate)

    def _gate(self, staging: Path, role: str, gate_data: str, margin: float | None, roi_source: str) -> dict:
        folder = Path(gate_data)
        folder = folder if folder.is_absolute() else self.settings.data / folder
        if not folder.is_dir():
            raise ModelRefused("gate", f"no validation folder {gate_data} (relative: under BRANET_DATA)")
        margin = self.settings.gate_margin if margin is None else margin
        active, active_dir = self.registry.active_dirs()[role]
        auc, n = gate_auc(folder, staging, role, roi_source)
        active_auc, _ = gate_auc(folder, active_dir, role, roi_source)
        gate = {"data": str(folder), "n": n, "roi_source": roi_source, "auc": round(auc, 4),
                "active": active.id, "active_auc": round(active_auc, 4), "margin": margin}
        if auc < active_auc - margin:
            raise ModelRefused("gate", f"AUC {auc:.4f} on {folder} ({n} lesions) is below the active {active.id}'s "
                                       f"{active_auc:.4f} by more than {margin}")
        return gate

    # activation
    def _active_dirs(self) -> dict[str, tuple[str, Path]]:
        return {role: (v.id, d) for role, (v, d) in self.registry.active_dirs().items()}

    def activate(self, version_id: str, actor: str) -> dict[str, Any]:
        version = self.registry.version(version_id)
        if version is None:
            raise NotFound(f"no model version {version_id}")
        return self._switch(version, actor, rollback=False)

    def rollback(self, role: str, actor: str) -> dict[str, Any]:
        if role not in ROLES:
            raise NotFound(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        state = self.registry.active().roles.get(role)
        if state is None or not state.previous:
            raise NothingToRollBack(f"{role} has no earlier active version to roll back to")
        version = self.registry.version(state.previous[-1])
        if version is None:
            raise NotFound(f"no model version {state.previous[-1]}")
        return self._switch(version, actor, rollback=True)

    def _switch(self, version: VersionInfo, actor: str, rollback: bool) -> dict[str, Any]:
        action = "rollback" if rollback else "activate"
        with self._lock:
            before = self.registry.active().roles.get(version.role)
            try:
                candidate = self._candidate(version)
            except ModelRefused as refused:
                self.registry.append_audit({"action": "refuse", "actor": actor, "role": version.role,
                                            "version": version.id, "check": refused.check,
                                            "message": f"{action}: {refused.message}"})
                raise
            state = self.registry.activate(version.role, version.id, actor, rollback=rollback)
            dropped = []
            if self.engine is not None and candidate is not None:
                dropped = self.engine.on_inference_thread(self.engine.install, candidate, state.serial)
            self.registry.append_audit({"action": action, "actor": actor, "role": version.role, "version": version.id,
                                        "sha256": version.sha256, "previous": before.active if before else None,
                                        "embeddings_dropped": dropped})
        return {"role": version.role, "active": version.id, "previous": before.active if before else None,
                "sha256": version.sha256, "serial": state.serial, "embeddings_dropped": dropped}

    def _candidate(self, version: VersionInfo) -> Served | None:
        """The Served with `version` in its role (None without an engine: its files' sha256 checked only)."""
        weights = self.registry.weights_dir(version)
        if self.engine is None:
            try:
                for name, sha in version.files.items():
                    verified_file(weights / name, sha, "model file")
            except WeightsError as e:
                raise ModelRefused("sha256", str(e)) from None
            return None
        dirs = self._active_dirs() | {version.role: (version.id, weights)}
        try:
            return self.engine.build(dirs, self.engine.served)
        except (WeightsError, ValueError, RuntimeError) as e:
            raise ModelRefused("load", str(e)) from None

    # following the folder (other replicas, the CLI)
    def follow(self) -> bool:
        """Serve the folder's active versions if they are not what is served; True when it swapped. A set
        that fails to load is logged once and skipped until the folder changes again."""
        if self.engine is None:
            return False
        wanted = {role: state.active for role, state in self.registry.active().roles.items()}
        served = self.engine.served.role_versions()
        if wanted == served or wanted == self._failed:
            return False
        with self._lock:
            try:
                dirs = self._active_dirs()
                serial = self.registry.serial()
                candidate = self.engine.build(dirs, self.engine.served)
            except (WeightsError, ValueError, RuntimeError) as e:
                log.error("branet: the models folder's active versions %s cannot be served (%s); still serving %s",
                          wanted, e, served)
                self._failed = wanted
                return False
            self.engine.on_inference_thread(self.engine.install, candidate, serial)
            self._failed = None
        log.warning("branet: now serving %s (from the models folder)", wanted)
        return True

    # reading
    def listing(self) -> dict[str, list[dict[str, Any]]]:
        """Per role its versions, oldest first, with who deployed and activated each and its measured quality."""
        state = self.registry.active()
        out: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
        for version in self.registry.versions():
            try:
                entry = self.registry.entry(version)
                metrics, regime, threshold = entry.metrics, getattr(entry, "regime", None), entry.threshold
            except (WeightsError, KeyError):
                metrics, regime, threshold = {}, None, None
            activation = state.activations.get(version.id, {})
            role_state = state.roles.get(version.role)
            out.setdefault(version.role, []).append({
                **version.model_dump(exclude={"weights_dir"}),
                "active": role_state is not None and role_state.active == version.id,
                "activated_by": activation.get("by"), "activated_at": activation.get("at"),
                "regime": regime, "threshold": threshold, "quality": ModelQuality.from_metrics(metrics)})
        return out


def actor_name(user) -> str:
    return getattr(user, "name", None) or SYSTEM
