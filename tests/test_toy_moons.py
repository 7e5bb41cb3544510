"""toy_moons.py end to end with a few steps: the table, the JSON and the figure.
Run: python -m pytest -q tests/test_toy_moons.py"""
import json
import math

import pytest
import torch

import toy_moons


def test_moons_are_the_classic_half_circles():
    t = torch.linspace(0, math.pi, 50)
    upper, lower = toy_moons.moons(t, t)
    # the upper half of the unit circle, and the lower half of the unit circle about (1, 0.5)
    assert torch.allclose(upper.norm(dim=1), torch.ones(50)) and (upper[:, 1] > -1e-6).all()
    centre = torch.tensor([1.0, 0.5])
    assert torch.allclose((lower - centre).norm(dim=1), torch.ones(50)) and (lower[:, 1] < 0.5 + 1e-6).all()


def test_runs_end_to_end(tmp_path, capsys):
    out, js = tmp_path / "moons.png", tmp_path / "acc.json"
    # two worker processes, as the default command uses
    acc = toy_moons.main(["--seeds", "2", "--steps", "5", "--workers", "2", "--out", str(out), "--json", str(js)])
    saved = json.loads(js.read_text())
    assert saved == acc and set(saved) == {"src-pref", "dial"}
    assert all(len(a) == 2 and all(0 <= x <= 1 for x in a) for a in saved.values())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "src-pref" in table and "dial" in table and "+-" in table


@pytest.mark.parametrize("flag,value", [("--seeds", "0"), ("--shots", "0"), ("--cover", "1.5")])
def test_bad_flags_get_a_clear_error(flag, value, capsys):
    with pytest.raises(SystemExit):
        toy_moons.main([flag, value])
    assert f"{flag} " in capsys.readouterr().err
