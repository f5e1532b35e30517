"""The embedded default: a small DRN x4 trained on photographs bundled with scikit-image.

    python train.py            # no download; about 10 minutes on a 2-core CPU

It needs no data set: `samples:train` are colour photographs that ship inside the
scikit-image package, and `samples:val` holds a few of them back for validation.
Model, patch and step count are sized so the run finishes within about 10 minutes
on a 2-core CPU and beats bicubic on the held-out photos (docs/results in README).
"""

from drn_jax import recipes
from drn_jax.config import base_config


def get_config():
    config = base_config()
    config.scale = 4
    config.model.features = 32
    config.model.modules_per_block = 3
    config.data.train = "samples:train"
    config.data.val = "samples:val"
    config.data.hr_patch_size = 64
    config.data.shuffle_buffer = 64
    config.batch_size = 16
    # A small network on few images tolerates a larger rate than the paper's 1e-4.
    config.learning_rate = 5e-4
    config.lr_decay_factor = 0.2
    # 1,500 steps, one decay at 1,000; checkpoints every 250, log lines every 50, validation
    # every 500 steps.
    return recipes.with_steps(config, 1500, decay_every=2 / 3, per_run={
        "checkpoint_every_steps": (6, None), "log_every_steps": (30, None), "eval_every_steps": (3, None)})
