"""`python -m ddcache.cli_main ...` runs the CLI with its error policy (used where the console script is not on PATH)."""
from .cli import run

if __name__ == "__main__":
    run()
