"""bench.py runs end to end (a tiny preset; the numbers are not checked: no timing assertions in tests).
Run: python -m pytest -q tests/test_bench.py"""
import json

import bench


def test_benchmark_runs(tmp_path, capsys):
    summary = bench.main(["--preset", "tiny", "--steps", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text()) == summary
    for key in ("ours_tokens_per_s", "reference_tokens_per_s", "ours_peak_mem_bytes", "reference_peak_mem_bytes",
                "ours_mfu"):
        assert summary[key] > 0, key
    assert "| ours (packed, one pass) |" in capsys.readouterr().out


def test_flop_count_of_one_sequence():
    from gemma import GemmaConfig
    cfg = GemmaConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=2)
    # one token: q 4x4, k and v 4x2, o 4x4, MLP 3 x 4x8 -> 2 x (16 + 16 + 16 + 96) forward, the same backward;
    # attention over 1 key: 2 x 2 x 1 x 1 x 4, three times (forward, twice backward)
    assert bench.matmul_flops(cfg, [(1, 1)]) == 2 * 2 * 144 + 3 * 16
