"""A third stage for the shipped x4 model on larger crops: `configs/x4_291_more.py`'s model,
trained further at HR patch 128 (32-pixel LR patches) instead of 64 (16).

    python train.py --config=configs/x4_291.py --workdir=runs/x4_291                     # stage 1
    python train.py --config=configs/x4_291_more.py --workdir=runs/x4_291_more \\
        --config.init_from=runs/x4_291                                                   # stage 2
    python train.py --config=configs/x4_291_patch128.py --workdir=runs/x4_291_patch128 \\
        --config.init_from=runs/x4_291_more                                              # stage 3
    python eval.py --workdir=runs/x4_291_patch128 --data_dir=../shared/data/benchmark --datasets=Set5,Set14

Why: stages 1 and 2 trained on 16-pixel LR crops to keep the number of updates up on the CPU,
less than the network's receptive-field radius (21 LR pixels, `inference.receptive_field_radius`);
evaluation runs on whole images.
A crop costs about 4x stage 2's, so the stage is short: 3,000 steps, Adam restarted at 2e-4 with
x0.3 decays at 5/12 and 10/12, seed 2 (other crops than both earlier stages). The default
`init_from` `"x4"` is the shipped x4 model (stage 2 until this stage replaces it).
Target: Set5 x4 >= 31.53 dB and Set14 >= 28.03 dB (VDSR's row of the paper's x4 table).
"""

from drn_jax import recipes
from drn_jax.config import base_config

DEFAULT_STEPS = 3_000


def get_config(steps: str | None = None):
    config = recipes.cpu_291(base_config(), scale=4, hr_patch_size=128)  # stage 1's recipe, larger crops
    recipes.later_stage(config, steps or DEFAULT_STEPS, init_from="x4", seed=2)
    config.checkpoint_every_steps = 500
    config.log_every_steps = 50
    config.eval_every_steps = 500
    return config
