"""SAM image encoders on an inference runtime (issue 28): OpenVINO, ONNX Runtime, or PyTorch itself.

The TinyViT image encoders of the packaged SAMs (LiteMedSAM at 256 px, MobileSAM at 1024 px) are
exported to ONNX at `make install` (`python -m models.encoder_runtime`) from their sha256-verified
checkpoints, with every output a SAM probe reads: the neck (SAM's image embedding) and the TinyViT
stages `layer0` .. `layer3` as (1, C, h, w) maps. Each file is checked against the PyTorch encoder on
real BUSI images (BRANET_DATA/busi; a deterministic synthetic image when the data is missing, and
the record says so) under every runtime and precision, and `encoders.json` next to the files records
the file's sha256, the checkpoint's, the versions it was made and checked with, and the figures.
Loading refuses (WeightsError, "run `make install`") a file that changed, a record made from another
checkpoint or with other runtime versions, and a runtime/precision whose check did not pass.

Settings (environment): BRANET_ENCODER_RUNTIME = openvino | onnxruntime | torch, and
BRANET_ENCODER_PRECISION = f32 | bf16 (bf16: OpenVINO only). Defaults, by measurement (bench/README.md):
on a CPU the first of openvino, onnxruntime whose check passed at install, at f32; on CUDA `torch`.
The runtimes use torch.get_num_threads() threads (read at each call), so a job run with 1 torch thread
keeps OpenVINO and ONNX Runtime at 1 thread too.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.manifest import WeightsError, sha256_file
from models.sam import SAM_MODELS, LoadedSam, load_sam

RUNTIMES = ("openvino", "onnxruntime", "torch")
PRECISIONS = ("f32", "bf16")
# Which (runtime, precision) pairs exist; bf16 is OpenVINO's INFERENCE_PRECISION_HINT.
OFFERED = {("openvino", "f32"), ("openvino", "bf16"), ("onnxruntime", "f32"), ("torch", "f32")}
CPU_PREFERENCE = ("openvino", "onnxruntime")  # fastest first, measured (bench/README.md, TOOLCHAIN.md)
EXPORTED = ("litemedsam", "mobilesam")  # TinyViT encoders; other SAMs (vit_b/l/h) run on torch
OUTPUTS = ("neck", "layer0", "layer1", "layer2", "layer3")
ENCODERS_DIR = Path(sys.prefix) / "share" / "branet" / "encoders"
RECORD = "encoders.json"
OPSET = 17
ENV_RUNTIME, ENV_PRECISION = "BRANET_ENCODER_RUNTIME", "BRANET_ENCODER_PRECISION"

# The install-time equivalence check, per precision: every output close to PyTorch's, and the box
# masks SAM's decoder draws from the runtime's embedding agree with PyTorch's.
F32_MAX_REL = 1e-4  # largest |difference| / largest |PyTorch value| of an output; measured <= 6e-6
MIN_COSINE = {"f32": 0.99999, "bf16": 0.999}
MIN_DICE = 0.99
CHECK_IMAGES = ("benign/benign (1).png", "benign/benign (4).png", "malignant/malignant (1).png")


class EncoderSettingError(WeightsError):
    """BRANET_ENCODER_RUNTIME / BRANET_ENCODER_PRECISION hold a value that is not offered."""


def versions() -> dict[str, str]:
    """The packages that make and run the exported files; a record made with others is refused."""
    return {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "onnx", "openvino", "onnxruntime")}


def encoder_name(sam: LoadedSam) -> str:
    """The packaged SAM whose image encoder `sam` uses (a fine-tuned decoder keeps its base's encoder)."""
    return sam.base or sam.name


def choose(device: str | torch.device, runtime: str | None = None, precision: str | None = None,
           folder: Path | None = None) -> tuple[str, str]:
    """The (runtime, precision) in use: the arguments, else the settings, else the measured default for
    the device. EncoderSettingError for a value that is not offered."""
    runtime = runtime or os.environ.get(ENV_RUNTIME) or None
    precision = precision or os.environ.get(ENV_PRECISION) or None
    if runtime is not None and runtime not in RUNTIMES:
        raise EncoderSettingError(f"{ENV_RUNTIME}={runtime!r} is not a runtime here; use one of {', '.join(RUNTIMES)}")
    if precision is not None and precision not in PRECISIONS:
        raise EncoderSettingError(f"{ENV_PRECISION}={precision!r} is not a precision here; use one of "
                                  f"{', '.join(PRECISIONS)}")
    if runtime is None:
        runtime = default_runtime(device, folder)
    precision = precision or "f32"
    if (runtime, precision) not in OFFERED:
        raise EncoderSettingError(f"{ENV_PRECISION}={precision} is not offered on {runtime} "
                                  f"(bf16 runs on openvino only); use f32")
    return runtime, precision


def default_runtime(device: str | torch.device, folder: Path | None = None) -> str:
    """On CUDA torch; on a CPU the fastest runtime whose install check passed (torch if none did; the
    fastest if nothing is built yet, so that loading says to run `make install`)."""
    if torch.device(device).type != "cpu":
        return "torch"
    record = _read_record(folder or ENCODERS_DIR)
    if any(name not in record for name in EXPORTED):
        return CPU_PREFERENCE[0]  # not built: loading it says to run `make install`
    for runtime in CPU_PREFERENCE:
        if all(record[name].get("checks", {}).get(f"{runtime}-f32", {}).get("passed") for name in EXPORTED):
            return runtime
    return "torch"


def identity(sam_name: str, device: str | torch.device = "cpu", runtime: str | None = None,
             precision: str | None = None) -> str:
    """`runtime-precision` of `sam_name`'s image encoder as SamSegmenter resolves it, for cache keys: cached
    numbers come from the path in use (a packaged SAM that is not exported always runs on torch)."""
    if sam_name in SAM_MODELS and sam_name not in EXPORTED:
        return "torch-f32"
    return "-".join(choose(device, runtime, precision))


# export
class AllOutputs(torch.nn.Module):
    """A TinyViT image encoder returning the neck and every stage, as (1, C, h, w) maps (TinyViT's
    attention stages give (1, h*w, C) tokens on a square grid: the same reshape as the stage hooks)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor):
        e = self.encoder
        x = e.patch_embed(x)
        stages = []
        for layer in e.layers:
            x = layer(x)
            stages.append(_grid(x))
        b, _, c = x.size()
        neck = e.neck(x.view(b, 64, 64, c).permute(0, 3, 1, 2))
        return (neck, *stages)


def _grid(out: torch.Tensor) -> torch.Tensor:
    if out.ndim == 3:
        side = math.isqrt(int(out.shape[1]))  # a constant at the exported fixed input size
        out = out.transpose(1, 2).reshape(int(out.shape[0]), -1, side, side)
    return out


def export(sam: LoadedSam, path: Path) -> None:
    """`sam`'s image encoder as ONNX (opset 17) at its fixed input size, outputs OUTPUTS."""
    size = sam.model.image_encoder.img_size
    wrapper = AllOutputs(sam.model.image_encoder).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about len() are harmless at a fixed size
        torch.onnx.export(wrapper, (x,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=list(OUTPUTS))


# runtimes
class CompiledEncoder:
    """One exported encoder on one runtime: `__call__(x)` -> {output name: (1, C, h, w) float32 tensor}.

    Compiled on first use with torch.get_num_threads() threads, and again if that number changes."""

    def __init__(self, name: str, path: Path, runtime: str, precision: str, sha256: str | None = None):
        self.name, self.path, self.runtime, self.precision = name, Path(path), runtime, precision
        self.sha256 = sha256  # the exported file's, as verified at load
        self._threads = 0
        self.threads = 0  # what the compiled model runs with (0: not compiled yet)
        self._run = None
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def _compile(self, threads: int):
        if self.runtime == "openvino":
            import openvino as ov
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(self.path)), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": self.precision,
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                # no pinning: parallel 1-thread jobs must not all land on the same core
                "ENABLE_CPU_PINNING": False})
            request = compiled.create_infer_request()
            self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))

            def run(x: np.ndarray) -> list[np.ndarray]:
                request.infer({0: x})
                return [request.get_output_tensor(i).data.copy() for i in range(len(OUTPUTS))]
            return run
        if self.runtime == "onnxruntime":
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.threads = threads
            return lambda x: session.run(list(OUTPUTS), {"image": x})
        raise ValueError(f"no compiled encoder on {self.runtime}")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        threads = torch.get_num_threads()
        with self._lock:
            if self._run is None or threads != self._threads:
                self._run, self._threads = self._compile(threads), threads
            outs = self._run(np.ascontiguousarray(x.detach().float().cpu().numpy()))
        return {name: torch.from_numpy(out).to(x.device) for name, out in zip(OUTPUTS, outs)}


