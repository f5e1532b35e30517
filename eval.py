"""Scores a trained DRN (or bicubic) on benchmark sets under the community protocol.

    python eval.py                                   # runs/default's checkpoint on its held-out photos
    python eval.py --data_dir=../shared/data/benchmark --datasets=Set5,Set14
    python eval.py --method=bicubic --scale=4 --data_dir=../shared/data/benchmark
    python eval.py --pretrained=x4 --data_dir=../shared/data/benchmark --datasets=Set5,Set14

Prints the table (bicubic and DRN rows) and writes results.json, results.md and per_image.csv to
--output_dir (default <workdir>/eval). The work is done by `drn_jax.eval_cli.run`.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging

from drn_jax import cli, eval_cli

_MODEL = cli.define_model_flags(what="scored")
_METHOD = flags.DEFINE_enum("method", "model", ["model", "bicubic"], "what to score")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "folder holding <Name>/HR/ image folders (Set5, Set14, ...)")
_DATASETS = flags.DEFINE_list("datasets", [], "dataset names in --data_dir or sources such as samples:val "
                              "(default: every dataset in --data_dir, else the run's data.val)")
_SCALE = flags.DEFINE_integer("scale", None, "upscaling factor (default: the model's; "
                              "required for --method=bicubic without a run)")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "where results go (default: <workdir>/eval)")
_SAVE_IMAGES = flags.DEFINE_bool("save_images", False,
                                 "save SR outputs as <output_dir>/images/<dataset>/<name>.png")
_SELF_ENSEMBLE = flags.DEFINE_bool("self_ensemble", False, "average the 8 flips/rotations (DRN+)")
_TILE, _TILE_OVERLAP = cli.define_tile_flags()
_SAVE_COMPARISON = flags.DEFINE_bool("save_comparison", False,
                                     "save bicubic | DRN | HR crop strips to <output_dir>/comparisons/")
_COMPILATION_CACHE = cli.define_compilation_cache_flag()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # absl shows INFO records; JAX's backend probing ("Unable to initialize backend 'tpu'") and
    # the greyscale note for Set14's bridge.png are noise in the middle of a progress bar.
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)
    logging.getLogger("drn_jax.image_io").setLevel(logging.WARNING)
    cli.use_compilation_cache(_COMPILATION_CACHE.value)  # a rerun loads its programs
    with cli.user_errors():
        source = _MODEL()
        options = eval_cli.EvalOptions(
            **{source.kind: source.location}, method=_METHOD.value,
            data_dir=_DATA_DIR.value, datasets=_DATASETS.value, scale=_SCALE.value,
            output_dir=_OUTPUT_DIR.value, save_images=_SAVE_IMAGES.value,
            self_ensemble=_SELF_ENSEMBLE.value, tile=_TILE.value or None, tile_overlap=_TILE_OVERLAP.value,
            save_comparison=_SAVE_COMPARISON.value)
        eval_cli.run(options)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
