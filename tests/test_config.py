"""The typed config tree: defaults, YAML, dotted overrides, one clear error per bad key or value."""
from __future__ import annotations

import pytest

from okkhor.config import Config, config_from_dict, load_config, valid_keys
from okkhor.errors import OkkhorError


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: efficientnet_b0\ntrain:\n  lr: 0.01\n  amp: bf16\n")
    cfg = load_config(f, ["train.lr=3e-4", "data.crop=false", "train.loss_weights=[2,1,1]", "train.batch_size=auto",
                          "train.effective_batch=256"])
    assert cfg.model.name == "efficientnet_b0" and cfg.train.amp == "bf16"
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.data.crop is False
    assert cfg.train.loss_weights == [2.0, 1.0, 1.0] and cfg.train.batch_size == "auto"
    assert config_from_dict(cfg.to_dict()) == cfg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(OkkhorError) as e:
        load_config(None, ["train.lrr=1"])
    msg = str(e.value)
    assert "train.lrr" in msg and "train.lr" in msg and "mix.alpha" in msg and "\n" not in msg


@pytest.mark.parametrize("override,needle", [
    ("train.epochs=two", "train.epochs"),
    ("train.amp=fp8", "off|bf16|fp16"),
    ("data.crop=maybe", "data.crop"),
    ("train.epochs=1.5", "train.epochs"),
    ("mix.alpha=-1", "mix.alpha"),
    ("data.fold=7", "data.fold"),
    ("train.batch_size=auto", "train.effective_batch"),
    ("train.oom_at=3", "unknown config key 'train.oom_at'"),  # a test hook, not a config key
    ("train.schedule=cosin", "onecycle, cosine, poly, step, plateau, constant"),
])
def test_bad_values(override, needle):
    with pytest.raises(OkkhorError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_off_is_a_choice_not_a_boolean():
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    assert load_config(None, ["train.amp=bf16"]).train.amp == "bf16"


def test_bool_strings_are_not_truthy():
    assert load_config(None, ["train.channels_last=False"]).train.channels_last is False
    assert load_config(None, ["train.channels_last=true"]).train.channels_last is True


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: [\n")
    with pytest.raises(OkkhorError, match="c.yaml"):
        load_config(f)
    with pytest.raises(OkkhorError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_valid_keys_cover_issue_names():
    keys = set(valid_keys())
    for k in ["seed", "data.image_size", "data.crop", "data.fold", "data.limit", "data.workers", "model.name",
              "model.act", "model.pretrained", "model.dropout", "train.epochs", "train.batch_size", "train.accum",
              "train.optimizer", "train.lr", "train.weight_decay", "train.schedule", "train.amp",
              "train.channels_last", "train.ema", "train.clip_grad", "train.loss_weights", "train.patience",
              "eval.train_clean_size", "aug.preset", "aug.file", "mix.kind", "mix.alpha", "mix.prob", "mix.switch",
              "mix.k", "mix.layer", "mix.off_epoch", "train.label_smoothing", "train.ohem"]:
        assert k in keys, k
    assert Config().to_yaml().startswith("seed: 42")


def test_a_checkpoint_config_with_a_retired_key_still_loads():
    """Runs written before train.oom_at left the config keep loading for inference."""
    old = Config().to_dict()
    old["train"]["oom_at"] = -1
    assert config_from_dict(old) == Config()
    with pytest.raises(OkkhorError, match="train.oom_at"):
        load_config(None, ["train.oom_at=-1"])
