"""`python -m trainer.cli_main ...` runs `ddtrain` with its error policy (where the console script is not on PATH)."""
from .cli import run

if __name__ == "__main__":
    run()
