"""
torchrun for train.py (and rlhf.py, eval.py): the body of a command line under it (command), which process this is,
the reward model wrapped in DistributedDataParallel, and what crosses processes each step (the critic's rows,
gathered; the logs, averaged). Without torchrun: one process, and nothing of this does anything.
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import cli
import dial


@contextlib.contextmanager
def command(device, name="train"):
    """The body of a command line (train.py's, rlhf.py's and eval.py's), given this process's device:
    - under torchrun, joins the process group (NCCL between GPUs, gloo between CPU processes), moves to the process's
      own GPU, silences every process but 0, and leaves the group at the end; without torchrun, nothing of that;
    - bad input or a diverged run ends in one sentence, no traceback; anything else in one line naming the file that
      holds its traceback (cli.last_resort)."""
    with cli.last_resort(name):
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            if device.startswith("cuda"):
                device = f"cuda:{os.environ['LOCAL_RANK']}"  # one process per GPU
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            if dist.get_rank() > 0:
                sys.stdout = open(os.devnull, "w")  # one voice: process 0 prints, logs and writes
        try:
            yield device
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def world():
    """(rank, number of processes, local rank): torchrun sets these variables; one process otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def barrier():
    if dist.is_initialized():
        dist.barrier()


def parallel(core, device):
    """The reward model as each process's training step sees it: backbone and head wrapped in DistributedDataParallel,
    which averages their gradients over processes. The critic is not wrapped: every process trains its copy on the
    embeddings of the whole global batch (gather_rows), from the same seed, so the copies stay identical without
    exchanging gradients, and W and the gradient penalty are those of the global batch, as with one process."""
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    model = dial.RewardModel(DDP(core.backbone, device_ids=ids), core.head.in_features)
    model.head, model.critic = DDP(core.head, device_ids=ids), core.critic  # the new head and critic: discarded
    return model


def gather_rows(x):
    """(n, D) in every process -> (world * n, D), in process order (detached rows: no gradient flows back)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_processes(logs, device):
    if not dist.is_initialized():
        return logs
    keys, P = sorted(logs), dist.get_world_size()
    t = torch.tensor([logs[k] ** 2 if k in dial.NORM_LOGS else logs[k] for k in keys], dtype=torch.float64,
                     device=device)
    dist.all_reduce(t)
    return {k: dial.combine_norms(v, P) if k in dial.NORM_LOGS else v / P for k, v in zip(keys, t.tolist())}
