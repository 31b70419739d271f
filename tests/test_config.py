"""Config: the shipped YAML files carry the seed's values (FACTS.md §3), overrides parse, mistakes raise ConfigError."""
import trainer  # noqa: F401

import pickle
from pathlib import Path

import pytest

from trainer.config import DEFAULTS, UNREAD, Config, ConfigError, load_config, num_classes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def cell():
    return load_config(CONFIGS / "cell.yaml")


def test_cell_yaml_is_the_seed_cell_config():
    c = cell()
    expected = {
        "BACKBONE.BOTTLENECK": "resnext_32xd4", "BACKBONE.NORM": "GN", "BACKBONE.RESNET_NUM_BLOCKS": [3, 4, 6, 3],
        "BACKBONE.FREEZE_AT": 2, "BACKBONE.FREEZE_AFFINE": False, "BACKBONE.TF_PAD_MODE": False,
        "FPN.CASCADE": True, "FPN.NORM": "GN", "FPN.NUM_CHANNEL": 256, "FPN.ANCHOR_STRIDES": [4, 8, 16, 32, 64],
        "FPN.PROPOSAL_MODE": "Level", "FPN.FRCNN_HEAD_FUNC": "fastrcnn_2fc_head", "FPN.FC_HEAD_DIM": 1024,
        "FPN.RESOLUTION_REQUIREMENT": 32,
        "CASCADE.IOUS": [0.5, 0.6, 0.7], "CASCADE.BBOX_REG_WEIGHTS": [[10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15]],
        "FRCNN.BATCH_PER_IM": 512, "FRCNN.FG_RATIO": 0.25, "FRCNN.FG_THRESH": 0.5, "FRCNN.BBOX_REG_WEIGHTS": [10, 10, 5, 5],
        "RPN.ANCHOR_SIZES": [8, 16, 32, 64, 128], "RPN.ANCHOR_RATIOS": [0.25, 0.5, 1.0],
        "RPN.BATCH_PER_IM": 512, "RPN.FG_RATIO": 0.5, "RPN.POSITIVE_ANCHOR_THRESH": 0.7,
        "RPN.NEGATIVE_ANCHOR_THRESH": 0.3, "RPN.PROPOSAL_NMS_THRESH": 0.7,
        "RPN.MIN_SIZE": 0, "RPN.TEST_PRE_NMS_TOPK": 6000, "RPN.TRAIN_PRE_NMS_TOPK": 12000,
        "RPN.TEST_POST_NMS_TOPK": 1000, "RPN.TRAIN_POST_NMS_TOPK": 2000, "RPN.TEST_PER_LEVEL_NMS_TOPK": 1000,
        "RPN.TRAIN_PER_LEVEL_NMS_TOPK": 2000,
        "PREPROC.SHORT_EDGE_SIZE": 800, "PREPROC.TRAIN_SHORT_EDGE_SIZE": [600, 1200], "PREPROC.MAX_SIZE": 1408,
        "PREPROC.PIXEL_MEAN": [238.32, 238.22, 238.21], "PREPROC.PIXEL_STD": [8.75, 8.569, 9.14],
        "OUTPUT.RESULT_SCORE_THRESH": 0.4, "OUTPUT.RESULTS_PER_IM": 800, "OUTPUT.FRCNN_NMS_THRESH": 0.01,
        "OUTPUT.NMS_THRESH_CLASS_AGNOSTIC": 0.001,
        "TRAIN.STEPS_PER_EPOCH": 500, "TRAIN.EVAL_PERIOD": 20, "TRAIN.BASE_LR": 1e-3, "TRAIN.LR_SCHEDULE": [50000],
        "TRAIN.WARMUP": 1000, "TRAIN.WARMUP_INIT_LR": 1e-5, "TRAIN.WEIGHT_DECAY": 1e-4, "TRAIN.CHECKPOINT_PERIOD": 20,
        "TRAIN.STARTING_EPOCH": 1, "TRAINER": "replicated", "MODE_FPN": True, "DATA.CATEGORIES": ["CELL"],
    }
    for dotted, value in expected.items():
        node = c
        for part in dotted.split("."):
            node = getattr(node, part)
        assert node == value, dotted
    assert num_classes(c) == 2


