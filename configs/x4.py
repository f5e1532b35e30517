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
  Pillow and ml_collections runs this config (tests/test_without_tensorflow.py).
"""

from drn_jax import recipes
from drn_jax.config import base_config

PAPER_STEPS = 1_000_000

# Two x0.1 decays at 40% and 80% of the run; a tenth of the run between checkpoints and
# evaluations (at most 5,000 and 10,000 steps), a hundredth between log lines (at most 100).
SCHEDULE = dict(decay_every=0.4, per_run={"checkpoint_every_steps": (10, 5_000),
                                          "eval_every_steps": (10, 10_000),
                                          "log_every_steps": (100, 100)})


def get_config(steps: str | None = None):
    config = recipes.paper_network(base_config(), scale=4, hr_patch_size=192)
    return recipes.with_steps(config, steps or PAPER_STEPS, **SCHEDULE)
