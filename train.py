"""Trains DRN.

    python train.py                                   # the embedded default (a few minutes on CPU)
    python train.py --config=configs/x8.py --workdir=runs/x8
    python train.py --config=configs/x4.py --config.loss.name=l1 --config.model.dual=False

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

from drn_jax import cli, orbax_noise, training
from drn_jax.rundir import DEFAULT_WORKDIR

_CONFIG = cli.define_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Training configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Where checkpoints, logs and summaries go.")
_COMPILATION_CACHE = cli.define_compilation_cache_flag()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    cli.use_compilation_cache(_COMPILATION_CACHE.value)  # a rerun loads its programs
    # One line for a failed checkpoint write, not orbax's background tracebacks, which can come
    # as late as the interpreter's teardown: installed for the rest of the process.
    orbax_noise.install()
    with cli.user_errors():
        training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
