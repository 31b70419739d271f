"""The `ddtrain` command line: train, eval, predict, export.

Each command lives in the module of its concept (train.py, evaluate.py,
predictor.py, inference_export.py) as a click command; this module only
assembles them and applies the error policy (user mistakes -> one line on
stderr, exit 2).
"""
import importlib
import sys

import click

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

_COMMANDS = (("trainer.train", "train"), ("trainer.evaluate", "eval_cmd"), ("trainer.predictor", "predict"),
             ("trainer.inference_export", "export"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """Train and evaluate the Cascade R-CNN cell detector from ddcache caches.

    \b
      ddtrain train --config configs/cell.yaml --train CACHE --val CACHE --logdir runs/cell
      ddtrain eval --config configs/cell.yaml --cache CACHE --weights A --weights B
      ddtrain predict --config configs/cell.yaml --weights CKPT --image x.png --out preds/
      ddtrain export --weights CKPT --out model.npz
    """


for _module, _name in _COMMANDS:
    try:
        main.add_command(getattr(importlib.import_module(_module), _name))
    except ModuleNotFoundError as exc:  # only a command module that does not exist is tolerated
        if exc.name != _module:
            raise


def run():
    """Entry point of the `ddtrain` console script (same error policy as `ddcache`)."""
    from ddcache.cli import run_with_error_policy
    from trainer.train import INTERRUPT_EXIT_GRACE_S, exit_within, watch_interrupts

    if sys.argv[1:2] == ["train"]:  # the only command with a "save on Ctrl-C" to announce
        watch_interrupts()
    try:
        run_with_error_policy(main, "ddtrain")
    except SystemExit as exc:
        if exc.code == 130:  # Ctrl-C: the checkpoint is saved and reported; do not let teardown hang
            exit_within(INTERRUPT_EXIT_GRACE_S, 130)
        raise