def test_item_yaml_is_the_row_column_variant():
    c, base = load_config(CONFIGS / "item.yaml"), cell()
    assert c.DATA.CATEGORIES == ["ROW", "COLUMN"] and num_classes(c) == 3
    assert c.RPN.ANCHOR_SIZES == [16, 32, 64, 128, 256] and c.RPN.ANCHOR_RATIOS == [0.1, 0.5, 1.5]
    assert (c.OUTPUT.FRCNN_NMS_THRESH, c.OUTPUT.RESULTS_PER_IM, c.OUTPUT.NMS_THRESH_CLASS_AGNOSTIC) == (0.001, 350, 0.999)
    assert c.BACKBONE.to_dict() == base.BACKBONE.to_dict() and c.TRAIN.to_dict() == base.TRAIN.to_dict()


def _flat(d, prefix=""):
    return {prefix + k: v for k, v in d.items() if not isinstance(v, dict)} | \
        {x: y for k, v in d.items() if isinstance(v, dict) for x, y in _flat(v, prefix + k + ".").items()}


def test_shipped_yamls_set_every_key_the_model_reads_and_item_only_its_differences():
    """cell/tiny are complete (a changed default in config.py cannot silently change them); item.yaml
    inherits cell.yaml and states only what differs from it."""
    import yaml

    read = set(_flat(DEFAULTS)) - set(UNREAD)
    for name in ("cell", "tiny"):
        assert set(_flat(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))) == read, name
    item = yaml.safe_load((CONFIGS / "item.yaml").read_text())
    assert item.pop("_BASE_") == "cell.yaml"
    cell_values = _flat(cell().to_dict())
    assert item and all(cell_values[k] != v for k, v in _flat(item).items())


