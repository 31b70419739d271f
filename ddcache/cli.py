"""The `ddcache` command line: list, describe, sample, build, info, verify, show, export, bench.

User mistakes end as one line on stderr and exit code 2; data problems are
counted in the skip report, never fatal.
"""
import json
import os
import sys

import click

from . import __version__
from .errors import CorruptRecordError, UserError, WorkerDiedError, environment_error
from .input_limits import MAX_GRID, MAX_LINE_BYTES, MAX_PIXELS
from .interrupts import CommandInterrupted, bounded_interrupt, say_once
from .outputs import check_output
from .resolution import MAX_LONG, MAX_SHORT, Resolution


def _shard(value):
    if value is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.BadParameter(f"{value!r}: need 0 <= I < N")
    return (i, n)


def _dpi(value):
    if value == "auto":
        return value
    try:
        dpi = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: a number or 'auto'") from None
    if dpi <= 0:
        raise click.BadParameter("must be > 0")
    return dpi


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ddcache")
def main():
    """Build table datasets once into an LMDB cache; stream them into training many times.

    \b
    Typical use:
      ddcache sample fintabnet --out raw/          # synthetic data in FinTabNet's raw layout
      ddcache build fintabnet --source raw/ --split train --out cache/train
      ddcache info cache/train ; ddcache verify cache/train
      ddcache show cache/train --index 0 --out sample.png
    """


@main.command("list")
def list_cmd():
    """List the registered datasets."""
    from .datasets import REGISTRY

    for name in sorted(REGISTRY):
        click.echo(f"{name:<12} {REGISTRY[name].description}")


@main.command()
@click.argument("name")
def describe(name):
    """Show a dataset's splits, modes, categories and expected raw layout."""
    from .datasets import get_reader

    r = get_reader(name)
    click.echo(f"{r.name}: {r.description}")
    click.echo(f"splits:     {', '.join(r.splits)}")
    click.echo(f"modes:      {', '.join(r.modes)}")
    click.echo(f"categories: {', '.join(r.categories)}")
    click.echo(f"box units:  {'PDF points, origin bottom-left' if r.source_units == 'pt' else 'image pixels, origin top-left'}")
    click.echo("layout:")
    click.echo("  " + r.layout_help.replace("\n", "\n  "))


@main.command()
@click.argument("dataset", type=click.Choice(["fintabnet", "pubtabnet"]))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write the raw dataset into.")
@click.option("--pages", default=24, show_default=True, type=click.IntRange(1), help="Pages (fintabnet) or images (pubtabnet).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier sample at --out (only one written by ddcache sample; other files are kept).")
def sample(dataset, out, pages, seed, overwrite):
    """Write a synthetic dataset in exactly the raw layout and format of the real one.

    --out must be new or empty; an earlier sample there is replaced only with
    --overwrite, and a folder that is not a ddcache sample (a real dataset) never.
    """
    from .synth import write_sample

    check_output(out, "--out")
    summary = write_sample(dataset, out, pages=pages, seed=seed, overwrite=overwrite)
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    click.echo(f"wrote {summary['tables']} tables on {summary['pages']} pages to {out} ({splits})")


