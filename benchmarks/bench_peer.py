#!/usr/bin/env python3
"""The PyTorch side of ``bench.py``'s lockstep comparisons: a warm server of the peer's step.

    .venv-torch/bin/python benchmarks/bench_peer.py --mode train --config_name x4 [--quick]
    .venv-torch/bin/python benchmarks/bench_peer.py --mode infer --lr_size 128 [--quick]

Started by ``bench.py --compare_torch PYTHON``; speaks ``bench_process.serve``'s protocol. The
model, loss, pyramid and step are the peer's own (``../shared/peers/torch_drn.py``). It runs in
the torch venv, which has torch, NumPy and Pillow only: hence argparse, not absl.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
from types import ModuleType

import torch

from bench_process import TORCH_PEER, serve


def load_torch_peer(path: str | os.PathLike) -> ModuleType:
    """The PyTorch peer (``torch_drn.py``) as a module, never installed or imported by the package."""
    spec = importlib.util.spec_from_file_location("torch_drn", pathlib.Path(path))
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    return peer


def serve_torch(mode: str, variant: str, lr_size: int, quick: bool) -> None:
    """Serves one training step (`mode` ``train``, `variant` x4 or x8) or one x4 upscale of an
    LR image of `lr_size`² (``infer``, channels-last), on 2 threads; `quick`: R 2, batch 4."""
    peer = load_torch_peer(TORCH_PEER)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    blocks = 2 if quick else 7
    if mode == "train":
        scale = {"x4": 4, "x8": 8}[variant]
        batch = 4 if quick else 16
        model = peer.DRN(scale, 64, blocks)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        hr = torch.rand(batch, 3, 96, 96)

        def step_fn():  # cmd_bench's step
            lr, levels = peer.make_pyramid(hr, scale)
            opt.zero_grad(set_to_none=True)
            loss = peer.drn_loss(model, lr, levels, 2.0, "pred")
            loss.backward()
            opt.step()
    else:
        model = peer.DRN(4, 64, blocks).to(memory_format=torch.channels_last)
        model.eval()
        x = torch.rand(1, 3, lr_size, lr_size).contiguous(memory_format=torch.channels_last)

        def step_fn():
            with torch.inference_mode():
                model(x)[-1]
    serve(step_fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--config_name", choices=("x4", "x8"), default="x4")
    parser.add_argument("--lr_size", type=int, default=128)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    serve_torch(args.mode, args.config_name, args.lr_size, args.quick)


if __name__ == "__main__":
    main()
