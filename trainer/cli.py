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
from ddcache import __version__

_COMMANDS = (("trainer.train", "train"), ("trainer.evaluate", "eval_cmd"), ("trainer.predictor", "predict"),
             ("trainer.inference_export", "export"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ddtrain")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show tensorpack's INFO log and TensorFlow's C++ log lines (hidden by default; "
                   "ddtrain train keeps the full log in LOGDIR/log.log either way).")
@click.pass_context
def main(ctx, verbose):
    """Train and evaluate the Cascade R-CNN cell detector from ddcache caches.

    \b
      ddtrain train --config configs/cell.yaml --train CACHE --val CACHE --logdir runs/cell
      ddtrain eval --config configs/cell.yaml --cache CACHE --weights A --weights B
      ddtrain predict --config configs/cell.yaml --weights CKPT --image x.png --out preds/
      ddtrain export --weights CKPT --out model.npz
    Repeat an option to give several values (--train A --train B). Config overrides:
    --override KEY=VALUE (or --set) on every command.
    """
    ctx.ensure_object(dict)["verbose"] = verbose


for _module, _name in _COMMANDS:
    try:
        main.add_command(getattr(importlib.import_module(_module), _name))
    except ModuleNotFoundError as exc:  # only a command module that does not exist is tolerated
        if exc.name != _module:
            raise


def run():
    """Entry point of the `ddtrain` console script (same error policy as `ddcache`)."""
    from ddcache.cli import run_with_error_policy
    from ddcache.interrupts import exit_within
    from trainer.train import INTERRUPT_EXIT_GRACE_S, watch_interrupts

    args = sys.argv[1:]
    at = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))  # the command's name
    if not {"-v", "--verbose"} & set(args[:at]):
        from trainer.console import quiet_native_logs

        quiet_native_logs()  # before any command imports TensorFlow; a process-wide change, so only here
    if args[at:at + 1] == ["train"]:  # the only command with a "save on Ctrl-C" to announce
        watch_interrupts()
    try:
        run_with_error_policy(main, "ddtrain")
    except SystemExit as exc:
        if exc.code == 130:  # the error policy's "interrupted": by SIGTERM, say so in the code (143)
            from trainer import ctrl_c

            exc.code = ctrl_c.exit_code()
        if exc.code not in (0, None):
            # Ctrl-C or a failed run: the outcome is saved and reported; teardown (input threads, ZMQ
            # sockets of map workers, perhaps a dead one) must not keep the process alive
            exit_within(INTERRUPT_EXIT_GRACE_S, exc.code if isinstance(exc.code, int) else 1)
        raise
