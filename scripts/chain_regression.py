"""Regressing a histogram on a chain: power spectral densities (Martinez et al. 2016, Fig. 6 analogue).

Generated data with a known ground truth (no real chain-structured data set is at hand): each
signal is a sum of 1-3 sinusoids with random non-integer frequencies, amplitudes and phases plus
white noise (``--noise``), ``--length`` samples; its target is the power spectral density of the
clean signal (periodogram with a Hann window, normalised to sum 1) on the ``--length`` / 2
frequency bins, a histogram on a chain. An MLP (signal -> hidden -> softmax over the bins) is
trained with each loss (``--net paper``: the paper's network shape, a convolution with tanh, a
fully connected layer and the square):

  mse     mean squared error between the histograms
  sd      Sinkhorn distance under |i - j| (``fewshot.emd.solve(..., solver="sinkhorn")``, log
          domain, ``--sd-iterations`` unrolled iterations at ``--sd-epsilon``; bins at i / bins)
  emd     the closed-form EMD on the chain (``fewshot.emd.chain_emd``, rho = 1)
  emd2    the relaxed EMD^2 (rho = 2), dirt-conserving gradient

and measured on ``--test`` held-out signals by the EMD (in bins) and the MSE of the predicted
histogram, every ``--eval-every`` steps, against steps and training wall time.

    python scripts/chain_regression.py --out OUT        (writes OUT/chain.json, OUT/chain.png)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from fewshot import emd

LOSSES = ("mse", "sd", "emd", "emd2")


def make_data(n: int, length: int, noise: float, seed: int):
    """signals [n, length] and target PSD histograms [n, length // 2] (float64)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    bins = length // 2
    k = torch.randint(1, 4, (n,), generator=g)
    freq = 2 + (bins - 4) * torch.rand(n, 3, generator=g, dtype=torch.float64)
    amp = (0.3 + torch.rand(n, 3, generator=g, dtype=torch.float64)) * (torch.arange(3) < k[:, None])
    phase = 2 * math.pi * torch.rand(n, 3, generator=g, dtype=torch.float64)
    clean = (amp[:, :, None] * torch.sin(2 * math.pi * freq[:, :, None] * t / length + phase[:, :, None])).sum(1)
    window = torch.hann_window(length, periodic=False, dtype=torch.float64)
    psd = torch.fft.rfft(clean * window).abs().square()[:, :bins]
    psd = psd / psd.sum(1, keepdim=True)
    signal = clean + noise * torch.randn(n, length, generator=g, dtype=torch.float64)
    return signal, psd


class Losses:
    def __init__(self, bins: int, sd_epsilon: float, sd_iterations: int):
        self.grid = torch.arange(bins, dtype=torch.float64) / bins       # bins on [0, 1)
        self.cost = (self.grid[:, None] - self.grid[None, :]).abs()
        self.sinkhorn = emd.make_solver("sinkhorn", {"epsilon": sd_epsilon, "max_iter": sd_iterations,
                                                     "tol": 1e-12, "gradient": "unrolled",
                                                     "on_unconverged": "ignore", "return_plan": False})

    def chain(self, p, q, rho):
        x = self.grid.to(p)[None].expand(len(p), -1)
        return emd.chain_emd(x, x, p, q, rho=rho)

    def __call__(self, name, p, q):
        if name == "mse":
            return (p - q).square().sum(1).mean()
        if name == "sd":
            return self.sinkhorn(self.cost.to(p)[None].expand(len(p), -1, -1), p, q).value.mean()
        if name in ("emd", "emd2"):
            return self.chain(p, q, 1.0 if name == "emd" else 2.0).mean()
        raise ValueError(name)


class _Square(nn.Module):
    """The paper's output: the square of the last layer, normalised to a histogram."""

    def forward(self, h):
        h = h.square() + 1e-12
        return h / h.sum(-1, keepdim=True)


def network(kind: str, length: int, hidden: int, bins: int) -> nn.Module:
    """signal [B, length] -> histogram [B, bins]. ``mlp``: two ReLU layers and a softmax;
    ``paper``: the shape of Martinez et al.'s network, a 1-D convolution (``hidden`` // 16
    channels, kernel 9) with tanh, one fully connected layer and the square, normalised."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(length, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, bins), nn.Softmax(-1))
    channels = max(1, hidden // 16)
    return nn.Sequential(nn.Unflatten(1, (1, length)), nn.Conv1d(1, channels, 9, padding=4), nn.Tanh(),
                         nn.Flatten(), nn.Linear(channels * length, bins), _Square())


def run(loss_name, seed, train, test, losses, args):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    (x, y), (tx, ty) = train, test
    bins = y.shape[1]
    model = network(args.net, x.shape[1], args.hidden, bins).double()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve, seconds = [], 0.0

    def measure(step):
        with torch.no_grad():
            p = model(tx)
            e = float(losses.chain(p, ty, 1.0).mean()) * bins      # in bins
            m = float((p - ty).square().sum(1).mean())
        curve.append({"step": step, "seconds": round(seconds, 3), "test_emd_bins": e, "test_mse": m})

    measure(0)
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        idx = torch.randint(0, len(x), (args.batch,), generator=gen)
        loss = losses(loss_name, model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t
        if step % args.eval_every == 0:
            measure(step)
    return curve


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in LOSSES:
        runs = [r for r in results if r["loss"] == name]
        if not runs:
            continue
        steps = [p["step"] for p in runs[0]["curve"]]
        emd_ = np.mean([[p["test_emd_bins"] for p in r["curve"]] for r in runs], 0)
        mse = np.mean([[p["test_mse"] for p in r["curve"]] for r in runs], 0)
        secs = np.mean([[p["seconds"] for p in r["curve"]] for r in runs], 0)
        axes[0].plot(steps, emd_, label=name)
        axes[1].plot(secs, emd_, label=name)
        axes[2].plot(steps, mse, label=name)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training seconds")
    axes[2].set_xlabel("step")
    axes[0].set_ylabel("test EMD (bins)")
    axes[1].set_ylabel("test EMD (bins)")
    axes[2].set_ylabel("test MSE")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("PSD regression on a chain of frequency bins (generated signals; mean over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--sd-epsilon", type=float, default=0.01)
    parser.add_argument("--sd-iterations", type=int, default=50)
    parser.add_argument("--net", choices=("mlp", "paper"), default="mlp",
                        help="mlp: 2 ReLU layers + softmax; paper: conv + tanh + FC + square (Martinez et al.)")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if min(args.length // 2, args.train, args.test, args.hidden, args.steps, args.batch, args.eval_every) < 1 \
            or args.length < 8:
        parser.error("--length must be >= 8 and the sizes and counts >= 1")
    os.makedirs(args.out, exist_ok=True)
    train = make_data(args.train, args.length, args.noise, seed=100)
    test = make_data(args.test, args.length, args.noise, seed=200)
    losses = Losses(args.length // 2, args.sd_epsilon, args.sd_iterations)
    results = []
    for name in args.losses:
        for seed in args.seeds:
            curve = run(name, seed, train, test, losses, args)
            results.append({"loss": name, "seed": seed, "curve": curve})
            last = curve[-1]
            print(f"{name} seed {seed}: test EMD {last['test_emd_bins']:.3f} bins, MSE {last['test_mse']:.2e}, "
                  f"{last['seconds']:.1f} s", flush=True)
    with open(os.path.join(args.out, "chain.json"), "w") as f:
        json.dump({"args": vars(args), "runs": results}, f, indent=1)
    plot(results, os.path.join(args.out, "chain.png"))
    print("| loss | test EMD (bins), mean over seeds | test MSE | training seconds |\n|---|---|---|---|")
    for name in args.losses:
        runs = [r for r in results if r["loss"] == name]
        e = [r["curve"][-1]["test_emd_bins"] for r in runs]
        m = [r["curve"][-1]["test_mse"] for r in runs]
        s = [r["curve"][-1]["seconds"] for r in runs]
        print(f"| {name} | {np.mean(e):.3f} +- {np.std(e):.3f} (sd) | {np.mean(m):.2e} | {np.mean(s):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
