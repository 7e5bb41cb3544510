"""Shared test setup: the repo root on sys.path, no network, deterministic float32 CPU numerics."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # reference models are built by the tests, never downloaded
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_float32_matmul_precision("highest")