def _read_record(folder: Path) -> dict:
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_encoder(sam: LoadedSam, runtime: str, precision: str, folder: Path | None = None) -> CompiledEncoder | None:
    """The verified exported encoder of `sam` on `runtime` (None for torch, or a SAM that is not
    exported); WeightsError, saying to run `make install`, for anything that does not match."""
    name = encoder_name(sam)
    if runtime == "torch" or name not in EXPORTED:
        return None
    folder = Path(folder or ENCODERS_DIR)
    fix = "run `make install`, which exports and checks it from the verified checkpoint"
    entry = _read_record(folder).get(name)
    path = folder / f"{name}.onnx"
    if entry is None or not path.is_file():
        raise WeightsError(f"{name}'s image encoder for {runtime} is missing from {folder}: {fix}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise WeightsError(f"{path} has sha256 {digest[:12]}, but {RECORD} recorded {str(entry.get('sha256'))[:12]} "
                           f"when it was exported and checked: the file changed; {fix}")
    checkpoint = SAM_MODELS[name].sha256
    if entry.get("checkpoint_sha256") != checkpoint:
        raise WeightsError(f"{path} was exported from checkpoint {str(entry.get('checkpoint_sha256'))[:12]}, "
                           f"but {name}'s checkpoint is {checkpoint[:12]}; {fix}")
    now = versions()
    wanted = ("torch", "onnx", runtime)
    if any(entry.get("versions", {}).get(p) != now[p] for p in wanted):
        made = ", ".join(f"{p} {entry.get('versions', {}).get(p)}" for p in wanted)
        raise WeightsError(f"{path} was checked with {made}; installed: {', '.join(f'{p} {now[p]}' for p in wanted)}; "
                           f"{fix}")
    check = entry.get("checks", {}).get(f"{runtime}-{precision}")
    if not check or not check.get("passed"):
        raise WeightsError(f"{name}'s image encoder on {runtime} at {precision} did not pass the equivalence check at "
                           f"install ({check}); use another {ENV_RUNTIME}/{ENV_PRECISION}, or {fix}")
    return CompiledEncoder(name, path, runtime, precision, digest)


