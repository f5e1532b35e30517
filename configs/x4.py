"""DRN x4, the paper's network (Section 5.1) in bfloat16: the accelerator recipe.

    python train.py --config=configs/x4.py --workdir=runs/x4                 # ImageNet (TFDS)
    python train.py --config=configs/x4.py:40000 --workdir=runs/x4 \\
        --config.data.train=folder:/data/T91,/data/BSD200 --config.data.val=folder:/data/Set5/HR

The optional number after the colon is the step count (default: the paper's 1M); the two
learning-rate decays follow it. Ablations are overrides, e.g. `--config.model.dual=False`,
`--config.model.progressive=False`, `--config.loss.name=l1`.

Why these values:

* The paper's network and objective: F 64, 7 residual modules per block (14 at x4), dual +
  progressive, GS loss with λ 2, dual weight 0.1, batch 16, Adam at 1e-4.
* bfloat16 computation with float32 parameters and optimiser state: the matrix units of GPUs
  and TPUs run bfloat16 at several times their float32 rate. On the CPU the step still runs,
  through XLA's convolution (the Winograd kernels are float32-only).
* HR patch 192 (48-pixel LR patches): a guess where the extraction lost the value
  (docs/method.md#guesses).
* Two ×0.1 decays at 40% and 80% of the steps, so a short accelerator run (`:STEPS`) anneals
  like the full one; the paper's own interval was lost in extraction.
* Parameter EMA 0.999, evaluated and exported instead of the raw parameters: free on an
  accelerator, and the pilots in docs/results.md measure what it is worth.
* No TensorFlow is needed with `folder:` data: a JAX install with flax, optax, orbax, chex,
  Pillow and ml_collections runs this config (tests/test_accelerator_configs.py).
"""

from drn_jax.config import base_config

PAPER_STEPS = 1_000_000


def paper_network(config, *, scale: int, hr_patch_size: int, steps: str | None):
    """The settings that configs/x4.py and configs/x8.py share, at `scale`."""
    config.scale = scale
    config.model.features = 64
    config.model.modules_per_block = 7
    config.model.dtype = "bfloat16"
    config.data.hr_patch_size = hr_patch_size
    steps = int(steps) if steps else PAPER_STEPS
    if steps < 1:
        raise ValueError(f"configs/x{scale}.py:{steps}: the step count must be at least 1")
    config.num_train_steps = steps
    config.learning_rate = 1e-4
    config.lr_decay_factor = 0.1
    config.lr_decay_every = max(1, round(0.4 * steps))
    config.ema_decay = 0.999
    config.checkpoint_every_steps = max(1, min(5_000, steps // 10))
    config.eval_every_steps = max(1, min(10_000, steps // 10))
    config.log_every_steps = max(1, min(100, steps // 100))
    return config


def get_config(steps: str | None = None):
    return paper_network(base_config(), scale=4, hr_patch_size=192, steps=steps)
