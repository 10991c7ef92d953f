"""Time one ALPNet training step against the encoder alone, on the CPU (or any device).

    python -m benchmarks.bench_model [--encoder deeplabv3_resnet101] [--size 256] [--runs 5]

(from the repository root).

Prints JSON: median and spread (min, max) in seconds of
- ``encoder``: encoder forward + backward on the episode batch [S+Q, 3, size, size];
- ``full_step``: ALPNet forward (encoder + ALP + alignment), weighted CE + alignment loss,
  backward, SGD step (lr 1e-3, momentum 0.9, weight decay 5e-4) and zero_grad;
their ratio of medians (target ≤ 1.10), the ALP-only time (forward + backward of the ALP and loss
part on fixed features), and the process's peak RSS (resource.getrusage) before and after the steps.
Runs alternate between the two measurements after the warm-ups so drift affects both alike.

With ``--infer-slices N`` it also times the validation's computation in eval mode, as
``inference.batched`` does it: prototypes of 2 classes × 3 support parts, then N query slices
encoded once in batches of 16 and each scored against both classes (N = 140 is CHAOS-T2 fold 0:
4 query scans, 280 predicted slices for the two kidneys). Reading scans and writing predictions
are not included: it is the part of ``bench_validation.py`` that a GPU speeds up.

It needs nothing but torch and torchvision, so ``benchmarks/gpu_check.sh`` runs it on a bare GPU
machine; ``--device cuda`` adds the GPU's name and peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from benchmarks.timing import peak_rss_mb, summary, synchronizer, tf32_settings, time_calls
from models.alp import l2_normalize
from models.alpnet import ALPNet
from models.losses import weighted_cross_entropy


def make_episode(size: int, n_shots: int, device: torch.device, seed: int = 0) -> dict:
    """A fixed synthetic 1-way episode: random images, a square fg in support and query."""
    gen = torch.Generator().manual_seed(seed)
    fg = torch.zeros(n_shots, size, size)
    fg[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    label = torch.zeros(1, size, size, dtype=torch.long)
    label[:, size // 3: 2 * size // 3, size // 3: 2 * size // 3] = 1
    episode = {"support_images": torch.randn(n_shots, 3, size, size, generator=gen),
               "support_fg": fg, "support_bg": 1 - fg,
               "query_images": torch.randn(1, 3, size, size, generator=gen),
               "query_label": label}
    return {k: v.to(device) for k, v in episode.items()}


@torch.no_grad()
def time_inference(model: ALPNet, args, device: torch.device, sync, n_classes: int = 2,
                   n_parts: int = 3, repeats: int = 3) -> dict:
    """Median seconds of one validation's computation: support prototypes of every (class,
    part), then ``args.infer_slices`` query slices encoded in batches and scored."""
    model.eval()
    size = args.size
    support = make_episode(size, 1, device, seed=1)
    gen = torch.Generator().manual_seed(2)
    queries = torch.randn(args.infer_slices, 3, size, size, generator=gen)

    def run() -> None:
        prototypes = [model.encode_support(support["support_images"], support["support_fg"],
                                           support["support_bg"])
                      for _ in range(n_classes * n_parts)]
        for i in range(0, len(queries), args.batch_size):
            feats = model.encode(queries[i:i + args.batch_size].to(device, non_blocking=True))
            part = (i // args.batch_size) % n_parts
            for c in range(n_classes):
                model.score_features(prototypes[c * n_parts + part], feats,
                                     (size, size)).argmax(dim=1).cpu()

    times = time_calls(run, repeats, sync)
    model.train()
    total = statistics.median(times)
    return {"slices": args.infer_slices, "classes": n_classes, "batch_size": args.batch_size,
            "total": summary(times), "s_per_slice": total / args.infer_slices,
            "s_per_prediction": total / (args.infer_slices * n_classes)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="deeplabv3_resnet101")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the encoder")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model's forward (training's compile=True); "
                             "compiled in the warm-up")
    parser.add_argument("--infer-slices", type=int, default=0,
                        help="also time eval-mode inference of this many query slices")
    parser.add_argument("--batch-size", type=int, default=16, help="query slices per batch")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = ALPNet(args.encoder, autocast_bf16=args.bf16,
                   channels_last=args.channels_last).to(device).train()
    if args.compile:
        model.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ep = make_episode(args.size, args.shots, device)
    batch = torch.cat([ep["support_images"], ep["query_images"]])

    sync = synchronizer(device)

    def encoder_step() -> float:
        sync()
        start = time.perf_counter()
        model.encode(batch).mean().backward()  # with the configured bf16 / channels_last
        sync()
        elapsed = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        return elapsed

    fallbacks, losses = [], []

    def full_step() -> float:
        sync()
        start = time.perf_counter()
        out = model(ep["support_images"], ep["support_fg"], ep["support_bg"], ep["query_images"])
        loss = weighted_cross_entropy(out.logits, ep["query_label"]) + out.align_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        fallbacks.append(int(out.n_fallback))
        losses.append(loss.item())
        return time.perf_counter() - start

    # The ALP + alignment + loss part alone, on fixed features that need a gradient.
    with torch.no_grad():
        feats = model.encode(batch)
    feats.requires_grad_(True)

    def alp_step() -> float:
        sync()
        start = time.perf_counter()
        fs, fq = feats[: args.shots], feats[args.shots:]
        support = model.support_prototypes(fs, ep["support_fg"], ep["support_bg"])
        low = model.lowres_logits(l2_normalize(fq), support)
        logits = torch.nn.functional.interpolate(low, size=(args.size, args.size),
                                                 mode="bilinear", align_corners=False)
        align, _ = model.alignment_loss(fq, low, fs, ep["support_fg"], ep["support_bg"])
        (weighted_cross_entropy(logits, ep["query_label"]) + align).backward()
        sync()
        elapsed = time.perf_counter() - start
        feats.grad = None
        return elapsed

    rss_before = peak_rss_mb()
    for _ in range(args.warmup):
        encoder_step()
        full_step()
        alp_step()
    enc, full, alp = [], [], []
    for _ in range(args.runs):
        enc.append(encoder_step())
        full.append(full_step())
        alp.append(alp_step())

    rss_steps = peak_rss_mb()
    gpu = {}
    if device.type == "cuda":
        gpu = {"gpu": torch.cuda.get_device_name(device),
               "peak_gpu_memory_gib_train": torch.cuda.max_memory_allocated(device) / 1024 ** 3}
        torch.cuda.reset_peak_memory_stats(device)
    infer = time_inference(model, args, device, sync) if args.infer_slices else None
    if infer is not None and device.type == "cuda":
        infer["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3

    result = {
        "encoder": args.encoder, "input": [args.shots + 1, 3, args.size, args.size],
        "device": str(device), **gpu, "bf16": args.bf16, "channels_last": args.channels_last,
        "compile": args.compile, "tf32": tf32_settings(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "encoder_fwd_bwd": summary(enc), "full_step": summary(full), "alp_fwd_bwd": summary(alp),
        "ratio_full_over_encoder": statistics.median(full) / statistics.median(enc),
        "target_ratio": 1.10,
        "n_fallback_per_step": fallbacks[-1],
        "first_step_loss": losses[0],  # fixed episode and seed: compare precisions with it
        "peak_rss_mb_after_model_build": rss_before, "peak_rss_mb": rss_steps,
        "inference": infer,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
