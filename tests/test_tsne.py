"""Fig. 3 (tsne.py): train.py --save-embeddings writes the embeddings of the same sampled source and target rows at
step 0 and every epoch's end; at step 0 they are the base model's last-token hidden states (LoRA starts as the
identity), computed here one sequence at a time; eval.py --tsne draws them."""
import json
import os

import numpy as np
import pytest
import torch

import data
import eval as ev
import runfolder
import train
import tsne

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tsne")
    words = "good fine clear strong weak poor vague thin".split()

    def pairs(tag, n):
        return [{"prompt": f"{tag} question {i}", "response_chosen": f"{words[i % 4]} answer {i}",
                 "response_rejected": f"{words[4 + i % 4]} answer {i}"} for i in range(n)]
    val_test = pairs("xx", 32)[12:]  # rows the target training set does not hold, split in two disjoint halves
    for name, rows in (("src", pairs("en", 12)), ("tgt", pairs("xx", 12)), ("val", val_test[:10]),
                       ("test", val_test[10:])):
        (d / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = {}
    for method in ("src-pref", "dial"):  # 3 steps an epoch (12 rows, 4 a step), 2 epochs
        out[method] = d / method
        train.main(["--task", "custom", "--source", str(d / "src.jsonl"), "--target", str(d / "tgt.jsonl"),
                    "--val", str(d / "val.jsonl"), "--test", str(d / "test.jsonl"), "--model", "tiny", "--method", method,
                    "--epochs", "2", "--batch-src", "4", "--batch-tgt", "4", "--lora-r", "4", "--lora-alpha", "4",
                    "--save-embeddings", "8", "--out", str(out[method]), "--eval-batch", "5"])
    return out


def test_snapshots_at_start_and_every_epoch(runs):
    snaps = tsne.load(runs["dial"])
    assert [(s[0], s[1]) for s in snaps] == [(0, 0.0), (3, 1.0), (6, 2.0)]
    for step, epoch, emb, domain, chosen in snaps:
        assert emb.shape == (32, 128) and (domain == 0).sum() == 16 and chosen.sum() == 16
        assert chosen[domain == 0].sum() == 8 and chosen[domain == 1].sum() == 8
    assert not np.allclose(snaps[0][2], snaps[-1][2])  # training moved them


def test_step0_embeddings_are_the_base_models_last_token_states(runs):
    """One sequence at a time through the base Gemma (no packing, no LoRA): <bos> prompt separator response."""
    cfg = json.loads((runs["dial"] / "config.json").read_text())
    gemma, tok = runfolder.load_base(str(runs["dial"] / "base"), torch.float32, "cpu")
    task = data.load_task("custom", cfg["data_dir"], cfg["source"], cfg["target"], cfg["val"], cfg["test"])
    src, tgt = tsne.sample_rows(task, 8, cfg["seed"], cfg["data_seed"])
    assert all(r in task["source"] for r in src) and all(r in task["target"] for r in tgt)
    want = []
    for rows in (src, tgt):
        for k in ("response_chosen", "response_rejected"):
            for row in rows:
                ids = tok.encode(row["prompt"] + cfg["separator"]) + tok.encode(row[k], bos=False)
                want.append(gemma(torch.tensor([ids]))[0, -1])
    got = tsne.load(runs["dial"])[0][2]
    np.testing.assert_allclose(got, torch.stack(want).detach().numpy(), atol=1e-4)


def test_plot(runs, tmp_path):
    ev.main(["--tsne", str(runs["dial"])])
    assert (runs["dial"] / "tsne.png").stat().st_size > 10000
    out = tmp_path / "both.png"
    ev.main(["--tsne", str(runs["src-pref"]), str(runs["dial"]), "-o", str(out)])
    assert out.stat().st_size > 10000
    with pytest.raises(SystemExit, match="-o FILE.png"):
        ev.main(["--tsne", str(runs["src-pref"]), str(runs["dial"])])
    with pytest.raises(SystemExit, match="--save-embeddings"):
        ev.main(["--tsne", str(tmp_path)])
    bad = tmp_path / "bad"
    os.makedirs(bad / tsne.FOLDER)
    (bad / tsne.FOLDER / "step0000000.npz").write_bytes(b"not an npz")
    with pytest.raises(SystemExit, match="not an embeddings snapshot"):
        ev.main(["--tsne", str(bad)])
