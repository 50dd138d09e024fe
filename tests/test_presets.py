"""Presets shipped as package data, found by name; short flags of `okkhor train` equal their `--set` form."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from okkhor.cli import app
from okkhor.commands.flags import SHORT_FLAGS, short_overrides
from okkhor.config import load_config
from okkhor.errors import OkkhorError
from okkhor.presets import find_config, presets

NAMES = {"demo-cpu", "effnet-b0-128", "seresnext50-mish-mixup-128", "finetune-real"}


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_presets_are_package_data_and_load():
    shipped = {p.name: p for p in presets()}
    assert NAMES <= set(shipped)
    for p in shipped.values():
        assert p.path.parent.name == "presets" and p.path.parent.parent.name == "okkhor"
        assert p.purpose and not p.purpose.startswith("#")
    cfgs = {name: load_config(find_config(name)) for name in shipped}
    assert cfgs["demo-cpu"].data.image_size == 64 and cfgs["demo-cpu"].train.device in ("auto", "cpu")
    smm = cfgs["seresnext50-mish-mixup-128"]
    assert (smm.model.name, smm.model.act, smm.mix.kind, smm.aug.preset) == ("seresnext50_32x4d", "mish", "both",
                                                                             "medium")
    assert cfgs["effnet-b0-128"].model.name == "efficientnet_b0"


def test_find_config_by_name_suffix_or_path(tmp_path, monkeypatch):
    demo = find_config("demo-cpu")
    assert find_config("demo-cpu.yaml") == demo and demo.name == "demo-cpu.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("train:\n  epochs: 7\n")
    assert find_config(own) == own and load_config(find_config(str(own))).train.epochs == 7
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-cpu").write_text("train:\n  epochs: 9\n")   # a file of that name wins over the preset
    assert find_config("demo-cpu").resolve() == (tmp_path / "demo-cpu").resolve()
    with pytest.raises(OkkhorError, match=r"--config nope: no such file.*presets: .*demo-cpu"):
        find_config("nope")
    with pytest.raises(OkkhorError, match="no such file"):
        find_config(tmp_path / "sub" / "effnet-b0-128")   # a path in a folder is never a preset name


def test_okkhor_configs_lists_every_preset_with_its_purpose():
    code, out = cli("configs")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == len(presets())
    for line, p in zip(lines, presets(), strict=False):
        assert line.split()[0] == p.name and line.endswith(p.purpose)


def test_config_by_name_and_print_config():
    code, out = cli("train", "--config", "demo-cpu", "--print-config")
    assert code == 0
    assert yaml.safe_load(out) == load_config(find_config("demo-cpu")).to_dict()
    assert yaml.safe_load(out)["model"]["name"] == "resnet10t"
    code, out = cli("train", "--config", "nope", "--print-config")
    assert code == 2 and "okkhor: error: --config nope: no such file" in out
    code, out = cli("train", "--config", "demo-cpu")
    assert code == 2 and "--data" in out


# flag, a value unlike the demo preset's, its --set value
FLAG_VALUES = [("model", "resnet18"), ("epochs", "3"), ("lr", "0.0005"), ("batch_size", "24"),
               ("image_size", "48"), ("fold", "2"), ("amp", "bf16")]


def test_flag_values_cover_every_short_flag():
    assert [f for f, _ in FLAG_VALUES] == list(SHORT_FLAGS)


@pytest.mark.parametrize("flag,value", FLAG_VALUES)
def test_short_flag_equals_its_set_form(flag, value):
    key = SHORT_FLAGS[flag]
    section, name = key.split(".")
    code, by_flag = cli("train", "--config", "demo-cpu", "--" + flag.replace("_", "-"), value, "--print-config")
    assert code == 0, by_flag
    code, by_set = cli("train", "--config", "demo-cpu", "--set", f"{key}={value}", "--print-config")
    assert code == 0, by_set
    resolved = yaml.safe_load(by_flag)
    assert resolved == yaml.safe_load(by_set)
    default = load_config(find_config("demo-cpu")).to_dict()
    assert resolved[section][name] != default[section][name]
    assert str(resolved[section][name]) == value or resolved[section][name] == yaml.safe_load(value)
    assert {k: v for k, v in resolved.items() if k != section} == {k: v for k, v in default.items() if k != section}


def test_set_wins_over_short_flag_and_bad_values_name_the_key():
    code, out = cli("train", "--config", "demo-cpu", "--epochs", "3", "--set", "train.epochs=4", "--print-config")
    assert code == 0 and yaml.safe_load(out)["train"]["epochs"] == 4
    code, out = cli("train", "--epochs", "three", "--print-config")
    assert code == 2 and "train.epochs" in out and "three" in out
    code, out = cli("train", "--amp", "fp8", "--print-config")
    assert code == 2 and "train.amp" in out and "bf16" in out


def test_short_overrides_order_and_unknown():
    assert short_overrides(epochs=2, model="resnet18", lr=None) == ["model.name=resnet18", "train.epochs=2"]
    with pytest.raises(TypeError, match="not a short flag: epoch"):
        short_overrides(epoch=2)


def test_generalize_preset_names_a_synth_line_that_runs(tmp_path):
    import re
    import shlex

    path = find_config("generalize-cpu")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("# synth:")]
    assert len(lines) == 1 and re.match(r"^# synth: okkhor synth DATA --train \d+ ", lines[0]), lines
    args = shlex.split(lines[0][len("# synth: okkhor "):])
    assert args[:2] == ["synth", "DATA"]
    # the same options at toy size: the line is one the synth command takes
    train_at = args.index("--train")
    args[train_at + 1] = "12"
    if "--test" in args:
        args[args.index("--test") + 1] = "6"
    code, out = cli(*[str(tmp_path / "d") if a == "DATA" else a for a in args], "--workers", "1")
    assert code == 0, out
    assert (tmp_path / "d" / "train.csv").is_file()
    cfg = load_config(path)
    assert cfg.model.grapheme_head and cfg.aug.preset != "none"


def test_finetune_real_header_is_a_recipe_whose_steps_fit_together():
    """finetune-real's `# pretrain:` and `# finetune:` lines are okkhor train commands that load; the second starts
    from the first's best.pt (--init), so their models and preprocessing agree; a fixed epoch size."""
    import shlex

    path = find_config("finetune-real")
    header = {line.split(":", 1)[0][2:]: shlex.split(line.split(":", 1)[1])
              for line in path.read_text(encoding="utf-8").splitlines()
              if line.startswith(("# pretrain:", "# finetune:"))}
    assert set(header) == {"pretrain", "finetune"}
    cfgs = {}
    for step, args in header.items():
        assert args[:2] == ["okkhor", "train"]
        code, out = cli(*args[1:], "--print-config")
        assert code == 0, out
        cfgs[step] = yaml.safe_load(out)
    pre, fine = header["pretrain"], header["finetune"]
    assert fine[fine.index("--init") + 1] == f"{pre[pre.index('--out') + 1]}/checkpoints/best.pt"
    assert cfgs["pretrain"]["model"]["name"] == cfgs["finetune"]["model"]["name"]
    for key in ("image_size", "crop", "folds"):
        assert cfgs["pretrain"]["data"][key] == cfgs["finetune"]["data"][key], key
    assert cfgs["finetune"]["train"]["lr"] < cfgs["pretrain"]["train"]["lr"]
    assert cfgs["finetune"]["data"]["epoch_size"] > 0
