"""Peak memory of Gemma.from_pretrained on a synthetic bf16 checkpoint, relative to its size on disk.

    python tests/load_memory.py                 # about 330M parameters (660 MB on disk)
    python tests/load_memory.py --layers 6      # about 120M, what the test suite runs

Writes the checkpoint to a temporary folder, then loads it in a fresh process (so that writing it does not count)
and reports that process's peak resident memory above what it held just before loading.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss(field):  # bytes of VmRSS (now) or VmHWM (peak since start or since the last reset)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def measure(path):
    import torch
    from gemma import Gemma, GemmaConfig
    with torch.device("meta"):  # torch's one-off lazy set-up (about 77 MB at the first nn.Embedding, even on the
        Gemma(GemmaConfig.tiny())  # meta device) is the same for any model size: it is not the cost of loading
    base = rss("VmRSS")
    try:  # reset the peak to the current size, so that the imports above do not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    model = Gemma.from_pretrained(path, dtype=torch.bfloat16)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    params = sum(p.numel() for p in model.parameters())
    return dict(params=params, file_bytes=size, peak_rss_increase_bytes=rss("VmHWM") - base)


def write_checkpoint(path, layers):
    import torch
    from safetensors.torch import save_file
    from gemma import Gemma, GemmaConfig
    cfg = GemmaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=1, head_dim=128)
    with torch.device("meta"):
        shapes = {"model." + k: v.shape for k, v in Gemma(cfg).state_dict().items()}
    # two shards, as the hub's gemma-2b, each written on its own to keep this process small too
    keys = list(shapes)
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        save_file({k: torch.randn(shapes[k], dtype=torch.bfloat16) for k in part},
                  os.path.join(path, f"model-0000{i + 1}-of-00002.safetensors"), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + (k in keys[len(keys) // 2:])}-of-00002.safetensors"
                                            for k in keys}}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=20, help="decoder layers (15M parameters each, plus 33M embedding)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a sentence")
    p.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)  # internal: the fresh loading process
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        sys.exit()
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(tmp, args.layers)
        out = subprocess.run([sys.executable, __file__, "--measure", tmp], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    r["ratio"] = r["peak_rss_increase_bytes"] / r["file_bytes"]
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['params'] / 1e6:.0f}M parameters, {r['file_bytes'] / 1e6:.0f} MB on disk (bf16): loading peaked "
              f"{r['peak_rss_increase_bytes'] / 1e6:.0f} MB above the process's size before, {r['ratio']:.3f}x the files")
