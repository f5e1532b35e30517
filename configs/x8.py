"""DRN x8, the paper's setting (Section 5.1): three primal blocks, 384-pixel HR crops.

    python train.py --config=configs/x8.py --workdir=runs/x8
"""

from drn_jax.config import base_config


def get_config():
    config = base_config()
    config.scale = 8
    config.data.hr_patch_size = 384  # guess: 48-pixel LR patches, as at x4
    return config
