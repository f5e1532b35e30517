"""The small x4 DRN that `scripts/run_comparisons.py` trains for each ablation of the paper.

    python scripts/run_comparisons.py --output_dir runs/comparisons     # every comparison
    python train.py --config=configs/comparison.py:800 --workdir=runs/cmp  # one run by hand

The optional argument after the colon is the number of steps (default 800); the learning-rate
decay and the evaluation interval follow it. Each comparison of the paper (Fig. 2: losses;
Table 4: dual / progressive; Table 6: λ and the dual weight) is this config plus one or two
overrides, all trained with the same budget, data and seeds, so only the ablated setting differs.

Why these values:

* Size. F 32 with 3 residual modules per block (191k parameters) instead of the paper's F 64,
  R 7 (1.34M): on the project's 2-core CPU it trains at about 40 HR crops/s at patch 64
  (`runs/default`: 39 img/s), so 800 steps of batch 16 take about 5.5 minutes and the 14 runs
  of the three comparisons about 1.5 hours. Ablations are about differences, which show in a
  small network trained briefly (the paper's Fig. 2 itself is a training curve); the absolute
  PSNRs are far below the paper's.
* HR patch 64 (16-pixel LR patches), batch 16 (the paper's batch). Smaller than the paper's
  guessed 192 to fit the budget; the receptive field radius of this network is 12 LR pixels,
  so a 16-pixel LR patch still holds whole receptive fields in its centre.
* Learning rate 5e-4, ×0.2 at 75% of the steps. A short run of a small network tolerates a
  larger rate than the paper's 1e-4 (the embedded default uses the same); the late decay
  settles the weights so the final score is not one noisy point of a still-moving curve,
  which matters when two runs differ by a tenth of a dB.
* Data: T91 + BSD200 (291 images, the classic SR training set; ImageNet is not available
  here). `run_comparisons.py --train_dir` points it elsewhere.
* Validation every steps/8 on Set5 (five images, about a second at this size), so each run's
  `metrics.jsonl` holds the training curve as Set5 PSNR: the figures of docs/results.md. No
  run is selected or stopped on it (fixed step count), so using a test set for the curve does
  not bias the final Set5/Set14 scores, which `run_comparisons.py` computes with eval.py's code.
* Checkpoints every steps/4: an interrupted comparison resumes within minutes.
"""

from drn_jax import recipes
from drn_jax.config import base_config

DEFAULT_STEPS = 800
# One x0.2 decay at 75% of the run (see above); evaluations every steps/8, checkpoints every
# steps/4, log lines every steps/16 (at most 50).
SCHEDULE = dict(decay_every=0.75, per_run={"eval_every_steps": (8, None), "checkpoint_every_steps": (4, None),
                                           "log_every_steps": (16, 50)})


def set_steps(config, steps: int):
    """Sets the step count and what follows from it (LR decay, evaluation, checkpoints, logs)."""
    return recipes.with_steps(config, steps, **SCHEDULE)


def get_config(steps: str | None = None):
    config = base_config()
    config.scale = 4
    config.model.features = 32
    config.model.modules_per_block = 3
    # The paper's objective: GS loss, λ 2, dual weight 0.1, dual + progressive (the baseline
    # that every comparison shares).
    config.loss.name = "gs"
    config.loss.lam = 2.0
    config.loss.dual_weight = 0.1
    config.model.dual = True
    config.model.progressive = True
    recipes.t91_bsd200(config)
    config.data.hr_patch_size = 64
    config.data.shuffle_buffer = 256  # TFDS only; folder sources are permuted statelessly
    config.batch_size = 16
    config.learning_rate = 5e-4
    config.lr_decay_factor = 0.2
    config.keep_checkpoints = 2
    config.seed = 0
    return set_steps(config, steps or DEFAULT_STEPS)
