"""Measurement: how much do rounding-sized perturbations change the features and the loss?

Judging bf16 autocast by the loss of one episode needs a scale: a change is only "more than
floating-point noise" if it exceeds what the network does to an equally small fp32 perturbation.
On a fixed synthetic 1-shot episode (``bench_model.make_episode``) and one seeded model
(``--encoder``, ResNet-101 by default, random init), this prints JSON with

- ``loss``: the episode's loss (weighted CE + alignment, train mode) in fp32 and with bf16
  autocast of the encoder;
- ``feature_change``: ‖F' − F‖ / ‖F‖ of the encoder features [2, 256, h, w] of the episode's two
  images, for bf16 autocast (train and eval mode) and for fp32 inputs scaled by (1 + ε·N(0, 1)),
  ε = 2⁻¹² and 2⁻⁹ (bf16 keeps 8 significant bits: its rounding is up to 2⁻⁹ relative);
- ``loss_with_input_noise``: the fp32 loss for ``--draws`` noise draws at each ε.

Every forward pass starts from the same weights and running statistics.

    .venv/bin/python -m benchmarks.bench_precision [--encoder deeplabv3_resnet101] [--size 256]
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks.bench_model import make_episode
from models.alpnet import ALPNet
from models.losses import weighted_cross_entropy

EPSILONS = (2.0 ** -12, 2.0 ** -9)


def relative_change(new: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float((new - ref).norm() / ref.norm()), 4)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="deeplabv3_resnet101")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    fp32 = ALPNet(args.encoder)
    state = {k: v.clone() for k, v in fp32.state_dict().items()}
    bf16 = ALPNet(args.encoder, autocast_bf16=True)
    ep = make_episode(args.size, 1, torch.device("cpu"))
    images = torch.cat([ep["support_images"], ep["query_images"]])
    gen = torch.Generator().manual_seed(1)

    @torch.no_grad()
    def run(model: ALPNet, train: bool, what: str, noise: float = 0.0):
        model.load_state_dict(state)  # the same weights and BN statistics every time
        model.train(train)
        x = images * (1 + noise * torch.randn(images.shape, generator=gen)) if noise else images
        if what == "features":
            return model.encode(x)
        out = model(x[:1], ep["support_fg"], ep["support_bg"], x[1:])
        return round(float(weighted_cross_entropy(out.logits, ep["query_label"])
                           + out.align_loss), 6)

    ref = {mode: run(fp32, mode == "train", "features") for mode in ("train", "eval")}
    result = {
        "benchmark": "precision_sensitivity", "encoder": args.encoder, "size": args.size,
        "torch": torch.__version__,
        "loss": {"fp32": run(fp32, True, "loss"), "bf16": run(bf16, True, "loss")},
        "feature_change": {
            "bf16_train": relative_change(run(bf16, True, "features"), ref["train"]),
            "bf16_eval": relative_change(run(bf16, False, "features"), ref["eval"]),
            **{f"fp32_input_noise_2^{round(torch.log2(torch.tensor(e)).item())}_train":
               relative_change(run(fp32, True, "features", e), ref["train"]) for e in EPSILONS}},
        "loss_with_input_noise": {
            f"2^{round(torch.log2(torch.tensor(e)).item())}":
            [run(fp32, True, "loss", e) for _ in range(args.draws)] for e in EPSILONS},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
