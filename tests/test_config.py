import pytest

from fewshot.config import Config, load_config, parse_override
from fewshot.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, ["meta.lr=0.01", "episode.n_shot=5", "model.options.solver=exact",
                             "pretrain.weight_decay=1e-3", "run.amp=true"])
    assert isinstance(cfg, Config)
    assert cfg.meta.lr == 0.01 and cfg.episode.n_shot == 5
    assert cfg.model.options == {"solver": "exact"}
    assert cfg.pretrain.weight_decay == 1e-3  # YAML 1.1 reads 1e-3 as a string; coerced
    assert cfg.run.amp is True


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"meta: unknown key\(s\) 'lrr'"):
        load_config(None, ["meta.lrr=0.1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["nothing=1"])
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  rooot: x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*'rooot'"):
        load_config(str(path))


def test_type_errors():
    with pytest.raises(ConfigError, match="episode.n_way: expected an integer"):
        load_config(None, ["episode.n_way=five"])
    with pytest.raises(ConfigError, match="run.amp: expected true/false"):
        load_config(None, ["run.amp=3"])
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("meta.lr")


def test_an_empty_section_keeps_the_base_and_null_resets_it(tmp_path):
    (tmp_path / "base.yaml").write_text("run:\n  seed: 7\n  out: somewhere\nmodel:\n  options: {solver: exact}\n")
    (tmp_path / "empty.yaml").write_text("base: base.yaml\nrun:\nmodel:\n  options:\n")
    config = load_config(str(tmp_path / "empty.yaml"))
    assert config.run.seed == 7 and config.run.out == "somewhere" and config.model.options == {"solver": "exact"}


def test_switching_the_dataset_drops_the_other_datasets_options(tmp_path):
    (tmp_path / "cub.yaml").write_text("data:\n  name: cub_official\n  options: {bounding_box: true}\n")
    assert load_config(str(tmp_path / "cub.yaml"), ["data.name=folder"]).data.options == {}
    (tmp_path / "child.yaml").write_text("base: cub.yaml\ndata:\n  name: folder\n")
    assert load_config(str(tmp_path / "child.yaml")).data.options == {}
    # the same dataset keeps them, and options given beside the switch are used
    assert load_config(str(tmp_path / "cub.yaml"), ["data.root=x"]).data.options == {"bounding_box": True}


def test_null_resets_an_inherited_mapping(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  options: {solver: exact}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  options: null\n")
    assert load_config(str(tmp_path / "child.yaml")).model.options == {}
    assert load_config(str(tmp_path / "base.yaml"), ["model.options=null"]).model.options == {}


def test_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("meta:\n  lr: 0.5\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmeta:\n  epochs: 7\n")
    cfg = load_config(str(tmp_path / "child.yaml"), ["meta.epochs=9"])
    assert cfg.meta.lr == 0.5 and cfg.meta.epochs == 9


def test_shipped_configs_load():
    import glob
    import os
    files = glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml"))
    assert files
    from fewshot.engine import build_model
    for f in files:
        build_model(load_config(f))  # every option reaches a constructor that accepts it


def test_unknown_method_option_is_an_error():
    from fewshot.models import create_model
    with pytest.raises(ConfigError, match="^options: unknown option.*'temperatur' of method 'protonet'"):
        create_model("protonet", "conv4", {}, {"temperatur": 1.0})
    # the caller that read the options from a config says where (the models know no config keys)
    with pytest.raises(ConfigError, match="^model.options: unknown option.*'temperatur'"):
        create_model("protonet", "conv4", {}, {"temperatur": 1.0}, where="model")
    with pytest.raises(ConfigError, match=r"^model.options.temperature: expected a finite number > 0"):
        create_model("deepemd", "conv4", {}, {"temperature": -1.0}, where="model")
    with pytest.raises(ConfigError, match=r"^model.options.solver_options.epsilon: expected"):
        create_model("deepemd", "conv4", {}, {"solver": "sinkhorn", "solver_options": {"epsilon": 0}}, where="model")
    with pytest.raises(ConfigError, match=r"^backbone_options: .*hidden.*\(backbone 'conv4'\)"):
        create_model("protonet", "conv4", {"hidden": -1}, {})
    with pytest.raises(ConfigError, match="unknown backbone 'resnet13'"):
        create_model("protonet", "resnet13")


@pytest.mark.parametrize("override, message", [
    ("meta.val_episodes=0", "meta.val_episodes: expected an integer >= 1, got 0"),
    ("meta.epochs=0", "meta.epochs: expected an integer >= 1"),
    ("run.max_steps=-1", "run.max_steps: expected an integer >= 0, got -1"),
    ("data.workers=-1", "data.workers: expected an integer >= 0"),
    ("data.image_size=8", "data.image_size: expected an integer >= 16, got 8"),
    ("eval.episodes=-3", "eval.episodes: expected an integer >= 0, got -3"),
    ("episode.n_way=1", "episode.n_way: expected an integer >= 2"),
    ("pretrain.gamma=0", "pretrain.gamma: expected a finite number > 0"),
    ("meta.momentum=1.5", "meta.momentum: expected a finite number >= 0 and < 1"),
    ("run.stage=all", "run.stage: expected one of 'pretrain', 'meta', 'both', got 'all'"),
    ("pretrain.size_schedule=[[0,56],[10,70]]", "last phase must train at data.image_size"),
    ("pretrain.size_schedule=[[1,84]]", "epochs must start at 0"),
    ("pretrain.size_schedule=[[0,56],[0,84]]", "epochs must start at 0 and increase"),
    ("pretrain.size_schedule=[[0,8],[5,84]]", "at least 16 pixels"),
    ("pretrain.size_schedule=[[0,56],[500,84]]", "after the last epoch"),
    ("pretrain.size_schedule=[56,84]", "pairs"),
    ("pretrain.schedule=linear", "pretrain.schedule: expected one of 'step', 'cosine', got 'linear'"),
    ("meta.schedule=exp", "meta.schedule"),
    ("pretrain.warmup_epochs=-1", "pretrain.warmup_epochs"),
    ("meta.lr=-1", "meta.lr: expected a finite number > 0"),
    ("meta.lr=nan", "meta.lr: expected a finite number > 0, got nan"),
    ("run.seed=-1", "run.seed: expected an integer >= 0 and <= 2147483647, got -1"),
    ("pretrain.head=mlp", "pretrain.head"),
    ("pretrain.head_scale=0", "pretrain.head_scale"),
    ("pretrain.label_smoothing=1.5", "pretrain.label_smoothing"),
    ("data.crop_scale=[0.5,0.2]", "data.crop_scale"),
    ("data.crop_scale=[0.5]", "data.crop_scale"),
])
def test_out_of_range_values_are_errors_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
