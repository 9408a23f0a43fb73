"""SAM image encoders on an inference runtime (issue 28): OpenVINO, ONNX Runtime, or PyTorch itself.

The TinyViT image encoders of the packaged SAMs (LiteMedSAM at 256 px, MobileSAM at 1024 px) are
exported to ONNX at `make install` (models.encoder_export) from their sha256-verified checkpoints, with
every output a SAM probe reads: the neck (SAM's image embedding) and the TinyViT stages `layer0` ..
`layer3` as (1, C, h, w) maps, and checked against PyTorch on real BUSI images under every runtime and
precision; `encoders.json` next to the files records the file's sha256, the checkpoint's, the versions
it was made and checked with, and the figures. Loading refuses (WeightsError, "run `make install`") a file that changed, a record made from another
checkpoint or with other runtime versions, and a runtime/precision whose check did not pass.

Their prompt encoders and mask decoders are exported too (models.encoder_export.PromptDecoder: box
corners and points in, the low-resolution mask logits and predicted IoUs of all four mask tokens out),
checked the same way and run on the encoder's runtime at f32,
so a re-prompt on a cached embedding costs a few milliseconds. A fine-tuned decoder (`finetune-sam`)
and the automatic mask generator's batched prompts run on PyTorch.

Settings (environment): BRANET_ENCODER_RUNTIME = openvino | onnxruntime | torch, and
BRANET_ENCODER_PRECISION = f32 | bf16 (bf16: OpenVINO only). Defaults, by measurement (bench/README.md):
on a CPU the first of openvino, onnxruntime whose check passed at install, at f32; on CUDA `torch`.
The runtimes use torch.get_num_threads() threads (read at each call), so a job run with 1 torch thread
keeps OpenVINO and ONNX Runtime at 1 thread too.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from models.files import WeightsError, sha256_file
from models.sam import SAM_MODELS, LoadedSam

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
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")
ENV_RUNTIME, ENV_PRECISION = "BRANET_ENCODER_RUNTIME", "BRANET_ENCODER_PRECISION"

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
    record = read_record(folder or ENCODERS_DIR)
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


# runtimes
class CompiledModel:
    """One exported file on one runtime: `__call__(*tensors)` (its inputs, in order) -> {output name: float32
    tensor}. Compiled on first use with torch.get_num_threads() threads, and again if that number changes."""

    def __init__(self, name: str, path: Path, runtime: str, precision: str, sha256: str | None = None,
                 inputs: tuple[str, ...] = ("image",), outputs: tuple[str, ...] = OUTPUTS):
        self.name, self.path, self.runtime, self.precision = name, Path(path), runtime, precision
        self.sha256 = sha256  # the exported file's, as verified at load
        self.inputs, self.outputs = inputs, outputs
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

            def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
                request.infer(dict(enumerate(arrays)))
                return [request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
            return run
        if self.runtime == "onnxruntime":
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.threads = threads
            return lambda arrays: session.run(list(self.outputs), dict(zip(self.inputs, arrays)))
        raise ValueError(f"no compiled model on {self.runtime}")

    def __call__(self, *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        threads = torch.get_num_threads()
        arrays = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in tensors]
        with self._lock:
            if self._run is None or threads != self._threads:
                self._run, self._threads = self._compile(threads), threads
            outs = self._run(arrays)
        return {name: torch.from_numpy(out).to(tensors[0].device) for name, out in zip(self.outputs, outs)}


def read_record(folder: Path) -> dict:
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_encoder(sam: LoadedSam, runtime: str, precision: str, folder: Path | None = None) -> CompiledModel | None:
    """The verified exported encoder of `sam` on `runtime` (None for torch, or a SAM that is not
    exported); WeightsError, saying to run `make install`, for anything that does not match."""
    name = encoder_name(sam)
    if runtime == "torch" or name not in EXPORTED:
        return None
    folder = Path(folder or ENCODERS_DIR)
    entry = read_record(folder).get(name)
    path, digest = _verified(entry, folder / f"{name}.onnx", f"{name}'s image encoder", runtime, precision)
    return CompiledModel(name, path, runtime, precision, digest)


def load_decoder(sam: LoadedSam, runtime: str, folder: Path | None = None) -> CompiledModel | None:
    """The verified exported prompt encoder + mask decoder of `sam` on `runtime`, at f32 (None for torch,
    a SAM that is not exported, or a fine-tuned decoder: those run on PyTorch); WeightsError, saying to
    run `make install`, for anything that does not match."""
    if runtime == "torch" or sam.name not in EXPORTED or sam.base is not None:
        return None
    folder = Path(folder or ENCODERS_DIR)
    entry = read_record(folder).get(sam.name)
    decoder = entry.get("decoder") if entry else None
    label = f"{sam.name}'s mask decoder"
    if decoder is not None:
        decoder = {**decoder, "checkpoint_sha256": entry.get("checkpoint_sha256"), "versions": entry.get("versions")}
    path, digest = _verified(decoder, folder / f"{sam.name}-decoder.onnx", label, runtime, "f32")
    return CompiledModel(f"{sam.name}-decoder", path, runtime, "f32", digest, DECODER_INPUTS, DECODER_OUTPUTS)


def _verified(entry: dict | None, path: Path, what: str, runtime: str, precision: str) -> tuple[Path, str]:
    """`path` and its sha256 if its record `entry` says it is the file exported from the installed
    checkpoint with the installed runtimes, and checked on `runtime` at `precision`; else WeightsError."""
    name = path.stem.removesuffix("-decoder")
    fix = "run `make install`, which exports and checks it from the verified checkpoint"
    if entry is None or not path.is_file():
        raise WeightsError(f"{what} for {runtime} is missing from {path.parent}: {fix}")
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
    if any((entry.get("versions") or {}).get(p) != now[p] for p in wanted):
        made = ", ".join(f"{p} {(entry.get('versions') or {}).get(p)}" for p in wanted)
        raise WeightsError(f"{path} was checked with {made}; installed: {', '.join(f'{p} {now[p]}' for p in wanted)}; "
                           f"{fix}")
    check = entry.get("checks", {}).get(f"{runtime}-{precision}")
    if not check or not check.get("passed"):
        raise WeightsError(f"{what} on {runtime} at {precision} did not pass the equivalence check at "
                           f"install ({check}); use another {ENV_RUNTIME}/{ENV_PRECISION}, or {fix}")
    return path, digest
