"""The shipped weights registry, package data, and a wheel that works without the source tree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sparseseg import __version__, registry
from sparseseg.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_registry_matches_the_shipped_files():
    for name, s in registry.SHIPPED.items():
        assert s.path.exists(), name
        assert registry.sha256(s.path) == s.sha256, f"{name}: update sparseseg/registry.py after shipping new weights"
        assert s.card_path.exists(), name
        assert (registry.CONFIGS_DIR / s.config).exists(), name
        assert registry.verify(name) == (True, "ok")
    assert registry.default_weights(2).name == "uresnet2d.pt"
    assert registry.default_weights(3).name == "uresnet3d.pt"
    assert registry.shipped_for(ROOT / "weights" / "uresnet2d.pt").name == "uresnet2d"
    assert registry.shipped_for(ROOT / "README.md") is None


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"no shipped weights named 'x'; shipped: uresnet2d, uresnet3d"):
        registry.get("x")
    with pytest.raises(ValueError, match=r"no shipped config named 'nope'; shipped: cvn, patch_cnn"):
        registry.config_path("nope")
    assert registry.config_path("uresnet2d.yaml") == registry.config_path("uresnet2d")


def test_verify_detects_a_changed_file(tmp_path, monkeypatch):
    fake = tmp_path / "uresnet2d.pt"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    ok, message = registry.verify("uresnet2d")
    assert not ok and "the registry records 4799ca5e209e" in message


def test_weights_and_config_commands(capsys):
    assert main(["weights", "--json", "--verify"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(registry.SHIPPED)
    assert all(r["status"] == "ok" for r in rows)
    assert main(["config", "uresnet2d"]) == 0
    assert capsys.readouterr().out == (registry.CONFIGS_DIR / "uresnet2d.yaml").read_text()
    assert main(["config"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in registry.config_names())


def test_top_level_folders_are_the_package_data():
    assert (ROOT / "weights").resolve() == registry.WEIGHTS_DIR
    assert (ROOT / "configs").resolve() == registry.CONFIGS_DIR


@pytest.mark.slow
def test_wheel_runs_predict_with_default_weights_outside_the_tree(tmp_path):
    """Build the wheel, install it into a bare target (no source tree) and predict from another folder."""
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True,
                   cwd=tmp_path, capture_output=True)
    wheel = next(dist.glob("sparseseg-*.whl"))
    assert wheel.name.startswith(f"sparseseg-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for s in registry.SHIPPED.values():
        assert f"sparseseg/weights/{s.file}" in names and f"sparseseg/weights/{s.card}" in names
    assert "sparseseg/configs/uresnet2d.yaml" in names
    assert "sparseseg/weights/topology.json" in names and "sparseseg/weights/topology.md" in names
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)

    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-c", "import sys; from sparseseg.cli import main; "
                                     "sys.exit(main(sys.argv[1:]))", *a], cwd=work, env=env, capture_output=True,
                                    text=True)
    where = subprocess.run([sys.executable, "-c", "import sparseseg; print(sparseseg.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), where
    r = run("simulate", "--preset", "crop512", "-n", "1", "--seed", "3", "-o", "ev.h5")
    assert r.returncode == 0, r.stderr
    r = run("predict", "ev.h5", "-o", "pred.h5", "--threads", "1", "-q")
    assert r.returncode == 0, r.stderr
    r = run("info", "pred.h5", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["images"] == 3
    assert info["attrs"]["weights_name"] == "uresnet2d"
    assert info["attrs"]["weights_sha256"] == registry.SHIPPED["uresnet2d"].sha256
    r = run("show", "ev.h5", "--pred", "pred.h5", "--event", "0", "-o", "ev.html")
    assert r.returncode == 0, r.stderr
    html = (work / "ev.html").read_text()
    assert "<script src=" not in html and len(html) > 3_000_000  # plotly.js embedded: opens offline


def test_citation_and_changelog_name_the_package_version():
    citation = (ROOT / "CITATION.cff").read_text()
    assert f"\nversion: {__version__}\n" in citation
    assert f"## {__version__} (" in (ROOT / "CHANGELOG.md").read_text()