# the install step: export, check, record
def check_images(name: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, RGB image, lesion box x0 y0 x1 y1) for the check: BUSI images from BRANET_DATA, else one
    deterministic synthetic image."""
    from PIL import Image
    busi = Path(os.environ.get("BRANET_DATA", "../shared/data")) / "busi" / "Dataset_BUSI_with_GT"
    out = []
    for rel in CHECK_IMAGES:
        image, mask = busi / rel, busi / rel.replace(".png", "_mask.png")
        if image.is_file() and mask.is_file():
            ys, xs = np.nonzero(np.asarray(Image.open(mask).convert("L")) > 0)
            out.append((f"busi/{rel}", np.asarray(Image.open(image).convert("RGB")),
                        np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)))
    if out:
        return out
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:360, :480]
    lesion = ((yy - 170) / 60.0) ** 2 + ((xx - 250) / 90.0) ** 2 <= 1
    gray = np.clip(rng.normal(120, 30, (360, 480)) - 70 * lesion, 0, 255).astype(np.uint8)
    return [("synthetic (BRANET_DATA/busi missing)", np.stack([gray] * 3, axis=-1),
             np.array([160, 110, 341, 231], dtype=np.float32))]


def compare(reference, candidate) -> dict:
    """Over the outputs: the largest absolute difference, the largest relative to the output's largest
    PyTorch value, the smallest cosine; and the box masks' Dice."""
    worst_abs, worst_rel, worst_cos = 0.0, 0.0, 1.0
    for name in OUTPUTS:
        a, b = reference[0][name].double().flatten(), candidate[0][name].double().flatten()
        diff = float((a - b).abs().max())
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / max(float(a.abs().max()), 1e-12))
        worst_cos = min(worst_cos, float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    m, n = reference[1], candidate[1]
    dice = float(2 * (m & n).sum() / max(1, m.sum() + n.sum()))
    return {"max_abs": worst_abs, "max_rel": worst_rel, "min_cosine": worst_cos, "dice": dice}


def _passes(figures: dict, precision: str) -> bool:
    return (figures["min_cosine"] >= MIN_COSINE[precision] and figures["dice"] >= MIN_DICE
            and (precision != "f32" or figures["max_rel"] <= F32_MAX_REL))


def cpu_has_bf16() -> bool:
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _outputs_and_mask(segmenter, rgb: np.ndarray, box: np.ndarray):
    from models.segmentation import Prompt
    embedding = segmenter.encode(rgb)
    outs = {"neck": embedding.features, **embedding.stages}
    mask = segmenter.predict(embedding, Prompt(box=[float(v) for v in box])).mask
    return outs, mask


def build_one(name: str, folder: Path) -> dict:
    """Export `name`'s encoder into `folder`, check it under every offered runtime/precision, and
    return its record entry (the file is in place only once checked)."""
    from models.segmentation import SamSegmenter
    sam = load_sam(name)
    stages = tuple(o for o in OUTPUTS if o != "neck")
    reference = SamSegmenter(sam, stages=stages, runtime="torch")
    candidate = SamSegmenter(sam, stages=stages, runtime="torch")
    images = check_images(name)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / f"{name}.onnx"
        export(sam, path)
        refs = [_outputs_and_mask(reference, rgb, box) for _, rgb, box in images]
        checks = {}
        for runtime, precision in sorted(OFFERED):
            if runtime == "torch":
                continue
            if precision == "bf16" and not cpu_has_bf16():
                checks[f"{runtime}-{precision}"] = {"passed": False, "note": "this CPU offers no bf16 (OpenVINO's "
                                                    "OPTIMIZATION_CAPABILITIES): it would run f32"}
                continue
            candidate.encoder = CompiledEncoder(name, path, runtime, precision)
            per_image = [compare(ref, _outputs_and_mask(candidate, rgb, box)) for ref, (_, rgb, box) in zip(refs, images)]
            figures = {"max_abs": max(f["max_abs"] for f in per_image), "max_rel": max(f["max_rel"] for f in per_image),
                       "min_cosine": min(f["min_cosine"] for f in per_image),
                       "dice": min(f["dice"] for f in per_image)}
            checks[f"{runtime}-{precision}"] = {**figures, "passed": _passes(figures, precision)}
            print(f"{name} {runtime}-{precision}: {checks[f'{runtime}-{precision}']}", file=sys.stderr)
        os.replace(path, folder / f"{name}.onnx")
    final = folder / f"{name}.onnx"
    return {"file": final.name, "sha256": sha256_file(final), "checkpoint_sha256": sam.sha256,
            "input_size": sam.model.image_encoder.img_size, "outputs": list(OUTPUTS), "opset": OPSET,
            "versions": versions(), "checked_on": [label for label, _, _ in images],
            "thresholds": {"f32_max_rel": F32_MAX_REL, "min_cosine": MIN_COSINE, "min_dice": MIN_DICE},
            "checks": checks}


def _current(entry: dict | None, name: str, folder: Path) -> bool:
    path = folder / f"{name}.onnx"
    return bool(entry) and path.is_file() and entry.get("sha256") == sha256_file(path) \
        and entry.get("checkpoint_sha256") == SAM_MODELS[name].sha256 and entry.get("versions") == versions()


def build(folder: Path = ENCODERS_DIR, names: tuple[str, ...] = EXPORTED, force: bool = False) -> dict:
    """Export and check every encoder not already current in `folder`; write the record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_record(folder)
    for name in names:
        if force or not _current(record.get(name), name, folder):
            record[name] = build_one(name, folder)
            tmp = folder / f"{RECORD}.part"
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.replace(folder / RECORD)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ENCODERS_DIR)
    parser.add_argument("--force", action="store_true", help="export and check again even if current")
    parser.add_argument("names", nargs="*", default=list(EXPORTED), help=f"any of {', '.join(EXPORTED)}")
    args = parser.parse_args()
    if set(args.names) - set(EXPORTED):
        parser.error(f"only {', '.join(EXPORTED)} are exported")
    record = build(args.out, tuple(args.names), args.force)
    for name in args.names:
        e = record[name]
        print(f"{args.out / e['file']}: checked on {len(e['checked_on'])} image(s) ({e['checked_on'][0]}...): "
              + ", ".join(f"{k} {'ok' if v['passed'] else v.get('note', 'FAILED')}" for k, v in e["checks"].items()))


if __name__ == "__main__":
    main()
