"""End-to-end DeepEMD-FCN throughput: meta-training and evaluation episodes per second.

For each shot count (5-way, 15 queries; 5-shot fits the Structured FC prototypes):
- train: forward + backward + SGD step of one episode (``model.train()``), episodes/s,
  the share of the time spent inside the EMD layer (forward; its backward is a
  multiplication by the plan) and the peak memory (CUDA high-water mark on a GPU; the
  process's resident high-water mark on the CPU, which includes the interpreter and libraries);
- eval: evaluation as ``eval.py`` runs it: the split's images are encoded once
  (``--split-images``, default 9,600 = miniImageNet val) and the episodes run on the cached
  features; reported as the backbone seconds, the EMD/episode seconds for ``--episodes``
  episodes, and episodes/s end to end.

Images are random tensors (the cost of a forward pass does not depend on the pixels);
the backbone is randomly initialised unless ``--checkpoint`` is given.

    python benchmarks/episodes.py --backbone resnet12 --shots 1 5 --episodes 600
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

# As in eval.py: torch's OpenMP threads must not spin on the cores the EMD layer's threads use.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F


from _common import write_results  # noqa: E402
from fewshot import emd  # noqa: E402
from fewshot.models import create_model  # noqa: E402


class TimedSolver(emd.Solver):
    """A built solver that accumulates the seconds spent in its calls (``seconds``)."""

    def __init__(self, solver: emd.Solver, device: torch.device):
        super().__init__(solver.name, solver.spec, solver.options)
        self.device, self.seconds = device, 0.0

    def __call__(self, *args, **kwargs):
        sync(self.device)
        t = time.perf_counter()
        out = super().__call__(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - t
        return out


class SolveTimer:
    """Times the model's EMD layer: while active, the head's training and evaluation
    solvers (``model.head.train_solver`` / ``eval_solver``) are :class:`TimedSolver` s;
    ``seconds`` is their total."""

    def __init__(self, model, device: torch.device):
        self.model, self.device, self.timed = model, device, ()

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.timed)

    def __enter__(self):
        head = self.model.head
        self.saved = head.train_solver, head.eval_solver
        self.timed = tuple(TimedSolver(s, self.device) for s in self.saved)
        head.train_solver, head.eval_solver = self.timed
        return self

    def __exit__(self, *exc):
        self.model.head.train_solver, self.model.head.eval_solver = self.saved


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def episode(n_way: int, n_shot: int, n_query: int, size: int, g: torch.Generator, device):
    support = torch.randn(n_way * n_shot, 3, size, size, generator=g).to(device)
    query = torch.randn(n_way * n_query, 3, size, size, generator=g).to(device)
    return (support, torch.arange(n_way).repeat_interleave(n_shot).to(device), query,
            torch.arange(n_way).repeat_interleave(n_query).to(device))


def peak_memory_mb(device: torch.device) -> float:
    """CUDA high-water mark on a GPU, the process's resident high-water mark on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_train(model, n_shot, steps, size, device, amp):
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    data = [episode(5, n_shot, 15, size, g, device) for _ in range(2)]
    times, emd_times = [], []
    for i in range(steps + 1):                                   # step 0 warms up
        s, sl, q, ql = data[i % 2]
        with SolveTimer(model, device) as timer:
            sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, enabled=amp):
                loss = F.cross_entropy(model.episode_logits(s, sl, q), ql)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync(device)
            if i:
                times.append(time.perf_counter() - t)
                emd_times.append(timer.seconds)
    return sum(times) / len(times), sum(emd_times) / sum(times), peak_memory_mb(device)


@torch.no_grad()
def bench_eval(model, n_shot, n_episodes, split_images, size, device, amp, batch=128, episodes_per_fit=50):
    model.eval()
    g = torch.Generator().manual_seed(1)
    sync(device)
    t = time.perf_counter()
    feats = []
    for start in range(0, split_images, batch):
        images = torch.randn(min(batch, split_images - start), 3, size, size, generator=g).to(device)
        with torch.autocast(device.type, enabled=amp):
            feats.append(model.encode(images).float())
    sync(device)
    encode_s = time.perf_counter() - t
    features = torch.cat(feats)
    n_support, n_query = 5 * n_shot, 75
    labels_s = torch.arange(5, device=device).repeat_interleave(n_shot)
    with SolveTimer(model, device) as timer:
        t = time.perf_counter()
        for first in range(0, n_episodes, episodes_per_fit):     # as eval.py: support sets fitted together
            group = min(episodes_per_fit, n_episodes - first)
            idx = torch.randint(0, split_images, (group, n_support + n_query), generator=g).to(device)
            for e, prototypes in enumerate(model.fit_supports(features[idx[:, :n_support]],
                                                              labels_s.expand(group, -1))):
                model.prototypes = prototypes
                model.score(features[idx[e, n_support:]]).argmax(1).cpu()
        sync(device)
        episode_s = time.perf_counter() - t
    return encode_s, episode_s, timer.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet12")
    parser.add_argument("--checkpoint", help="a train.py checkpoint whose model weights to load")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=600, help="evaluation episodes per shot")
    parser.add_argument("--episodes-5shot", type=int, default=100,
                        help="evaluation episodes for shots > 1 (SFC fitting dominates)")
    parser.add_argument("--split-images", type=int, default=9600)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--solver", default="exact")
    parser.add_argument("--engine", default=None, help="exact solver engine (simplex | pot)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--json", default="benchmarks/episodes.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    options = {"engine": args.engine} if args.engine else {}
    model = create_model("deepemd", args.backbone, {},
                         {"solver": args.solver, "eval_solver": args.solver,
                          "solver_options": options, "eval_solver_options": options}).to(device)
    if args.checkpoint:
        from fewshot.engine.checkpoint import load_checkpoint
        model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    rows = []
    for n_shot in args.shots:
        step_s, emd_share, train_mb = bench_train(model, n_shot, args.train_steps, args.image_size, device, args.amp)
        n_eval = args.episodes if n_shot == 1 else args.episodes_5shot
        encode_s, episode_s, emd_s = bench_eval(model, n_shot, n_eval, args.split_images,
                                                args.image_size, device, args.amp)
        row = {"n_shot": n_shot, "train_episode_s": step_s, "train_episodes_per_s": 1 / step_s,
               "train_emd_share": emd_share, "train_peak_memory_mb": train_mb, "eval_episodes": n_eval,
               "eval_encode_s": encode_s, "eval_split_images": args.split_images,
               "eval_episode_s": episode_s, "eval_emd_s": emd_s,
               "eval_episodes_per_s_end_to_end": n_eval / (encode_s + episode_s),
               "emd_over_backbone": emd_s / encode_s}
        rows.append(row)
        print(f"5-way {n_shot}-shot {args.backbone} {args.solver} on {device}: "
              f"train {1 / step_s:6.2f} episodes/s (EMD {100 * emd_share:4.1f}% of the step, "
              f"peak memory {train_mb:.0f} MB) | "
              f"eval: encode {args.split_images} images {encode_s:7.1f} s, {n_eval} episodes "
              f"{episode_s:7.1f} s (EMD {emd_s:6.1f} s) -> EMD / backbone {emd_s / encode_s:.3f}, "
              f"{n_eval / (encode_s + episode_s):6.2f} episodes/s end to end", flush=True)
    write_results(args.json, rows, device, backbone=args.backbone, solver=args.solver, engine=args.engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