@main.command()
@click.argument("dataset")
@click.option("--source", required=True, type=click.Path(), help="Unpacked raw dataset directory.")
@click.option("--split", default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Cache directory to create (published atomically).")
@click.option("--mode", default="table", show_default=True, type=click.Choice(["table", "page"]),
              help="table: one sample per table crop (CELL/ROW/COLUMN); page: whole pages (TABLE + CELL).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="Worker processes; 0 = all cores.")
@click.option("--encoding", default="png", show_default=True, type=click.Choice(["png", "jpeg", "raw"]))
@click.option("--jpeg-quality", default=90, show_default=True, type=click.IntRange(1, 100))
@click.option("--dpi", default="auto", show_default=True, callback=lambda c, p, v: _dpi(v),
              help="Render resolution; 'auto' stores each table at the largest size training uses "
                   "(short edge <= --max-short, long edge <= --max-long).")
@click.option("--max-short", default=MAX_SHORT, show_default=True, type=click.IntRange(16), help="Largest training short edge (auto dpi).")
@click.option("--max-long", default=MAX_LONG, show_default=True, type=click.IntRange(16), help="Largest training long edge (auto dpi).")
@click.option("--pad", default=0.0, show_default=True, type=click.FloatRange(0), help="Margin around the table, in source units (points / pixels).")
@click.option("--first-row-header", is_flag=True, help="Mark the first row as header (FinTabNet has no <thead>; noisy, opt-in).")
@click.option("--annotations", default="table", show_default=True, type=click.Choice(["table", "cell"]),
              help="FinTabNet annotation files: table_* (with table bbox) or cell_* (box = union of cells).")
@click.option("--max-datapoints", type=click.IntRange(1), help="Stop after this many samples are written.")
@click.option("--min-rows", type=click.IntRange(0))
@click.option("--max-rows", type=click.IntRange(0))
@click.option("--min-cols", type=click.IntRange(0))
@click.option("--max-cols", type=click.IntRange(0))
@click.option("--min-cells", type=click.IntRange(0))
@click.option("--max-cells", type=click.IntRange(0))
@click.option("--shard", callback=lambda c, p, v: _shard(v), help="Build only shard I of N (I/N), e.g. 0/4.")
@click.option("--max-line-bytes", default=MAX_LINE_BYTES, show_default=True, type=click.IntRange(1),
              help="Skip (too_large) annotation lines longer than this.")
@click.option("--max-grid", default=MAX_GRID, show_default=True, type=click.IntRange(1),
              help="Skip (too_large) tables whose grid has more slots (rows x columns, spans counted).")
@click.option("--max-pixels", default=MAX_PIXELS, show_default=True, type=click.IntRange(1, MAX_PIXELS),
              help="Skip (too_large) tables whose render or raster source image has more pixels.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache at --out.")
@click.option("--dask", "dask_scheduler", metavar="ADDRESS|local[:K]",
              help="Build --shards N shards as Dask tasks into the directory --out (read as one dataset): on the "
                   "cluster of this scheduler, or on a local cluster of K workers. --source and --out must be on "
                   "storage all workers see. Needs pip install -e .[dask].")
@click.option("--shards", type=click.IntRange(1), help="Number of shards for --dask (re-run with the same N to resume).")
@click.option("--commit-every", default=32, hidden=True, type=click.IntRange(1))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(dataset, quiet, dask_scheduler, shards, **kw):
    """Render each table once and write an LMDB cache (parallel, resumable, deterministic).

    Re-running the same command after a crash or kill continues where it
    stopped. Bad lines are skipped and counted by reason (see `ddcache info`
    and CACHE/skipped.jsonl). With --dask, --out becomes a directory of
    shard caches, one Dask task each; --workers then counts processes per shard.
    """
    from .build import BuildOptions, build_cache
    from .selection import RecordFilter

    check_output(kw["out"], "--out")
    resolution = Resolution(kw.pop("dpi"), kw.pop("max_short"), kw.pop("max_long"))
    record_filter = RecordFilter.from_options(kw)
    kw = {k: v for k, v in kw.items() if k not in record_filter.as_options()}
    opts = BuildOptions(dataset=dataset, resolution=resolution, record_filter=record_filter, **kw)
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    if dask_scheduler is None and shards is not None:
        raise UserError("--shards needs --dask (to build one shard of N without Dask: --shard I/N)")
    if dask_scheduler is not None:
        from .dask_build import build_on_dask

        if shards is None:
            raise UserError("--dask needs --shards N")
        with bounded_interrupt(f"interrupted: the shards in {kw['out']} resume when you re-run the same command"):
            summary = build_on_dask(opts, dask_scheduler, shards, progress=not quiet, echo=echo)
    else:
        with bounded_interrupt(f"interrupted: the build resumes from {kw['out']}.partial when you re-run the same command"):
            summary = build_cache(opts, progress=not quiet, echo=echo)
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()) or "none"
    shard_note = f" in {len(summary['shards'])} shards (read them as one dataset: {summary['out']})" if "shards" in summary else ""
    click.echo(
        f"{summary['out']}: {summary['num_samples']} samples from {summary['num_read']} lines "
        f"({summary['num_skipped']} skipped: {skipped}); {summary['bytes'] / 1e6:.1f} MB{shard_note}"
    )


@main.command()
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(caches, as_json):
    """Summarise one cache or a list of shard caches (read as one dataset)."""
    from .summary import format_summary, summarize

    s = summarize(caches)
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


@main.command()
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify(caches, quiet):
    """Decode every record and image and check every checksum. Exit 1 naming bad keys."""
    from .shard_set import expand
    from .verify import verify_cache

    bad = 0
    for path in expand(caches):
        problems = verify_cache(path, progress=not quiet)
        for key, problem in problems[:50]:
            click.echo(f"{path}: {key}: {problem}", err=True)
        if len(problems) > 50:
            click.echo(f"{path}: ... and {len(problems) - 50} more", err=True)
        bad += len(problems)
        if not problems:
            click.echo(f"{path}: OK")
    if bad:
        click.echo(f"verify: {bad} problem(s)", err=True)
        sys.exit(1)


@main.command()
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option("--index", "index", default=0, show_default=True, type=click.IntRange(0), help="Sample index (over all caches given).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--categories", default=None, help="Comma-separated subset, e.g. CELL or ROW,COLUMN.")
def show(caches, index, out, categories):
    """Draw one sample with cells, rows and columns in distinct colours and a legend."""
    from .categories import ids_for
    from .draw import draw_sample
    from .store import CacheReader

    check_output(out, "--out")
    reader = CacheReader(caches)
    if index >= len(reader):
        raise UserError(f"--index {index} out of range: the cache holds {len(reader)} samples")
    try:
        wanted = set(ids_for(categories.split(","))) if categories else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    counts = draw_sample(reader.get(index), out, wanted)
    from .categories import NAMES

    click.echo(f"wrote {out} (" + ", ".join(f"{NAMES[c]} {n}" for c, n in sorted(counts.items())) + ")")


@main.command()
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="coco", show_default=True, type=click.Choice(["coco"]))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for images/ and instances.json.")
@click.option("--categories", default=None, help="Comma-separated subset, e.g. CELL.")
@click.option("--overwrite", is_flag=True)
def export(caches, fmt, out, categories, overwrite):
    """Export images + a COCO instances.json (for other frameworks and pycocotools)."""
    from .categories import ids_for
    from .export import export_coco

    check_output(out, "--out")
    try:
        wanted = ids_for(categories.split(",")) if categories else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    n_img, n_ann = export_coco(caches, out, wanted, overwrite=overwrite)
    click.echo(f"wrote {n_img} images and {n_ann} annotations to {out}")


