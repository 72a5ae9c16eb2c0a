"""fewshot.viz and visualize.py: what is drawn is what the model computed."""
import os

import pytest
import torch

from fewshot.cli import visualize_main
from fewshot.config import load_config
from fewshot.engine import episode_sampler
from fewshot.engine.checkpoint import save_checkpoint
from fewshot.engine.trainer import build_model
from fewshot.viz import draw, explain_episode, top_flows

PATCH_OPTIONS = {"fcn": [], "grid": ["model.options.grid=[1,2]", "model.options.patch_size=16"],
                 "sampling": ["model.options.num_patch=4", "model.options.patch_size=16"]}


def _checkpoint(root, tmp_path, patch):
    config = load_config(None, ["data.name=folder", f"data.root={root}", "data.image_size=32",
                                "model.backbone=conv4", "model.backbone_options.hidden=8",
                                f"model.options.patch={patch}", "eval.split=val", "eval.n_query=2",
                                "run.device=cpu", *PATCH_OPTIONS[patch]])
    torch.manual_seed(0)
    model = build_model(config)
    path = str(tmp_path / f"{patch}.pt")
    save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict()})
    return config, model, path


@pytest.mark.parametrize("patch", ["fcn", "grid", "sampling"])
def test_visualize_writes_a_picture(folder_root, tmp_path, patch, capsys):
    _, _, path = _checkpoint(folder_root, tmp_path, patch)
    out = tmp_path / "fig.png"
    assert visualize_main(["--checkpoint", path, "--episode", "1", "--queries", "0", "4",
                           "--out", str(out)]) == 0
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"
    per_query = tmp_path / "q.png"
    assert visualize_main(["--checkpoint", path, "--queries", "2", "--per-query", "--out", str(per_query)]) == 0
    assert (tmp_path / "q_q2.png").is_file()
    assert visualize_main(["--checkpoint", path, "--queries", "99", "--out", str(out)]) == 2
    assert "--queries [99]" in capsys.readouterr().err


@pytest.mark.parametrize("patch", ["fcn", "grid"])
def test_drawn_flows_and_weights_are_the_models(folder_root, tmp_path, patch):
    """The logits are the evaluation logits, the flows are the plan's largest entries and
    the weights are the marginals the solver was given (the plan's row and column sums)."""
    config, model, _ = _checkpoint(folder_root, tmp_path, patch)
    sampler = episode_sampler(config, "val", 5, 1, 2, seed=1)
    episode = sampler.episode(0)
    explanations = explain_episode(model, episode, top_flows_per_class=5)
    model.eval()
    with torch.no_grad():
        model.process_support_set(episode.support_images, episode.support_labels)
        logits = model(episode.query_images)
    assert len(explanations) == len(episode.query_labels)
    for e in explanations:
        torch.testing.assert_close(e.logits, logits[e.query])
        assert e.predicted == int(logits[e.query].argmax()) and e.label == int(episode.query_labels[e.query])
        assert e.predicted in e.matchings and e.label in e.matchings
        for c, m in e.matchings.items():
            assert m.logit == pytest.approx(float(logits[e.query, c]), rel=1e-5)
            values = sorted(m.plan.flatten().tolist(), reverse=True)[:5]
            assert [f for _, _, f in m.flows] == pytest.approx(values)
            for i, j, f in m.flows:
                assert float(m.plan[i, j]) == f
            torch.testing.assert_close(m.plan.sum(1), m.a.to(m.plan.dtype), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(m.plan.sum(0), m.b.to(m.plan.dtype), atol=1e-4, rtol=1e-4)
            assert float(m.a.sum()) == pytest.approx(m.a.numel(), rel=1e-5)
    n_nodes = explanations[0].matchings[explanations[0].predicted].a.numel()
    assert explanations[0].query_boxes.shape == (n_nodes, 4)
    figure = draw(explanations[:2], episode)
    assert len(figure.axes) == 2 * sum(len(e.matchings) for e in explanations[:2])


def test_top_flows_golden():
    plan = torch.tensor([[0.0, 3.0], [1.0, 2.0]])
    assert top_flows(plan, 3) == [(0, 1, 3.0), (1, 1, 2.0), (1, 0, 1.0)]
    assert top_flows(plan, 10) == [(0, 1, 3.0), (1, 1, 2.0), (1, 0, 1.0)]   # zero flows are not drawn


def test_fcn_boxes_tile_the_image(folder_root, tmp_path):
    _, model, _ = _checkpoint(folder_root, tmp_path, "fcn")
    nodes, boxes = model.eval().encode_nodes(torch.randn(2, 3, 32, 32))
    assert nodes.shape[2] == boxes.shape[0] == 4                       # 32 px -> a 2 x 2 map
    assert boxes.tolist() == [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]]


def test_meta_training_writes_the_matching_to_tensorboard(folder_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fewshot.cli import train_main
    out = str(tmp_path / "run")
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml")
    assert train_main(["--config", config, "--data-root", folder_root, "--out", out, "--device", "cpu",
                       "--stage", "meta", "--max-steps", "2", "--query", "2", "data.image_size=32",
                       "model.backbone_options.hidden=8", "meta.val_episodes=2", "eval.n_query=2",
                       "run.progress=false"]) == 0
    events = EventAccumulator(os.path.join(out, "meta", "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "val/matching" in events.Tags()["images"]
    image = events.Images("val/matching")[-1]
    assert image.step == 2 and image.width > 100
