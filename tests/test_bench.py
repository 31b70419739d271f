"""`ddcache bench`: one exact epoch is reported as samples == unique == cache size, with decoding alone or the full
training input of a config (built by ddtrain's own function); errors are one line."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorpack imports TensorFlow)
from cache_factory import make_cache, make_sample, write_records
from ddcache import categories as C
from ddcache.codec import encode_record
from ddcache.bench import bench, run_bench
from ddcache.errors import UserError

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return make_cache(root / "a", 30), make_cache(root / "b", 11, start=30)


def test_run_bench_one_epoch_sees_every_sample_once(caches):
    r = run_bench(list(caches), workers=2, seconds=None, epoch=True, seed=3)
    assert r["samples"] == r["unique"] == r["cache_size"] == 41
    assert r["workers"] == 2 and r["epochs"] == 1 and r["pipeline"] == "decode" and r["dropped"] == 0
    assert r["samples_per_s"] > 0 and 0 < r["first_sample_s"] < r["seconds"]
    assert r["peak_rss_mb"] > 0


def test_training_input_epoch_counts_datapoints_and_dropped_records(tmp_path):
    """--config: ddtrain's training dataflow; records without a CELL box give no datapoint and are counted."""
    samples = [make_sample(i, 2, 3) for i in range(12)]
    for s in samples[::4]:  # 3 tables with rows and columns only
        keep = s["category_ids"] != C.CELL
        s.update(boxes=s["boxes"][keep], category_ids=s["category_ids"][keep],
                 attributes={k: v[keep] for k, v in s["attributes"].items()})
    path = write_records(tmp_path / "c", [encode_record(s) for s in samples], [(2, 3, 6)] * 12)
    r = run_bench(path, workers=2, seconds=None, epoch=True, config=str(TINY))
    assert r["pipeline"] == "training" and "unique" not in r
    assert (r["samples"], r["dropped"], r["cache_size"]) == (9, 3, 12)
    result = CliRunner().invoke(bench, [str(path), "--workers", "0", "--epoch", "--config", str(TINY)])
    assert result.exit_code == 0, result.output
    assert f"{r['samples']} datapoints + {r['dropped']} records without a box" in result.output


def test_cli_epoch_json(caches):
    result = CliRunner().invoke(bench, [str(caches[0]), "--workers", "2", "--epoch", "--json", "--seed", "1"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output[result.output.index("{"):])
    assert r["unique"] == r["samples"] == 30
    for field in ("samples_per_s", "first_sample_s", "peak_rss_mb", "workers"):
        assert field in r


def test_timed_run_in_process(caches):
    r = run_bench(caches[1], workers=0, seconds=0.3, epoch=False)
    assert r["samples"] >= 1 and r["workers"] == 0 and "unique" not in r


def test_missing_cache_or_config_is_a_user_error(tmp_path, caches):
    result = CliRunner().invoke(bench, [str(tmp_path / "nope"), "--epoch"])
    assert isinstance(result.exception, UserError)
    assert "no such cache directory" in str(result.exception)
    with pytest.raises(UserError):
        run_bench(tmp_path / "nope", workers=1, seconds=1)
    with pytest.raises(UserError, match="no such config file"):
        run_bench(caches[0], workers=0, epoch=True, config=str(tmp_path / "none.yaml"))