def _register_optional():
    try:
        from .bench import bench
    except ImportError:  # the streaming half is optional at import time
        return
    main.add_command(bench)


_register_optional()


def click_error_line(exc):
    """click's message for a usage mistake as one line, pointing at the command's ``--help``.

    click prints usage errors as a usage line, a "Try ... --help" line and the
    message; the product's rule is one line per user mistake.
    """
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{message} (see '{ctx.command_path} --help')"
    return message


def run_with_error_policy(group, prog):
    """Run a click group, no tracebacks: user mistakes, bad data and environment failures (a full disk, a denied
    permission: ``errors.environment_error``) -> one line on stderr + exit 2, a dead worker process -> one line +
    exit 1, Ctrl-C -> one line + exit 130.

    A command that knows what Ctrl-C leaves behind raises
    ``CommandInterrupted`` with that line (``ddcache build``: where it
    resumes); elsewhere the line is ``interrupted``. click turns a
    KeyboardInterrupt into ``Abort`` (the interrupt is its cause).
    """
    try:
        group(standalone_mode=False)
    except CommandInterrupted as exc:
        say_once(f"{prog}: {exc}")
        sys.exit(130)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, EOFError):  # click makes any EOFError an Abort: a failure, not an interrupt
            raise exc.__cause__ from None
        say_once(f"{prog}: interrupted" if isinstance(exc.__cause__, KeyboardInterrupt) else f"{prog}: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"{prog}: error: {click_error_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except (UserError, CorruptRecordError) as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(2)
    except WorkerDiedError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        say_once(f"{prog}: interrupted")
        sys.exit(130)
    except BrokenPipeError:
        os._exit(0)
    except OSError as exc:
        failure = environment_error(exc)
        if failure is None:
            raise
        click.echo(f"{prog}: error: {failure}", err=True)
        sys.exit(2)


def run():
    """Entry point of the `ddcache` console script."""
    run_with_error_policy(main, "ddcache")
