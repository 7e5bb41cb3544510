"""
Benchmark one DIAL optimisation step: ours against a reference-style implementation of the authors' code, on the
same random checkpoint and the same batches, each measured in its own process (so that peak memory is its own).

    python bench.py --preset small --device cpu          # vocab 8000, hidden 512, 6 layers, float32, max length 512
    python bench.py --preset gemma-2b --device cuda      # the real shapes, random weights, bf16, max length 1024
    python bench.py --preset gemma3-270m --device cpu    # the real-model runs: Gemma 3 270M, sentiment lengths, max 96
    python bench.py ... --profile     # also: where one step's time goes (wall vs GPU kernel time, top operators)
    python bench.py ... --compile     # ours with each decoder layer torch.compile'd (off by default: see README)

The reference does what the authors' code does (reference/dial_reference_code.md, section 2): transformers'
GemmaForSequenceClassification + PEFT LoRA (same rank, alpha, targets), four forward passes (source chosen, source
rejected, target chosen, target rejected) each right-padded to its own longest sequence, the embedding at the last
real token of the last hidden layer, the critic's 3 iterations with their gradient penalty, loss BT + 0.01 W, one
backward, AdamW. Ours is train.py's step: packing.step_batch packs each pair as one sequence (the prompt once, both
responses after it), all of them in one stream, and dial.train_step runs the backbone once, one attention call a layer.
On a GPU both run with cuDNN's attention switched off, so neither pays its execution plan per new shape: the reference
gets flash or memory-efficient attention from transformers' SDPA path (the authors ran flash-attention-2), ours the
memory-efficient kernel it asks for.

Batches: 4 source pairs + 4 target pairs a step. Token lengths are drawn by seed from an SHP-like long-tailed
distribution: prompt ~ lognormal(median 150, sigma 0.8), each response ~ lognormal(median 80, sigma 0.8), clipped so
that prompt + response fits the maximum length. Reported, after 2 warm-up steps, as medians over --steps steps:
- real tokens per second: the non-pad tokens of the 16 sequences as the reference sees them (prompt + response,
  the same numerator for both) divided by the time of the whole step;
- peak memory: the peak resident set of each process on CPU, torch.cuda.max_memory_allocated on a GPU;
- MFU: the FLOPs of the matrix multiplications each implementation must do for the tokens it processes (padding
  excluded; forward 2 x weights x tokens plus attention, backward twice the forward's activation work and no weight
  gradients for the frozen base), over the dense matmul rate measured in the same run.
transformers and peft are needed here only, never by the training code.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SHP, SENTIMENT = (150, 80), (9, 30)  # median prompt and response tokens: SHP posts; the sentiment tasks' snippets
PRESETS = {
    "small": dict(config=dict(vocab_size=8000, hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                              num_attention_heads=8, num_key_value_heads=1, head_dim=64), max_len=512, dtype="float32",
                  lengths=SHP),
    "gemma-2b": dict(config="gemma_2b", max_len=1024, dtype="bfloat16", lengths=SHP),
    "gemma3-270m": dict(config="gemma3_270m", max_len=96, dtype="float32", lengths=SENTIMENT),  # the real-model runs
    "tiny": dict(config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=16), max_len=64, dtype="float32",
                  lengths=SHP),
}  # tiny: only to check that the benchmark runs (tests/test_bench.py)
LORA = dict(r=64, alpha=64, targets=("q_proj", "v_proj"))  # the paper's rank and alpha, PEFT's default targets


def make_batches(n_steps, vocab_size, max_len, seed, lengths=SHP):
    """n_steps batches of 4 source + 4 target examples (prompt ids, [chosen ids, rejected ids]); lengths: the median
    prompt and response lengths in tokens."""
    g = torch.Generator().manual_seed(seed)

    def lognormal(median):
        return int(math.exp(math.log(median) + 0.8 * torch.randn((), generator=g).item())) + 1

    def example():
        p = min(lognormal(lengths[0]), max_len - 2)
        rs = [min(lognormal(lengths[1]), max_len - p) for _ in range(2)]
        ids = lambda n: torch.randint(3, vocab_size, (n,), generator=g).tolist()  # noqa: E731
        return [2] + ids(p - 1), [ids(r) for r in rs]

    return [dict(src=[example() for _ in range(4)], tgt=[example() for _ in range(4)]) for _ in range(n_steps)]


def real_tokens(batch):
    return sum(len(p) + len(r) for ex in batch["src"] + batch["tgt"] for p, rs in [ex] for r in rs)


def matmul_flops(cfg, blocks, kept=None):
    """Forward + backward FLOPs of the matrix products of a frozen-base LoRA model over attention blocks of real
    tokens, each (query tokens, keys each attends on average); kept: the tokens whose last layer is computed in full
    (default: all). The backward computes activation gradients only (as much as the forward's projections, twice its
    attention): the frozen base weights get no gradient."""
    D, Hd, Kd, I, L = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim,
                       cfg.intermediate_size, cfg.num_hidden_layers)
    qkv, rest = 2 * (D * Hd + 2 * D * Kd), 2 * (Hd * D + 3 * D * I)  # forward FLOPs a token: q, k, v; o and MLP
    tokens = sum(t for t, _ in blocks)
    attention = sum(2 * 2 * t * keys * Hd for t, keys in blocks)  # scores and weighted values
    projections = L * qkv * tokens + ((L - 1) * tokens + (tokens if kept is None else kept)) * rest
    return 2 * projections + 3 * L * attention


def dense_rate(device, dtype):
    """FLOP/s of a large square matrix product, the best of three timings."""
    n, reps = (8192, 20) if device == "cuda" else (2048, 2)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * reps / best


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


# -----------------------------------------------------------------------------
# the two implementations: each returns a function doing one optimisation step on a batch, and its FLOPs


def ours(path, device, dtype, cfg, compile=False):
    import packing
    import dial
    from gemma import Gemma
    from lora import add_lora
    gemma = Gemma.from_pretrained(path, dtype=dtype, device=device)
    add_lora(gemma, LORA["r"], LORA["alpha"], targets=LORA["targets"])
    if compile:  # each decoder layer compiled once, dynamic shapes: the stream's length changes every step
        for layer in gemma.layers:
            layer.compile(dynamic=True)
    model = dial.RewardModel(packing.GemmaBackbone(gemma), cfg.hidden_size)
    model.head.to(device), model.critic.to(device)
    opt = torch.optim.AdamW([p for p in gemma.parameters() if p.requires_grad] + list(model.head.parameters()), lr=5e-5)
    hp = dial.DialConfig()
    critic_opt = dial.critic_optimizer(model.critic, hp)

    def step(batch):
        dial.train_step(model, [packing.to_device(packing.step_batch(batch["src"], batch["tgt"], "dial"), device)], "dial",
                        opt, critic_opt, hp)

    def flops(batch):  # each pair once: its prompt, then each response attending to the prompt and itself
        blocks = []
        for p, rs in batch["src"] + batch["tgt"]:
            blocks += [(len(p), len(p) / 2)] + [(len(r), len(p) + len(r) / 2) for r in rs]
        return matmul_flops(cfg, blocks, kept=2 * len(batch["src"] + batch["tgt"]))  # the last layer: 16 tokens

    return step, flops


def reference(path, device, dtype, cfg, compile=False):
    import peft
    import transformers
    import dial
    model = transformers.AutoModelForSequenceClassification.from_pretrained(  # Gemma, or Gemma 3's text model
        path, num_labels=1, dtype=dtype, attn_implementation="sdpa").to(device)  # they used flash_attention_2
    model.config.pad_token_id = 0
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["alpha"],
                                                       target_modules=list(LORA["targets"])))
    critic = dial.Critic(cfg.hidden_size).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-4, weight_decay=1e-3)

    def forward(seqs):  # one padded pass: rewards (B,) and last-token embeddings (B, D)
        n = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (n - len(s)) for s in seqs], device=device)
        mask = (ids != 0).long()
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        last = mask.sum(1) - 1
        return out.logits[:, 0].float(), out.hidden_states[-1][torch.arange(len(seqs)), last].float()

    def gradient_penalty(src, tgt):  # theirs: tile both sides to n_s + n_t rows, penalise interpolates and real rows
        N = len(src) + len(tgt)
        s, t = src.repeat(math.ceil(N / len(src)), 1)[:N], tgt.repeat(math.ceil(N / len(tgt)), 1)[:N]
        a = torch.rand(N, 1, device=device)
        x = torch.cat([s + a * (t - s), s, t]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        return (g.norm(dim=1) - 1).pow(2).mean()

    def step(batch):
        r, e = {}, {}
        for name, examples in (("src", batch["src"]), ("tgt", batch["tgt"])):
            for k in (0, 1):  # chosen, rejected: four separate padded passes
                r[name, k], e[name, k] = forward([p + rs[k] for p, rs in examples])
        bt = dial.bt_loss(r["src", 0], r["src", 1])
        src, tgt = torch.cat([e["src", 0], e["src", 1]]), torch.cat([e["tgt", 0], e["tgt", 1]])
        for _ in range(3):
            w = critic(src.detach()).mean() - critic(tgt.detach()).mean()
            critic_opt.zero_grad()
            (gradient_penalty(src.detach(), tgt.detach()) - w).backward()
            critic_opt.step()
        loss = bt + 0.01 * (critic(src).mean() - critic(tgt).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def flops(batch):  # every sequence on its own, prompt included
        return matmul_flops(cfg, [(len(p) + len(r), (len(p) + len(r)) / 2)
                                  for p, rs in batch["src"] + batch["tgt"] for r in rs])

    return step, flops


def measure(impl, path, args):
    from gemma import GemmaConfig
    torch.manual_seed(0)
    device, dtype = args.device, getattr(torch, PRESETS[args.preset]["dtype"])
    cfg = GemmaConfig.from_json(os.path.join(path, "config.json"))
    if device == "cuda":  # both on their best kernel: flash / memory-efficient, never cuDNN's plan per new shape
        torch.backends.cuda.enable_cudnn_sdp(False)
    step, flops = (ours if impl == "ours" else reference)(path, device, dtype, cfg, args.compile and impl == "ours")
    preset = PRESETS[args.preset]
    batches = make_batches(args.warmup + args.steps, cfg.vocab_size, preset["max_len"], args.seed, preset["lengths"])
    rate = dense_rate(device, dtype)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens_per_s, mfu = [], []
    for i, batch in enumerate(batches):
        sync(device)
        t = time.perf_counter()
        step(batch)
        sync(device)
        dt = time.perf_counter() - t
        if i >= args.warmup:
            tokens_per_s.append(real_tokens(batch) / dt)
            mfu.append(flops(batch) / dt / rate)
    out = dict(tokens_per_s=statistics.median(tokens_per_s), mfu=statistics.median(mfu), peak_mem_bytes=peak_memory(device),
               matmul_flops_per_s=rate, real_tokens_per_step=statistics.median(real_tokens(b) for b in batches))
    if args.profile:
        out["profile"] = profile_step(step, batches[-1], device)
    return out


def profile_step(step, batch, device):
    """Where one step's time goes, as text: wall time against the time GPU kernels ran, and the top operators."""
    from torch.profiler import ProfilerActivity, profile
    from torch.autograd import DeviceType
    cuda = device == "cuda"
    sync(device)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        step(batch)
        sync(device)
    wall = time.perf_counter() - t
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6
    head = f"one step under the profiler: wall {wall:.3f} s" + (f", GPU kernels {busy:.3f} s ({len(kernels)} launches)"
                                                               if cuda else " (CPU only: no kernel time)")
    table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=15)
    return head + "\n" + table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", choices=PRESETS)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=7, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the batches' lengths and tokens")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--profile", action="store_true", help="also print where one step's time goes (torch.profiler)")
    p.add_argument("--compile", action="store_true", help="torch.compile each of our decoder layers (default: off)")
    p.add_argument("--impl", choices=("ours", "reference"), help=argparse.SUPPRESS)  # internal: one measuring process
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl:
        print(json.dumps(measure(args.impl, args.checkpoint, args)))
        return
    from gemma import Gemma, GemmaConfig
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)  # one random checkpoint for both, written in the preset's dtype
        config = PRESETS[args.preset]["config"]
        with torch.device(args.device):
            model = Gemma(getattr(GemmaConfig, config)() if isinstance(config, str) else GemmaConfig(**config))
        model.to(getattr(torch, PRESETS[args.preset]["dtype"])).save_pretrained(tmp)
        del model
        results = {}
        for impl in ("reference", "ours"):
            cmd = [sys.executable, __file__, "--impl", impl, "--checkpoint", tmp] + (argv or sys.argv[1:])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"the {impl} process failed:\n{out.stderr[-3000:]}")
            results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    r, o = results["reference"], results["ours"]
    summary = dict(ours_tokens_per_s=o["tokens_per_s"], reference_tokens_per_s=r["tokens_per_s"],
                   ours_peak_mem_bytes=o["peak_mem_bytes"], reference_peak_mem_bytes=r["peak_mem_bytes"],
                   ours_mfu=o["mfu"], reference_mfu=r["mfu"], speedup=o["tokens_per_s"] / r["tokens_per_s"],
                   memory_ratio=o["peak_mem_bytes"] / r["peak_mem_bytes"], matmul_flops_per_s=o["matmul_flops_per_s"],
                   settings=dict(preset=args.preset, device=args.device, steps=args.steps, warmup=args.warmup,
                                 seed=args.seed, threads=torch.get_num_threads(), torch=torch.__version__,
                                 compile=args.compile,
                                 real_tokens_per_step=o["real_tokens_per_step"],
                                 lora={**LORA, "targets": list(LORA["targets"])}))
    print(f"{args.preset} on {args.device}, median of {args.steps} steps, {o['real_tokens_per_step']:.0f} real tokens a step")
    print("| implementation | real tokens/s | peak memory | MFU |\n| --- | --- | --- | --- |")
    for name, x in (("reference-style (transformers + PEFT, 4 padded passes)", r), ("ours (packed, one pass)", o)):
        print(f"| {name} | {x['tokens_per_s']:,.0f} | {x['peak_mem_bytes'] / 2**30:.2f} GiB | {100 * x['mfu']:.1f}% |")
    print(f"ours / reference: {summary['speedup']:.2f}x the tokens per second at {summary['memory_ratio']:.2f}x the "
          f"peak memory (dense matmul rate {o['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s)")
    for name in ("reference", "ours") if args.profile else ():
        print(f"\n{name}: {results[name]['profile']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    import cli
    with cli.last_resort("bench"):  # one sentence for bad input, one line naming the traceback's file for a bug
        main()