def test_base_chain_merges_in_order_and_base_errors_name_their_file(tmp_path):
    (tmp_path / "a.yaml").write_text("TRAIN:\n  BASE_LR: 0.5\n  WARMUP: 7\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("_BASE_: ../a.yaml\nTRAIN:\n  WARMUP: 9\n")
    (tmp_path / "c.yaml").write_text("_BASE_: sub/b.yaml\nRPN:\n  FG_RATIO: 0.25\n")  # relative to each file
    c = load_config(tmp_path / "c.yaml", ["TRAIN.BASE_LR=0.1"])
    assert (c.TRAIN.BASE_LR, c.TRAIN.WARMUP, c.RPN.FG_RATIO) == (0.1, 9, 0.25)
    assert c.TRAIN.WEIGHT_DECAY == DEFAULTS["TRAIN"]["WEIGHT_DECAY"]  # a section merges key by key
    (tmp_path / "a.yaml").write_text("TRAIN:\n  BASE_RL: 0.5\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: TRAIN\.BASE_RL: unknown config key"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("text, match", [
    ("_BASE_: nowhere.yaml\n", "nowhere.yaml: no such file"),
    ("_BASE_: [1]\n", "must name a YAML file"),
    ("_BASE_: loop.yaml\n", "cycle"),
])
def test_bad_base_is_a_config_error(tmp_path, text, match):
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "loop.yaml")


def test_keys_the_model_does_not_read_warn_when_changed(tmp_path):
    warnings = []
    for name in ("cell", "item", "tiny"):
        load_config(CONFIGS / f"{name}.yaml", warn=warnings.append)
    assert warnings == []  # shipped configs: silent
    (tmp_path / "seed.yaml").write_text(f"_BASE_: {CONFIGS / 'cell.yaml'}\nRPN:\n  ANCHOR_STRIDE: 8\n")
    load_config(tmp_path / "seed.yaml", ["RPN.CROWD_OVERLAP_THRESH=0.5", "RPN.HEAD_DIM=1024"], warn=warnings.append)
    assert len(warnings) == 2 and "\n" not in "".join(warnings)  # HEAD_DIM kept its default: no warning
    assert warnings[0].startswith("RPN.ANCHOR_STRIDE = 8 has no effect") and "FPN.ANCHOR_STRIDES" in warnings[0]
    assert warnings[1].startswith("RPN.CROWD_OVERLAP_THRESH = 0.5 has no effect")


def test_unread_keys_are_read_nowhere_in_the_trainer():
    """UNREAD must stay true: no trainer module may access one of its keys (attribute or getattr string)."""
    import ast

    names = {key.split(".")[-1] for key in UNREAD}
    found = []
    for path in (Path(__file__).resolve().parents[1] / "trainer").rglob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in names:
                found.append((path.name, node.attr))
            elif isinstance(node, ast.Constant) and node.value in names:
                found.append((path.name, node.value))
    assert found == []


def test_tiny_yaml_is_small():
    t = load_config(CONFIGS / "tiny.yaml")
    assert t.BACKBONE.RESNET_NUM_BLOCKS == [1, 1, 1, 1] and t.FPN.FC_HEAD_DIM == 64
    assert t.PREPROC.MAX_SIZE <= 512 and t.RPN.BATCH_PER_IM <= 64 and t.FRCNN.BATCH_PER_IM <= 64


def test_overrides_parse_yaml_values():
    c = load_config(CONFIGS / "cell.yaml", [
        "TRAIN.BASE_LR=0.02", "TRAIN.LR_SCHEDULE=[100, 200]", "RPN.ANCHOR_SIZES=(4, 8, 16, 32, 64)",
        "DATA.CATEGORIES=[ROW, COLUMN]", "BACKBONE.FREEZE_AFFINE=true", "TRAIN.WEIGHT_DECAY=1e-5",
        "OUTPUT.RESULTS_PER_IM=100", "PREPROC.TRAIN_SHORT_EDGE_SIZE=[600, 800, 1000]", "TRAIN.WARMUP_INIT_LR=0",
    ])
    assert c.TRAIN.BASE_LR == 0.02 and c.TRAIN.LR_SCHEDULE == [100, 200]
    assert c.RPN.ANCHOR_SIZES == [4, 8, 16, 32, 64]
    assert c.DATA.CATEGORIES == ["ROW", "COLUMN"] and num_classes(c) == 3
    assert c.BACKBONE.FREEZE_AFFINE is True
    assert c.TRAIN.WEIGHT_DECAY == pytest.approx(1e-5) and isinstance(c.TRAIN.WEIGHT_DECAY, float)
    assert c.PREPROC.TRAIN_SHORT_EDGE_SIZE == [600, 800, 1000]  # list length may change
    assert c.TRAIN.WARMUP_INIT_LR == 0.0 and isinstance(c.TRAIN.WARMUP_INIT_LR, float)


@pytest.mark.parametrize("override, key", [
    ("TRAIN.BASE_RL=0.1", "TRAIN.BASE_RL"),
    ("NOPE=1", "NOPE"),
    ("TRAIN.BASE_LR=fast", "TRAIN.BASE_LR"),
    ("TRAIN.STEPS_PER_EPOCH=2.5", "TRAIN.STEPS_PER_EPOCH"),
    ("FPN.NORM=3", "FPN.NORM"),
    ("FPN.NORM=BN", "FPN.NORM"),
    ("BACKBONE.FREEZE_AFFINE=7", "BACKBONE.FREEZE_AFFINE"),
    ("RPN.ANCHOR_SIZES=16", "RPN.ANCHOR_SIZES"),
    ("RPN.ANCHOR_RATIOS=[0.5, big]", "RPN.ANCHOR_RATIOS[1]"),
    ("TRAIN=3", "TRAIN"),
    ("TRAIN.BASE_LR", "TRAIN.BASE_LR"),
    ("RPN.ANCHOR_SIZES=[8, 16]", "RPN.ANCHOR_SIZES"),  # must match the 5 FPN levels
    ("FPN.NUM_CHANNEL=48", "FPN.NUM_CHANNEL"),  # GroupNorm(32)
    ("BACKBONE.WIDTH_MULT=0.25", "BACKBONE.WIDTH_MULT"),
    ("CASCADE.IOUS=[0.5, 0.6]", "CASCADE.BBOX_REG_WEIGHTS"),  # one weight set per stage
])
def test_bad_overrides_raise_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "cell.yaml", [override])
    message = str(info.value)
    assert key in message and "\n" not in message


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("RPN:\n  ANCHOR_SIZE: [1, 2, 3, 4, 5]\n")
    with pytest.raises(ConfigError, match="RPN.ANCHOR_SIZE"):
        load_config(path)


