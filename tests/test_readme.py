"""The README's Python API snippets run as written, in order, and print what they claim."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def api_snippets() -> list[str]:
    text = README.read_text()
    section = text.split("### Python API", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_api_snippets_run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    snippets = api_snippets()
    assert len(snippets) == 4
    scope: dict = {}
    for code in snippets:
        exec(compile(code, str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert re.search(r"^U \{'HIP': \d+, 'MIP': \d+", out, flags=re.M)
    assert re.search(r"^\d+ pixels, MIP mostly$", out, flags=re.M)
    assert re.search(r"^accuracy 0\.\d{3}, track/shower 0\.\d{3}$", out, flags=re.M)
    assert scope["cm"].tolist()[1] == [0, 1, 1, 0, 0]
    assert scope["report"]["accuracy"] > 0.8
    n = sum(len(ev) for ev in scope["planes"])
    assert tuple(scope["logits"].shape) == (n, 5)
    assert "mip" in out
