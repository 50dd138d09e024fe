"""Optional W&B / MLflow logging (okkhor.training.tracking): off by default, one line when the package is missing,
and the ignite logger's calls reach the package (a stand-in module here: no test touches the network)."""
from __future__ import annotations

import sys
import types

from ignite.engine import Engine

from okkhor.config import load_config
from okkhor.training.tracking import open_trackers


def _engine():
    engine = Engine(lambda e, batch: {"loss": 0.5})
    opt = types.SimpleNamespace(param_groups=[{"lr": 0.1}])
    return engine, opt


def test_off_by_default_and_one_line_when_missing(monkeypatch):
    engine, opt = _engine()
    lines = []
    assert open_trackers(load_config(None), engine, opt, dict, lines.append) == [] and lines == []
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    cfg = load_config(None, ["log.wandb=okkhor", "log.mlflow=file:./mlruns"])
    assert open_trackers(cfg, engine, opt, dict, lines.append) == []
    assert lines == ["train: log.wandb is set but wandb is not installed (pip install wandb); not logging to W&B",
                     "train: log.mlflow is set but mlflow is not installed (pip install mlflow); not logging to "
                     "MLflow"]


def test_wandb_gets_the_config_and_each_epochs_results(monkeypatch):
    calls = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = types.SimpleNamespace(name="wandb")
    fake.init = lambda **kw: calls.append(("init", kw))
    fake.log = lambda data, step=None, **kw: calls.append(("log", data, step))
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "wandb" else None)
    engine, opt = _engine()
    results = {"valid": {"score": 0.75, "loss": 1.5}}
    loggers = open_trackers(load_config(None, ["log.wandb=okkhor"]), engine, opt, lambda: results, lambda m: None)
    engine.run([0] * 10, max_epochs=2)
    for logger in loggers:
        logger.close()
    assert calls[0][0] == "init" and calls[0][1]["project"] == "okkhor"
    assert calls[0][1]["config"]["log"]["wandb"] == "okkhor"
    epochs = [c for c in calls if c[0] == "log" and "epoch/valid/score" in c[1]]
    assert [(c[1]["epoch/valid/score"], c[2]) for c in epochs] == [(0.75, 10), (0.75, 20)]
    assert any(c[0] == "log" and c[1].get("train/loss") == 0.5 for c in calls)
    assert calls[-1] == ("finish",)


def test_flatten_gives_the_dotted_keys_of_the_config():
    from okkhor.training.tracking import flatten

    flat = flatten(load_config(None, ["train.lr=0.5", "data.targets=[grapheme_root]"]).to_dict())
    assert flat["train.lr"] == 0.5 and flat["data.targets"] == ["grapheme_root"] and flat["seed"] == 42
    assert not any(isinstance(v, dict) for v in flat.values())
    assert flatten({"a": {"b": {"c": 1}, "d": 2}}) == {"a.b.c": 1, "a.d": 2}
