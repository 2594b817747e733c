"""The recipe ablation compares what it says it compares: one base config, only the loss
weighting (or the training precision) changed, and its "shipped recipe" row is the shipped one."""
from pathlib import Path

import yaml

from sparseseg.config import resolve

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _script():
    return load_script("recipe_ablation")


def test_variants_differ_only_in_weighting_or_precision():
    mod = _script()
    cfgs = {name: resolve(mod.variant_config(name, 1500)) for name in mod.VARIANTS}
    ref = cfgs["plain"]
    for name, cfg in cfgs.items():
        assert cfg["model"] == ref["model"], name
        assert cfg["data"] == ref["data"], name
        train = {k: v for k, v in cfg["train"].items() if k != "precision"}
        assert train == {k: v for k, v in ref["train"].items() if k != "precision"}, name
    assert ref["train"]["init"] is None and ref["train"]["max_steps"] == 1500 and ref["data"]["val_images"] == 400
    # the table's network and stream, whatever the shipped recipe has moved on to
    assert ref["model"]["depth"] == 5 and ref["data"]["seed"] == 7 and ref["train"]["ema"] == 0.0
    assert ref["weights"]["class_mode"] == "none" and not ref["weights"]["cluster"] and not ref["weights"]["vertex"]
    assert cfgs["class_vertex_fp32"]["train"]["precision"] == "fp32"
    assert {cfgs[n]["train"]["precision"] for n in cfgs if n != "class_vertex_fp32"} == {"auto"}
    assert cfgs["class_vertex_fp32"]["weights"] == cfgs["class_vertex"]["weights"]


def test_shipped_recipe_row_has_the_shipped_weighting():
    mod = _script()
    shipped = resolve(yaml.safe_load((ROOT / "configs" / "uresnet2d.yaml").read_text()))
    assert resolve(mod.variant_config("class_vertex", 10))["weights"] == shipped["weights"]
    assert resolve(mod.variant_config("class_vertex_cluster", 10))["weights"] == {**shipped["weights"], "cluster": True}


def test_package_default_weighting_is_the_shipped_recipe():
    shipped = resolve(yaml.safe_load((ROOT / "configs" / "uresnet2d.yaml").read_text()))
    assert resolve({})["weights"] == shipped["weights"]
    assert resolve({})["weights"]["class_values"] == [1.5, 1.0, 1.0, 1.5, 3.0]
    assert not resolve({})["weights"]["cluster"]
