"""DRN x4, the paper's setting (Section 5.1): F 64, 7 modules per block, GS loss.

    python train.py --config=configs/x4.py --workdir=runs/x4

Table 4 / Fig. 2 ablations are overrides, e.g. `--config.model.dual=False`,
`--config.model.progressive=False`, `--config.loss.name=l1`.
"""

from drn_jax.config import base_config


def get_config():
    config = base_config()
    config.scale = 4
    config.data.hr_patch_size = 192
    return config
