"""Command-line safety and consistency: outputs are never overwritten silently, a missing output folder is one
line, Ctrl-C of a build ends at once and says it resumes, one override flag, --version, README synopses that parse."""
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from child_run import run_until_marker

ROOT = Path(__file__).resolve().parents[1]


def ddcache(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ddcache.cli_main", *map(str, args)], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def _one_line(r, code=2):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def _files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


# ---- ddcache sample: never overwrites what it did not write ----

def test_sample_refuses_an_existing_sample_without_overwrite_and_replaces_it_exactly_with(tmp_path):
    """Was: a re-run rewrote the jsonl files (90 -> 28 lines) and left the other run's PDFs behind, exit 0."""
    from ddcache.synth import write_sample

    out = tmp_path / "raw"
    write_sample("fintabnet", out, pages=12, seed=0)
    (out / "my_notes.txt").write_text("mine")
    first = _files(out)
    r = ddcache("sample", "fintabnet", "--out", out, "--pages", 4)
    assert "already holds a sample (use --overwrite" in _one_line(r)
    assert _files(out) == first
    r = ddcache("sample", "fintabnet", "--out", out, "--pages", 4, "--overwrite")
    assert r.returncode == 0, r.stderr
    fresh = tmp_path / "fresh"
    write_sample("fintabnet", fresh, pages=4, seed=0)
    assert _files(out) == sorted(_files(fresh) + ["my_notes.txt"])  # no orphan of the 12-page sample
    assert (out / "my_notes.txt").read_text() == "mine"


def test_sample_never_writes_into_a_folder_that_is_not_a_sample(tmp_path):
    """A real dataset folder (here: its annotations) must survive even --overwrite."""
    out = tmp_path / "fintabnet"
    out.mkdir()
    (out / "FinTabNet_1.0.0_table_train.jsonl").write_text('{"real": 1}\n')
    for extra in ([], ["--overwrite"]):
        r = ddcache("sample", "fintabnet", "--out", out, *extra)
        assert "is not a ddcache sample" in _one_line(r)
    assert _files(out) == ["FinTabNet_1.0.0_table_train.jsonl"]
    assert (out / "FinTabNet_1.0.0_table_train.jsonl").read_text() == '{"real": 1}\n'


# ---- a missing output folder is one line, never a traceback ----

@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from cache_factory import make_cache

    return make_cache(tmp_path_factory.mktemp("safety") / "cache", 3)


@pytest.mark.parametrize("args", [
    ["show", "{cache}", "--out", "{missing}/x.png"],
    ["export", "{cache}", "--out", "{missing}/coco"],
    ["sample", "pubtabnet", "--out", "{missing}/raw"],
    ["build", "fintabnet", "--source", "{cache}", "--out", "{missing}/cache"],
])
def test_missing_output_folder_is_one_line_error(small_cache, tmp_path, args):
    missing = tmp_path / "no" / "such"
    r = ddcache(*[a.format(cache=small_cache, missing=missing) for a in args])
    assert f"folder {missing} does not exist" in _one_line(r)
    assert not (tmp_path / "no").exists()


def test_ddtrain_outputs_check_their_folder_and_export_refuses_to_overwrite(tmp_path):
    from trainer.cli import main

    missing = tmp_path / "no"
    for args in (["export", "--weights", "w.npz", "--out", f"{missing}/m.npz"],
                 ["eval", "--config", "c.yaml", "--cache", "c", "--weights", "w", "--out", f"{missing}/eval"],
                 ["predict", "--config", "c.yaml", "--weights", "w", "--image", __file__, "--out", f"{missing}/p"]):
        result = CliRunner().invoke(main, args)
        assert f"folder {missing} does not exist" in str(result.exception), (args, result.output)
    existing = tmp_path / "model.npz"
    existing.write_bytes(b"keep me")
    for out in (existing, tmp_path / "model"):  # the .npz suffix is added, and checked, as export writes it
        result = CliRunner().invoke(main, ["export", "--weights", "w.npz", "--out", str(out)])
        assert "already exists (use --overwrite" in str(result.exception), result.output
    assert existing.read_bytes() == b"keep me"
    result = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "w.npz"), "--out", str(existing),
                                       "--overwrite"])
    assert "no such weights" in str(result.exception)  # past the output check: it would now write


def test_failed_predict_leaves_no_empty_folder(tmp_path, tmp_path_factory):
    from test_predictor import TINY, random_checkpoint

    from trainer.cli import main

    not_an_image = tmp_path / "page.png"
    not_an_image.write_text("not a PNG")
    result = CliRunner().invoke(main, ["predict", "--config", str(TINY), "--weights",
                                       random_checkpoint(tmp_path_factory, 1), "--image", str(not_an_image),
                                       "--out", str(tmp_path / "preds")])
    assert "not an image" in str(result.exception)
    assert not (tmp_path / "preds").exists()


# ---- one override flag, versions ----

@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_every_ddtrain_command_takes_override_and_set(command):
    from trainer.cli import main

    params = {name for p in main.commands[command].params for name in p.opts}
    assert {"--override", "--set"} <= params, command
    option = next(p for p in main.commands[command].params if "--override" in p.opts)
    assert option.name == "overrides" and option.multiple


