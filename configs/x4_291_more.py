"""The second stage of the shipped x4 model: `configs/x4_291.py`'s model, trained further.

    python train.py --config=configs/x4_291.py --workdir=runs/x4_291              # stage 1
    python train.py --config=configs/x4_291_more.py --workdir=runs/x4_291_more \\
        --config.init_from=runs/x4_291                                            # stage 2
    python eval.py --workdir=runs/x4_291_more --data_dir=../shared/data/benchmark --datasets=Set5,Set14

A longer schedule in two runs that each fit a session of the project's 2-core CPU: stage 2
starts from stage 1's (EMA) parameters (`init_from`, `drn_jax.warm_start`; the default `"x4"` is
the shipped x4 model, which is stage 1 until stage 2 replaces it: its card records the sha256
of the parameters it started from) with a fresh Adam state and a restarted, lower schedule:
2e-4 with two x0.3 decays at 5/12 and 10/12 of the run. A restart at stage 1's peak (8e-4)
would first undo part of what stage 1 reached; its last rate was 7.2e-5.
Seed 1, so that the crops differ from stage 1's. Everything else is stage 1's recipe (see `configs/x4_291.py`).
Target: Set5 x4 >= 31.53 dB and Set14 >= 28.03 dB (VDSR's row of the paper's x4 table).
"""

from drn_jax import recipes
from drn_jax.config import base_config

DEFAULT_STEPS = 8_000


def get_config(steps: str | None = None):
    config = recipes.cpu_291(base_config(), scale=4, hr_patch_size=64)  # stage 1's recipe
    recipes.later_stage(config, steps or DEFAULT_STEPS, init_from="x4", seed=1)  # seed: other crops than stage 1's
    config.checkpoint_every_steps = 1_000
    config.log_every_steps = 100
    config.eval_every_steps = 1_000
    return config
