"""Shared fixtures: raw datasets on disk (the 4 real FinTabNet lines, the synthetic samples) and built caches."""
import json
import shutil
from pathlib import Path

import pytest

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_LINES = SHARED / "data" / "fintabnet_table_val_4lines.jsonl"
LOCAL_REAL_LINES = Path(__file__).resolve().parent / "data" / "fintabnet_table_val_4lines.jsonl"


def real_lines_path():
    """The 4 real FinTabNet lines (a copy is kept in tests/data so a clone alone can run the tests)."""
    return REAL_LINES if REAL_LINES.is_file() else LOCAL_REAL_LINES


def draw_real_pages(root):
    """Make one-page PDFs for the 4 real lines: each cell's text drawn inside its annotated box.

    The real PDFs are not distributed; drawing the text where the annotation
    says lets ink checks test our coordinate handling against real geometry.
    """
    from reportlab.pdfbase.pdfmetrics import getAscentDescent
    from reportlab.pdfgen import canvas

    root = Path(root)
    (root / "pdf").mkdir(parents=True, exist_ok=True)
    lines = [json.loads(l) for l in real_lines_path().read_text().splitlines() if l.strip()]
    for rec in lines:
        pdf = root / "pdf" / rec["filename"]
        pdf.parent.mkdir(parents=True, exist_ok=True)
        c = canvas.Canvas(str(pdf), pagesize=(612, 792), invariant=1)
        for cell in rec["html"]["cells"]:
            if "bbox" not in cell:
                continue
            x0, y0, x1, y1 = cell["bbox"]
            text = "".join(t for t in cell["tokens"] if not (t.startswith("<") and t.endswith(">"))).strip() or "x"
            asc, desc = getAscentDescent("Helvetica", 1.0)
            size = min(8.0, (y1 - y0) / (asc - desc))
            c.setFont("Helvetica", size)
            c.drawString(x0, y0 - desc * size, text[: max(1, int((x1 - x0) / (0.5 * size)))])
        c.showPage()
        c.save()
    shutil.copy(real_lines_path(), root / "FinTabNet_1.0.0_table_val.jsonl")
    return root


@pytest.fixture(scope="session")
def real_source(tmp_path_factory):
    return draw_real_pages(tmp_path_factory.mktemp("real"))


def replicate_source(src, dst, copies):
    """A larger FinTabNet-layout source: the real pages copied ``copies`` times under new tickers."""
    src, dst = Path(src), Path(dst)
    lines = [json.loads(l) for l in (src / "FinTabNet_1.0.0_table_val.jsonl").read_text().splitlines() if l.strip()]
    out = []
    for k in range(copies):
        for original in lines:
            rec = json.loads(json.dumps(original))
            rec["table_id"] = original["table_id"] * 1000 + k
            rec["filename"] = f"R{k:03d}{original['filename']}"
            target = dst / "pdf" / rec["filename"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "pdf" / original["filename"], target)
            out.append(json.dumps(rec))
    (dst / "FinTabNet_1.0.0_table_val.jsonl").write_text("\n".join(out) + "\n")
    return dst


@pytest.fixture(scope="session")
def replicated_source(real_source, tmp_path_factory):
    return replicate_source(real_source, tmp_path_factory.mktemp("replicated"), 12)


@pytest.fixture(scope="session")
def synth_fintabnet(tmp_path_factory):
    from ddcache.synth import write_sample

    root = tmp_path_factory.mktemp("synth_ftn")
    write_sample("fintabnet", root, pages=16, seed=3)
    return root


@pytest.fixture(scope="session")
def synth_pubtabnet(tmp_path_factory):
    from ddcache.synth import write_sample

    root = tmp_path_factory.mktemp("synth_ptn")
    write_sample("pubtabnet", root, pages=16, seed=3)
    return root


@pytest.fixture(scope="session")
def synth_cache(synth_fintabnet, tmp_path_factory):
    """A small table-mode cache of the synthetic FinTabNet train split (low resolution for speed)."""
    from ddcache.build import BuildOptions, build_cache
    from ddcache.resolution import Resolution

    out = tmp_path_factory.mktemp("synth_cache") / "train"
    build_cache(BuildOptions(dataset="fintabnet", source=str(synth_fintabnet), split="train", out=str(out), workers=1,
                             resolution=Resolution(max_short=400, max_long=600)), progress=False)
    return out
