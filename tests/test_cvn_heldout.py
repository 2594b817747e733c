"""scripts/cvn_heldout.py: the held-out table of a CVN checkpoint, with the gain rows."""
import json

import numpy as np
import pytest
import torch

from sparseseg import checkpoint
from sparseseg.models import build_model

from conftest import load_script


def _script():
    return load_script("cvn_heldout")


def test_heldout_table_and_gain_rows(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = {"name": "cvn", "widths": [4, 8], "blocks": [1, 1], "input_norm": "mip"}
    model = build_model("cvn", **{k: v for k, v in cfg.items() if k != "name"})
    weights = checkpoint.save(tmp_path / "cvn.pt", {"model": model.state_dict(), "version": "t",
                                                    "config": {"model": cfg, "data": {"val_seed": 1001}},
                                                    "classes": ["nu_mu CC", "nu_e CC", "NC"]})
    out = tmp_path / "out"
    assert _script().main(["--weights", str(weights), "-n", "6", "--tune-n", "6", "--seed", "5",
                           "--gains", "0.5,2", "--out", str(out), "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6 and m["input_norm"] == "mip" and [r["gain"] for r in m["gains"]] == [0.5, 2.0]
    # the confusion matrix holds the six interactions and the accuracy is its diagonal
    cm = np.array(m["confusion"])
    assert cm.sum() == 6 and m["accuracy"] == pytest.approx(np.trace(cm) / 6)
    for row in m["gains"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and set(row["efficiency"]) == {"nu_mu CC", "nu_e CC", "NC"}
    assert (out / "confusion.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert " 0.50 " in text and " 2.00 " in text


@pytest.mark.parametrize("gains,message", [("0.5,x", "--gains: expected numbers separated by commas, got '0.5,x'"),
                                           ("0,1", "--gains: every value must be > 0, got '0,1'")])
def test_bad_gains(gains, message, capsys):
    with pytest.raises(SystemExit):
        _script().main(["--weights", "w.pt", "--gains", gains])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
