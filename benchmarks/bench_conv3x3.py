"""Benchmark: can a Winograd 3×3 convolution make the ResNet-101 trunk's training step cheaper?

About half the trunk's arithmetic is in its 3×3 convolutions (dilated 2 and 4 at output stride 8).
Winograd F(m×m, 3×3) computes them with 2.25× (m = 2) or 4× (m = 4) fewer multiplications and
differs from the direct convolution only by rounding. This script times, on the trunk's own
shapes (batch of 2, 32×32 maps), forward + backward (input and weight gradients) of

- ``direct``: ``torch.nn.functional.conv2d`` (oneDNN on the CPU, cuDNN on CUDA);
- ``winograd2`` / ``winograd4``: a Winograd convolution written with torch matrix products
  (dilation handled by splitting the map into dilation² interleaved sub-maps), differentiated by
  autograd;

and prints JSON with the median milliseconds per shape, the relative error of output and gradients
against ``direct``, and the trunk total (each shape's time × its number of occurrences in
ResNet-101). It is a measurement, not a code path of the model: the model uses ``direct``.

    .venv/bin/python benchmarks/bench_conv3x3.py [--device cpu] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import synchronizer, tf32_settings, time_calls  # noqa: E402
from util.device import resolve_device  # noqa: E402
from util.errors import InputError  # noqa: E402

# (channels, dilation, occurrences) of the stride-1 3×3 convolutions of the OS-8 ResNet-101 trunk
# at 32×32 for a 256×256 input: layer2 blocks 2-4, layer3 block 1 (dilation 1) and blocks 2-23,
# layer4 block 1 (dilation 2) and blocks 2-3
TRUNK_SHAPES = ((128, 1, 3), (256, 1, 1), (256, 2, 22), (512, 2, 1), (512, 4, 2))

# Winograd transforms for the interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), with
# the point at infinity: (B^T, G, A^T) as rows
WINOGRAD = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def transforms(m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """2-D transforms as Kronecker products: input [t², t²], filter [t², 9], output [m², t²]."""
    return tuple(torch.kron(torch.tensor(a, dtype=torch.float64),
                            torch.tensor(a, dtype=torch.float64)).float().to(device)
                 for a in WINOGRAD[m])


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, dilation: int, m: int,
                     mats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``conv2d(x, weight, padding=dilation, dilation=dilation)`` by Winograd F(m×m, 3×3)."""
    bt, g, at = mats
    t = m + 2
    n, c, h, w = x.shape
    k = weight.shape[0]
    d = dilation
    if h % d or w % d:
        raise InputError(f"winograd_conv3x3: map {h}×{w} is not divisible by dilation {d}")
    # a dilated conv is a plain conv on each of the d² interleaved sub-maps
    sub = x.reshape(n, c, h // d, d, w // d, d).permute(0, 3, 5, 1, 2, 4)
    sub = sub.reshape(n * d * d, c, h // d, w // d)
    sh, sw = h // d, w // d
    th, tw = -(-sh // m), -(-sw // m)
    padded = F.pad(sub, (1, tw * m + 1 - sw, 1, th * m + 1 - sh))
    tiles = padded.unfold(2, t, m).unfold(3, t, m)                 # [n', c, th, tw, t, t]
    n2 = sub.shape[0]
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, t * t)
    v = (tiles @ bt.T).reshape(n2 * th * tw, c, t * t).permute(2, 0, 1)      # [t², P, c]
    u = (g @ weight.reshape(k, c, 9).permute(2, 1, 0).reshape(9, c * k)).reshape(t * t, c, k)
    y = at @ torch.bmm(v, u).reshape(t * t, -1)                    # [m², P·k]
    y = y.reshape(m, m, n2, th, tw, k).permute(2, 5, 3, 0, 4, 1).reshape(n2, k, th * m, tw * m)
    y = y[:, :, :sh, :sw].reshape(n, d, d, k, sh, sw).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, k, h, w)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="feature map side (32 for 256×256)")
    parser.add_argument("--tf32", action="store_true",
                        help="let CUDA round both convolutions and matrix products to TF32 "
                             "(default: strict fp32 for both, a like-for-like comparison)")
    parser.add_argument("--shapes", default=None,
                        help="channels:dilation:count,... (default: the ResNet-101 trunk)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    shapes = TRUNK_SHAPES if args.shapes is None else tuple(
        tuple(int(v) for v in item.split(":")) for item in args.shapes.split(","))

    sync = synchronizer(device)

    gen = torch.Generator().manual_seed(0)
    rows, totals = [], {"direct": 0.0, "winograd2": 0.0, "winograd4": 0.0}
    for channels, dilation, count in shapes:
        x = torch.randn(2, channels, args.size, args.size, generator=gen).to(device)
        w = (torch.randn(channels, channels, 3, 3, generator=gen)
             * (2 / (9 * channels)) ** 0.5).to(device)
        x.requires_grad_(True)
        w.requires_grad_(True)
        grad_out = torch.randn(2, channels, args.size, args.size, generator=gen).to(device)
        convs = {"direct": lambda a, b: F.conv2d(a, b, padding=dilation, dilation=dilation)}
        for m in (2, 4):
            mats = transforms(m, device)
            convs[f"winograd{m}"] = (lambda a, b, m=m, mats=mats:
                                     winograd_conv3x3(a, b, dilation, m, mats))
        reference = None
        row = {"channels": channels, "dilation": dilation, "count": count}
        for name, conv in convs.items():
            out = conv(x, w)
            grads = torch.autograd.grad(out, (x, w), grad_out)
            if reference is None:
                reference = (out, *grads)
            else:
                row[f"{name}_max_rel_error"] = [
                    float(f"{((a - b).abs().max() / b.abs().max()).item():.2e}")
                    for a, b in zip((out, *grads), reference)]

            def fwd_bwd(conv=conv) -> None:
                torch.autograd.grad(conv(x, w), (x, w), grad_out)
            row[f"{name}_ms"] = round(statistics.median(
                time_calls(fwd_bwd, args.repeats, sync, warmup=3)) * 1000, 2)
            totals[name] += row[f"{name}_ms"] * count
        rows.append(row)
    result = {"benchmark": "conv3x3_fwd_bwd", "device": str(device), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "threads": torch.get_num_threads(), "tf32": tf32_settings(), "batch": 2, "map": [args.size, args.size],
              "shapes": rows, "trunk_total_ms": {k: round(v, 1) for k, v in totals.items()}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
