"""DRN x8, the paper's network (Section 5.1) in bfloat16: three primal blocks, 384-pixel HR crops.

    python train.py --config=configs/x8.py --workdir=runs/x8                 # ImageNet (TFDS)
    python train.py --config=configs/x8.py:20000 --workdir=runs/x8 \\
        --config.data.train=folder:/data/T91,/data/BSD200 --config.data.val=folder:/data/Set5/HR

The recipe of configs/x4.py (its docstring says why) at x8: F 64, 7 modules per block (21 at
x8), bfloat16, Adam at 1e-4 with decays at 40% and 80% of the steps, EMA 0.999. HR patch 384
keeps the x4 recipe's 48-pixel LR patches (a guess, docs/method.md#guesses).
"""

import importlib.util
import pathlib


def _x4():
    # configs/ is not a package: load the sibling file by path.
    spec = importlib.util.spec_from_file_location("drn_config_x4", pathlib.Path(__file__).with_name("x4.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(steps: str | None = None):
    x4 = _x4()
    return x4.paper_network(x4.base_config(), scale=8, hr_patch_size=384, steps=steps)