def test_dump_yaml_round_trip_and_freeze(tmp_path):
    c = load_config(CONFIGS / "cell.yaml", ["TRAIN.BASE_LR=0.005"])
    c.dump_yaml(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.to_dict() == c.to_dict() and again == c
    assert pickle.loads(pickle.dumps(c)) == c
    c.freeze()
    with pytest.raises(ConfigError):
        c.TRAIN.BASE_LR = 1.0
    assert c.TRAIN.BASE_LR == 0.005
    assert getattr(c.TRAIN, "NOT_A_KEY", 42) == 42  # missing keys behave like missing attributes
    assert isinstance(c.RPN, Config)


def test_defaults_alone_load():
    c = load_config()
    assert c.to_dict() == DEFAULTS


@pytest.mark.parametrize("override, message", [
    ("TRAIN.BASE_LR=-1", "TRAIN.BASE_LR: -1.0 must be > 0"),
    ("TRAIN.BASE_LR=0", "TRAIN.BASE_LR: 0.0 must be > 0"),
    ("TRAIN.BASE_LR=.nan", "TRAIN.BASE_LR: nan must be > 0"),
    ("TRAIN.BASE_LR=.inf", "TRAIN.BASE_LR: inf must be > 0"),
    ("TRAIN.WEIGHT_DECAY=-1e-4", "TRAIN.WEIGHT_DECAY"),
    ("TRAIN.STEPS_PER_EPOCH=0", "TRAIN.STEPS_PER_EPOCH: 0 must be >= 1"),
    ("TRAIN.CHECKPOINT_PERIOD=0", "TRAIN.CHECKPOINT_PERIOD"),
    ("TRAIN.LR_SCHEDULE=[500, 100]", "TRAIN.LR_SCHEDULE: [500, 100] must be strictly increasing"),
    ("TRAIN.LR_SCHEDULE=[0]", "TRAIN.LR_SCHEDULE[0]"),
    ("TRAIN.SEED=-3", "TRAIN.SEED"),
    ("TRAIN.NUM_WORKERS=-1", "TRAIN.NUM_WORKERS"),
    ("PREPROC.MAX_SIZE=0", "PREPROC.MAX_SIZE: 0 must be in 1..8192"),
    ("PREPROC.MAX_SIZE=100000", "PREPROC.MAX_SIZE: 100000 must be in 1..8192"),  # 9.3 GiB of anchors: MemoryError
    ("PREPROC.PIXEL_MEAN=[.nan, 1, 1]", "PREPROC.PIXEL_MEAN[0]: nan must be in [0, 255]"),
    ("RPN.ANCHOR_RATIOS=[1e-300, 1, 2]", "RPN.ANCHOR_RATIOS[0]: 1e-300 must be in [0.001, 1000]"),  # IndexError
    ("TRAIN.NUM_WORKERS=1000", "TRAIN.NUM_WORKERS: 1000 must be in 0..64"),
    ("FPN.NUM_CHANNEL=25600", "FPN.NUM_CHANNEL: 25600 must be in 1..2048"),  # gigabytes of weights
    ("FPN.FC_HEAD_DIM=1000000", "FPN.FC_HEAD_DIM: 1000000 must be in 1..4096"),
    ("BACKBONE.WIDTH_MULT=64", "BACKBONE.WIDTH_MULT: 64.0 must be in (0, 4]"),
    ("BACKBONE.WIDTH_MULT=.nan", "BACKBONE.WIDTH_MULT: nan must be in (0, 4]"),  # was a ValueError traceback
    ("MODE_FPN=false", "MODE_FPN: must be true"),  # was a ValueError traceback after the log dir was written
    ("FPN.CASCADE=false", "FPN.CASCADE: must be true"),
    ("FPN.ANCHOR_STRIDES=[3, 5, 7, 9, 11]", "FPN.ANCHOR_STRIDES: [3, 5, 7, 9, 11] must be [4, 8, 16, 32, 64]"),
    ("FPN.RESOLUTION_REQUIREMENT=1", "FPN.RESOLUTION_REQUIREMENT: 1 must be a multiple of 32"),
    ("PREPROC.TRAIN_SHORT_EDGE_SIZE=[800, 600]", "PREPROC.TRAIN_SHORT_EDGE_SIZE: min 800 > max 600"),
    ("PREPROC.TRAIN_SHORT_EDGE_SIZE=[0, 600]", "PREPROC.TRAIN_SHORT_EDGE_SIZE[0]"),
    ("PREPROC.PIXEL_STD=[1.0, 0.0, 1.0]", "PREPROC.PIXEL_STD[1]: 0.0 must be > 0"),
    ("RPN.POSITIVE_ANCHOR_THRESH=1.5", "RPN.POSITIVE_ANCHOR_THRESH: 1.5 must be in [0, 1]"),
    ("RPN.NEGATIVE_ANCHOR_THRESH=0.8", "RPN.NEGATIVE_ANCHOR_THRESH: 0.8 is above RPN.POSITIVE_ANCHOR_THRESH"),
    ("RPN.FG_RATIO=0", "RPN.FG_RATIO: 0.0 must be in (0, 1]"),
    ("RPN.ANCHOR_SIZES=[8, 16, -32, 64, 128]", "RPN.ANCHOR_SIZES[2]"),
    ("RPN.ANCHOR_RATIOS=[0.25, 0, 1.0]", "RPN.ANCHOR_RATIOS[1]"),
    ("FRCNN.FG_THRESH=-0.1", "FRCNN.FG_THRESH"),
    ("CASCADE.IOUS=[0.5, 0.6, 1.7]", "CASCADE.IOUS[2]"),
    ("CASCADE.BBOX_REG_WEIGHTS=[[10, 10, 5, 5], [20, 20, 0, 10], [30, 30, 15, 15]]", "CASCADE.BBOX_REG_WEIGHTS[1][2]"),
    ("OUTPUT.RESULT_SCORE_THRESH=2", "OUTPUT.RESULT_SCORE_THRESH"),
    ("OUTPUT.RESULTS_PER_IM=0", "OUTPUT.RESULTS_PER_IM"),
    ("BACKBONE.FREEZE_AT=6", "BACKBONE.FREEZE_AT"),
    ("DATA.CATEGORIES=[CELL, ROWS]", "DATA.CATEGORIES: unknown category 'ROWS'"),
    ("DATA.CATEGORIES=[CELL, cell]", "DATA.CATEGORIES: CELL given more than once"),
])
def test_values_out_of_range_are_one_line_errors_naming_the_key(override, message):
    """A value of the right type the model cannot train with (a negative rate trains towards NaN) fails at load."""
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "cell.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"", "empty config file"),  # was: trained the schema defaults (a ResNet-50 at 800 px)
    (b"# only a comment\n", "empty config file"),
    (b"\xff\xfe\x00binary", "not a YAML text file"),  # was a UnicodeDecodeError traceback
])
def test_empty_or_binary_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_boundary_values_are_accepted():
    c = load_config(CONFIGS / "cell.yaml", ["TRAIN.WARMUP=0", "TRAIN.WARMUP_INIT_LR=0", "TRAIN.WEIGHT_DECAY=0",
                                            "RPN.NEGATIVE_ANCHOR_THRESH=0.7", "OUTPUT.NMS_THRESH_CLASS_AGNOSTIC=1.0",
                                            "PREPROC.TRAIN_SHORT_EDGE_SIZE=[800]", "DATA.CATEGORIES=[row, COLUMN]",
                                            "BACKBONE.FREEZE_AT=0", "TRAIN.NUM_WORKERS=0", "TRAIN.NUM_WORKERS=64",
                                            "PREPROC.MAX_SIZE=8192", "FPN.RESOLUTION_REQUIREMENT=64"])
    assert c.PREPROC.TRAIN_SHORT_EDGE_SIZE == [800] and c.TRAIN.WARMUP == 0
