"""The shipped x4 model (`drn_jax/pretrained/x4.*`): DRN x4 on T91 + BSD200 in about 2.5 hours of a 2-core CPU.

    python train.py --config=configs/x4_291.py --workdir=runs/x4_291
    python eval.py --workdir=runs/x4_291 --data_dir=../shared/data/benchmark --datasets=Set5,Set14
    python -m drn_jax.pretrained export --workdir runs/x4_291 --name x4 \\
        --card_from runs/x4_291/eval/results.json

`--config=configs/x4_291.py:STEPS` changes the step count; the learning-rate decay follows it.
Target: Set5 x4 >= 31.18 dB and Set14 >= 28.01 dB (VDSR's row of the paper's x4 table, 31.53 /
28.03, is the stretch).

Why these values (the budget is ~150 minutes of the project's 2-core CPU, in one go). The pilots
of `scripts/run_pilots.py` (docs/results.md) chose them against the first shipped recipe:

* Loss: the joint pixel + gradient loss of the paper's Eq. 3 (MAE + 2 * gradient MAE), not the GS
  loss (Eq. 5). This departs from the paper on purpose: in the screen, in the confirmation
  and in the Fig. 2 comparison the Eq. 3 loss scored clearly higher than GS on both sets, beyond
  the seed noise, and the gap grew with more steps. Dual weight 0.1 and dual + progressive stay the
  paper's: no pilot showed a loss of quality from them.
* Learning rate 8e-4, twice the first recipe's (2e-4 and 4e-4 scored lower), with two x0.3 step
  decays at 5/12 and 10/12 of the run. Cosine, with or without warm-up, scored lower than the
  step decays at equal steps.
* Width: the paper's model (F 64, R 7) trains ~4x slower per crop here, so it would see far fewer
  updates in the budget, and the number of updates limits a CPU run more than capacity does.
  F 32 R 6 (12 residual modules at x4, 302k parameters) is kept. F 48 R 4 led it in the short
  screen, by less than the learning rate or the loss did, at ~1.5x the cost per step; its
  equal-time confirmation was not run, so the cheaper network, with a third more updates, stays.
* HR patch 64, batch 16 (the paper's batch): larger patches or batches cost updates at equal time
  and gained within the seed noise in the pilots.
* Parameter EMA 0.999, evaluated and exported instead of the raw parameters: the raw parameters
  scored within the seed noise of it in the short screen, and the EMA averages out the noise of
  a long run's last steps.
* Steps: 22,000, what fits the budget at this model's end-to-end rate on the CPU while other work
  shares the machine (its model card records the wall time).
* Validation on Set5 every 1,500 steps is the training curve only: fixed step count, no selection.
  Checkpoints every 1,000 steps, so a killed run resumes with the same command.
"""

from drn_jax import recipes
from drn_jax.config import base_config

DEFAULT_STEPS = 22_000


def get_config(steps: str | None = None):
    config = recipes.cpu_291(base_config(), scale=4, hr_patch_size=64)
    recipes.with_steps(config, steps or DEFAULT_STEPS, decay_every=5 / 12)  # decays at 5/12 and 10/12
    config.checkpoint_every_steps = 1_000
    config.log_every_steps = 100
    config.eval_every_steps = 1_500
    return config
