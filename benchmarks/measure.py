"""Measuring helpers shared by the benchmark scripts: run a command and record wall time + peak RSS of its process tree."""
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def tree_rss(proc):
    """RSS in bytes of ``proc`` and all its children (0 for processes that are gone)."""
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(cmd, poll=0.05, env=None):
    """Run ``cmd``; return (seconds, peak RSS MB of the process tree, completed stdout)."""
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc = psutil.Process(popen.pid)
    peak = 0
    while popen.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(poll)
    out, err = popen.communicate()
    seconds = time.perf_counter() - t0
    if popen.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{err}")
    return seconds, peak / 1e6, out


def python_cmd(*args):
    return [sys.executable, *map(str, args)]


def save(name, payload, table_md):
    """Write results/NAME.json and results/NAME.md; return their paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    j.write_text(json.dumps(payload, indent=2) + "\n")
    m.write_text(table_md + "\n")
    return j, m


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
