"""DRN x8, the paper's network (Section 5.1) in bfloat16: three primal blocks, 384-pixel HR crops.

    python train.py --config=configs/x8.py --workdir=runs/x8                 # ImageNet (TFDS)
    python train.py --config=configs/x8.py:20000 --workdir=runs/x8 \\
        --config.data.train=folder:/data/T91,/data/BSD200 --config.data.val=folder:/data/Set5/HR

The recipe of configs/x4.py (its docstring says why) at x8: F 64, 7 modules per block (21 at
x8), bfloat16, Adam at 1e-4 with decays at 40% and 80% of the steps, EMA 0.999. HR patch 384
keeps the x4 recipe's 48-pixel LR patches (a guess, docs/method.md#guesses).
"""

from drn_jax import recipes
from drn_jax.config import base_config

PAPER_STEPS = 1_000_000
SCHEDULE = dict(decay_every=0.4, per_run={"checkpoint_every_steps": (10, 5_000),
                                          "eval_every_steps": (10, 10_000),
                                          "log_every_steps": (100, 100)})  # configs/x4.py's


def get_config(steps: str | None = None):
    config = recipes.paper_network(base_config(), scale=8, hr_patch_size=384)
    return recipes.with_steps(config, steps or PAPER_STEPS, **SCHEDULE)
