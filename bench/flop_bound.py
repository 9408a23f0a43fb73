"""How fast this CPU could run LiteMedSAM at best: its FLOPs against this host's measured matrix-product rate.

    .venv/bin/python bench/flop_bound.py [--data ../shared/data] [--repeats 10] [--out bench/results/flop_bound.json]

Issue 28's targets (bare analysis <= 0.35 s, re-prompt <= 20 ms server side) are wall times; whether a host
can meet them at all is set by the work and the host's arithmetic rate:
1. the FLOPs (2 per multiply-add, torch's FlopCounterMode) of the served paths: LiteMedSAM's image encoder
   with every output the SAM probe reads (`AllOutputs`, as exported) and its prompt encoder + mask decoder
   with a box (`PromptDecoder`, as exported);
2. this host's rate: a 2048 x 2048 matrix product in PyTorch at the torch thread count, float32 and bfloat16
   (median of `--repeats`);
3. the served runtime's time for both (OpenVINO through models.encoder_runtime, as the server loads them, on a
   real BUSI image) and, for comparison only, the encoder at bf16 (refused for serving where `make install`'s
   check failed: timed from the exported file directly).
It prints, for each, the lower bound FLOPs / rate and the share of that rate the runtime reaches.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.encoder_export import AllOutputs, PromptDecoder  # noqa: E402
from models.encoder_runtime import ENCODERS_DIR, CompiledModel, load_decoder, load_encoder, read_record  # noqa: E402
from models.sam import load_sam  # noqa: E402
from models.segmentation import SamSegmenter  # noqa: E402

IMAGE = "busi/Dataset_BUSI_with_GT/benign/benign (1).png"


def flops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return float(counter.get_total_flops())


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    """FLOP/s of an n x n matrix product at this torch thread count."""
    a = torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / median_s(lambda: a @ a, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BRANET_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()

    sam = load_sam("litemedsam")
    segmenter = SamSegmenter(sam, runtime="openvino", precision="f32")
    rgb = np.asarray(Image.open(args.data / IMAGE).convert("RGB"))
    # the encoder's input as SamPredictor.set_image builds it: resized to the longest side, normalised, padded
    resized = segmenter.predictor.transform.apply_image(segmenter.model_input(rgb))
    x = sam.model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
    embedding = segmenter.encode(rgb).features
    h, w = x.shape[-2:]
    points = torch.tensor([[[0.25 * w, 0.3 * h], [0.6 * w, 0.7 * h]]])  # a box: its two corners
    labels = torch.tensor([[2.0, 3.0]])

    work = {"encoder": flops(AllOutputs(sam.model.image_encoder).eval(), x),
            "decoder": flops(PromptDecoder(sam.model).eval(), embedding, points, labels)}
    rate = {"f32": matmul_rate(torch.float32, args.repeats), "bf16": matmul_rate(torch.bfloat16, args.repeats)}

    encoder, decoder = load_encoder(sam, "openvino", "f32"), load_decoder(sam, "openvino")
    bf16 = CompiledModel("litemedsam", ENCODERS_DIR / "litemedsam.onnx", "openvino", "bf16")
    measured = {"encoder f32": (work["encoder"], "f32", median_s(lambda: encoder(x), args.repeats)),
                "encoder bf16 (not served)": (work["encoder"], "bf16", median_s(lambda: bf16(x), args.repeats)),
                "decoder f32": (work["decoder"], "f32", median_s(lambda: decoder(embedding, points, labels),
                                                                args.repeats))}
    bf16_check = read_record(ENCODERS_DIR).get("litemedsam", {}).get("checks", {}).get("openvino-bf16", {})

    print(f"host: {torch.get_num_threads()} torch threads; 2048^2 matmul f32 {rate['f32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {rate['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"{'path':>26} {'GFLOP':>7} {'bound ms':>9} {'OpenVINO ms':>12} {'of rate':>8}")
    rows = {}
    for path, (n, precision, seconds) in measured.items():
        bound = n / rate[precision]
        rows[path] = {"gflop": n / 1e9, "bound_ms": bound * 1000, "measured_ms": seconds * 1000,
                      "share_of_rate": bound / seconds}
        print(f"{path:>26} {n / 1e9:7.2f} {bound * 1000:9.1f} {seconds * 1000:12.1f} {bound / seconds:8.2f}")
    print(f"LiteMedSAM bf16 install check: passed={bf16_check.get('passed')} "
          f"(min cosine {bf16_check.get('min_cosine')}, box Dice {bf16_check.get('dice')})")
    if args.out:
        args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "matmul_gflops": {
            k: v / 1e9 for k, v in rate.items()}, "paths": rows, "litemedsam_bf16_check": bf16_check,
            "cpu": _cpu_name()}, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