@pytest.mark.parametrize("module, prog", [("trainer.cli", "ddtrain"), ("ddcache.cli", "ddcache")])
def test_version(module, prog):
    from ddcache import __version__

    r = subprocess.run([sys.executable, "-c", f"from {module} import run; run()", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"{prog}, version {__version__}", r.stderr


# ---- the README's synopses name real options, and a value list is never written after one flag ----

def _synopses():
    blocks, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    lines, current = [], None
    for block in blocks:
        for line in block:
            if re.match(r"(ddcache|ddtrain) [a-z]", line):
                current = line
                lines.append(current)
            elif current and line.startswith(" ") and line.strip().startswith(("[", "--")):
                lines[-1] += " " + line.strip()
            else:
                current = None
    return [line for line in lines if "|" not in line.split()[1]]


def test_readme_synopses_use_real_options():
    from ddcache.cli import main as ddcache_main
    from trainer.cli import main as ddtrain_main

    synopses = _synopses()
    assert len(synopses) >= 12
    for line in synopses:
        prog, command = line.split()[:2]
        group = ddcache_main if prog == "ddcache" else ddtrain_main
        assert command in group.commands, line
        options = {o for p in group.commands[command].params for o in p.opts}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
            assert flag in options, (flag, line)
        # "--train CACHE..." or "--override K=V ..." suggest several values after one flag; click takes one
        # value per flag, so a repeatable option is written "[--train CACHE]..."
        assert not re.search(r"--[a-z-]+ [^\s\[\]]+ ?\.\.\.", line), line


# ---- Ctrl-C of a build: the pool's workers ignore it, the parent ends at once and says it resumes ----

def test_build_pool_workers_ignore_ctrl_c():
    """A terminal's Ctrl-C reaches every worker. One killed by it inside the pool's queue lock or mid-reply made the
    pool's teardown (or the build) wait forever; each task here gets a SIGINT while it runs."""
    code = textwrap.dedent("""
        import os, signal
        import ddcache.build as build

        def task_with_ctrl_c(task):
            os.kill(os.getpid(), signal.SIGINT)
            return {"seq": task.seq, "pid": os.getpid()}

        build.process_task = task_with_ctrl_c  # the forked workers run this
        opts = build.BuildOptions(dataset="fintabnet", source=".", workers=2)
        results = list(build._results((build.Task(i, []) for i in range(40)), opts))
        assert [r["seq"] for r in results] == list(range(40))
        assert os.getpid() not in {r["pid"] for r in results}
        print("ALL-RESULTS", flush=True)
    """)
    ok, out = run_until_marker(code, "ALL-RESULTS", timeout=120)
    assert ok, out[-3000:]


@pytest.mark.parametrize("mode", ["table", "page"])
def test_ctrl_c_of_a_build_ends_at_once_and_says_it_resumes(synth_fintabnet, tmp_path, mode):
    """Was: page mode hung once in 10 (> 90 s), and the line was always 'aborted'. The build's later tasks wait
    forever here, so the Ctrl-C surely lands mid-build; a re-run then finishes the cache."""
    out = tmp_path / "cache"
    args = ["build", "fintabnet", "--source", str(synth_fintabnet), "--split", "train", "--out", str(out),
            "--mode", mode, "--workers", "2", "--dpi", "36", "--commit-every", "1", "--quiet"]
    code = textwrap.dedent(f"""
        import os, sys, threading
        import ddcache.build as build

        real = build.process_task

        def gated(task):
            if task.seq == 0:
                return real(task)
            print("WAITING", flush=True)
            threading.Event().wait()  # until the pool is stopped

        build.process_task = gated
        sys.argv = ["ddcache"] + {args!r}
        from ddcache.cli import run
        run()
    """)
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err_file, text=True,
                                start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == "WAITING"
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the build and its workers
            proc.wait(timeout=60)  # a safety net: the build ends in well under a second
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    err = err_path.read_text()
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"ddcache: interrupted: the build resumes from {out}.partial "
                                            "when you re-run the same command"), err[-3000:]
    assert not out.exists() and Path(f"{out}.partial").is_dir()
    r = ddcache(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.is_dir() and not Path(f"{out}.partial").exists()


# ---- usage mistakes: one line each, pointing at the command's --help ----

@pytest.mark.parametrize("args, says", [
    (["show", "--bogus"], "No such option '--bogus'"),
    (["show"], "Missing argument 'CACHES...'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["build", "fintabnet", "--workers", "abc"], "Invalid value for '--workers'"),
])
def test_a_usage_mistake_is_one_line_with_a_pointer_to_help(args, says):
    """Was: click's three lines (usage, 'Try ... --help', blank, 'Error: ...')."""
    line = _one_line(ddcache(*args))
    assert line.startswith("ddcache: error: ") and says in line and line.endswith(" --help')"), line


def test_ddtrain_usage_mistake_is_one_line():
    r = subprocess.run([sys.executable, "-m", "trainer.cli_main", "train", "--steps", "many"], capture_output=True,
                       text=True, timeout=300)
    line = _one_line(r)
    assert line.startswith("ddtrain: error: Invalid value for '--steps'"), line


def test_an_eof_error_is_a_failure_not_an_interrupt():
    """click turns every EOFError into Abort; the policy printed 'aborted' and exit 130 (an empty .npz did that)."""
    import click

    from ddcache.cli import run_with_error_policy

    @click.group()
    def group():
        pass

    @group.command()
    def boom():
        raise EOFError("No data left in file")

    argv, sys.argv = sys.argv, ["prog", "boom"]
    try:
        with pytest.raises(EOFError, match="No data left"):
            run_with_error_policy(group, "prog")
    finally:
        sys.argv = argv
