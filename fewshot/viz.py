"""Pictures of what DeepEMD matched.

For one episode, :func:`explain_episode` runs a DeepEMD model exactly as evaluation does
(nodes, prototypes, cross-reference weights, the evaluation EMD solver) and keeps, for
each query, its logits and, for the predicted and the true class, the weights of the
query's and the prototype's nodes, the optimal plan and its largest flows.
:func:`draw` turns that into a figure: each query beside the support image of its
predicted and its true class, the node regions outlined, the cross-reference weights as
a heat map on each image, and the largest flows as lines between region centres (line
width proportional to the flow), with the logits per class.

    explanations = explain_episode(model, episode, top_flows=10)
    figure = draw(explanations, episode)          # matplotlib Figure
    figure.savefig("episode.png")

``visualize.py`` is the command-line entry point; meta-training writes the same picture of
one fixed validation episode to TensorBoard at every validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .data.episodes import Episode
from .data.transforms import MEAN, STD
from .models.classifier import FewShotClassifier


@dataclass
class Matching:
    """One query against one class prototype.

    logit: the class's logit; a: query node weights [M]; b: prototype node weights [N]
    (both of total mass M, as the solver received them); plan: the solver's plan [M, N];
    flows: the ``top_flows`` largest plan entries as (query node, prototype node, flow),
    largest first."""
    logit: float
    a: torch.Tensor
    b: torch.Tensor
    plan: torch.Tensor
    flows: List[Tuple[int, int, float]]


@dataclass
class QueryExplanation:
    """query: index into the episode's queries; label, predicted: episode labels (label -1:
    unknown); logits: [n_way]; matchings: class -> Matching (predicted and true class);
    query_boxes: [M, 4] and support_boxes: [N, 4], node regions as (x0, y0, x1, y1) px."""
    query: int
    label: int
    predicted: int
    logits: torch.Tensor
    matchings: Dict[int, Matching]
    query_boxes: torch.Tensor
    support_boxes: torch.Tensor


def top_flows(plan: torch.Tensor, k: int) -> List[Tuple[int, int, float]]:
    """The ``k`` largest entries of plan [M, N] as (row, column, value), largest first."""
    values, flat = plan.flatten().topk(min(k, plan.numel()))
    N = plan.shape[1]
    return [(int(i) // N, int(i) % N, float(v)) for v, i in zip(values, flat) if v > 0]


@torch.no_grad()
def explain_episode(model: FewShotClassifier, episode: Episode, queries: Optional[Sequence[int]] = None,
                    top_flows_per_class: int = 10) -> List[QueryExplanation]:
    """Explain the model's decision for ``queries`` (default: all) of ``episode``: the predicted
    and the true class; a query label of -1 means unknown (your own images): the predicted class
    and the runner-up (the second-highest logit)."""
    if not model.offers_matching:
        raise TypeError(f"explain_episode needs a model that offers a matching (DeepEMD), "
                        f"got {type(model).__name__}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ep = episode.to(device)
    support, support_boxes = model.encode_nodes(ep.support_images)
    query_nodes, query_boxes = model.encode_nodes(ep.query_images)
    model.fit_support(support, ep.support_labels)
    proto = model.prototypes
    chosen = list(range(len(ep.query_labels))) if queries is None else list(queries)
    q = query_nodes[chosen]
    logits, result = model.head(q, proto, return_result=True)
    W, M, N = proto.shape[0], q.shape[2], proto.shape[2]
    _, a, b = result.problem
    a, b = a.reshape(len(chosen), W, M), b.reshape(len(chosen), W, N)
    plan = result.plan.reshape(len(chosen), W, M, N)
    out = []
    for k, i in enumerate(chosen):
        label, predicted = int(ep.query_labels[i]), int(logits[k].argmax())
        other = label if label >= 0 else int(logits[k].topk(2).indices[1])
        matchings = {c: Matching(float(logits[k, c]), a[k, c].cpu(), b[k, c].cpu(), plan[k, c].cpu(),
                                 top_flows(plan[k, c].cpu(), top_flows_per_class))
                     for c in dict.fromkeys([predicted, other])}
        out.append(QueryExplanation(i, label, predicted, logits[k].cpu(), matchings,
                                    query_boxes.cpu(), support_boxes.cpu()))
    model.train(was_training)
    return out


def _display(image: torch.Tensor):
    """Image [C, H, W] as normalised by the data transforms -> array [H, W, 3] in 0..1."""
    image = image.detach().cpu().float()
    if image.shape[0] == 3:
        image = image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    else:
        image = image.expand(3, -1, -1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def _heat(boxes: torch.Tensor, weights: torch.Tensor, H: int, W: int):
    """Weights of (possibly overlapping) node regions summed onto an [H, W] map."""
    heat = torch.zeros(H, W)
    for (x0, y0, x1, y1), w in zip(boxes.tolist(), weights.tolist()):
        heat[int(y0):max(int(y0) + 1, int(round(y1))), int(x0):max(int(x0) + 1, int(round(x1)))] += w
    return heat.numpy()


def _panel(ax, image: torch.Tensor, boxes: torch.Tensor, weights: torch.Tensor, title: str):
    from matplotlib.patches import Rectangle
    H, W = image.shape[-2:]
    ax.imshow(_display(image))
    ax.imshow(_heat(boxes, weights, H, W), cmap="inferno", alpha=0.45)
    for x0, y0, x1, y1 in boxes.tolist():
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.4, ec="white", alpha=0.6))
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _centre(box: Sequence[float]) -> Tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


LEGEND = ("tint: node weight (how much a region matters to the match, from the cross-reference "
          "weights); cyan lines: the largest flows of the EMD plan between regions, width by flow")


def draw(explanations: Sequence[QueryExplanation], episode: Episode, class_names: bool = True,
         query_names: Optional[Sequence[str]] = None):
    """One figure: a row per (query, class) pair of ``explanations`` (predicted class first,
    then the true class, or the runner-up when the truth is unknown), each query titled by its
    name in ``query_names`` (e.g. the file name; default "query i") with its class probabilities,
    and a legend for the tint and the lines. Returns the matplotlib Figure."""
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch

    rows = [(e, c) for e in explanations for c in e.matchings]
    fig, axes = plt.subplots(len(rows), 2, figsize=(5.6, 2.7 * len(rows) + 0.5), squeeze=False)
    n_shot = len(episode.support_labels) // len(episode.classes)
    label_of = (lambda c: str(episode.classes[c])) if class_names else str  # noqa: E731
    for (e, c), (ax_q, ax_s) in zip(rows, axes):
        m = e.matchings[c]
        name = label_of(c)
        kind = ("predicted" + (" = true" if c == e.label else "") if c == e.predicted
                else "true" if c == e.label else "runner-up")
        prob = e.logits.float().softmax(-1)
        top = prob.topk(min(3, len(prob)))
        scores = ", ".join(f"{label_of(int(j))} {float(v):.2f}" for v, j in zip(top.values, top.indices))
        support_index = int((episode.support_labels == c).nonzero()[0])
        known = f" (true: {label_of(e.label)})" if e.label >= 0 else ""
        title = query_names[e.query] if query_names is not None else f"query {e.query}"
        _panel(ax_q, episode.query_images[e.query], e.query_boxes, m.a,
               f"{title}{known}\n{scores}")
        _panel(ax_s, episode.support_images[support_index], e.support_boxes, m.b,
               f"{kind}: {name}, logit {m.logit:.2f}" + (f"\n(SFC prototype of {n_shot} shots)"
                                                         if n_shot > 1 else ""))
        largest = m.flows[0][2] if m.flows else 1.0
        for i, j, flow in m.flows:
            line = ConnectionPatch(_centre(e.query_boxes[i].tolist()), _centre(e.support_boxes[j].tolist()),
                                   "data", "data", axesA=ax_q, axesB=ax_s, color="cyan",
                                   lw=3.0 * flow / largest, alpha=0.8)
            fig.add_artist(line)
    import textwrap
    fig.text(0.5, 0.005, textwrap.fill(LEGEND, 95), ha="center", va="bottom", fontsize=6)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    return fig
