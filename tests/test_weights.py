"""Tolerant fine-tuning loads (trainer.weights): by name, shape mismatches skipped and reported, extras stripped."""
import numpy as np
import pytest

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from trainer.fine_tune import FineTuneInit, load_weights
from trainer.weights import match_weights

# A slice of the published tensorpack Cascade R-CNN names (FACTS.md §4), small shapes.
PUBLISHED = {
    "conv0/W": (3, 3, 3, 8),
    "conv0/gn/gamma": (8,),
    "group0/block0/conv1/W": (1, 1, 8, 8),
    "fpn/lateral_1x1_c2/b": (8,),
    "rpn/class/W": (1, 1, 8, 3),
    "cascade_rcnn_stage1/head/fc6/W": (16, 4),
    "cascade_rcnn_stage1/outputs/class/W": (4, 2),  # 1 category + background
    "cascade_rcnn_stage1/outputs/class/b": (2,),
    "cascade_rcnn_stage1/outputs/box/W": (4, 4),
}


def _values(shapes, fill):
    return {n: np.full(s, fill, dtype=np.float32) for n, s in shapes.items()}


def _graph_session(shapes, with_saver=False):
    """A finalized graph holding ``shapes`` as variables (plus global_step, learning_rate, one Momentum slot)."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        for name, shape in shapes.items():
            scope, var = name.rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                tf.compat.v1.get_variable(var, shape, initializer=tf.compat.v1.zeros_initializer())
        tf.compat.v1.train.get_or_create_global_step()
        tf.compat.v1.get_variable("learning_rate", [], initializer=tf.compat.v1.constant_initializer(0.5),
                                  trainable=False)
        tf.compat.v1.get_variable("conv0/W/Momentum", shapes["conv0/W"], initializer=tf.compat.v1.zeros_initializer())
        saver = tf.compat.v1.train.Saver() if with_saver else None
        sess = tf.compat.v1.Session(graph=g)
        sess.run(tf.compat.v1.global_variables_initializer())
    g.finalize()  # tensorpack finalizes before session_init runs on a restart; loading must not add ops
    return (g, sess, saver) if with_saver else (g, sess)


def _value(sess, name):
    import tensorflow as tf

    with sess.graph.as_default():
        var = [v for v in tf.compat.v1.global_variables() if v.op.name == name][0]
        return sess.run(var)


def test_match_skips_other_class_count_and_reports_missing_unused_stripped():
    file_shapes = dict(PUBLISHED)
    file_shapes["cascade_rcnn_stage1/outputs/class/W"] = (4, 5)  # a 4-category checkpoint
    del file_shapes["rpn/class/W"]
    values = _values(file_shapes, 1.0)
    values["extra/thing"] = np.zeros(3, np.float32)
    values["global_step"] = np.array(1234, np.int64)
    values["conv0/W/Momentum"] = np.zeros((3, 3, 3, 8), np.float32)
    values["conv0/W/AccumGrad"] = np.zeros((3, 3, 3, 8), np.float32)
    graph = dict(PUBLISHED, global_step=(), learning_rate=(), **{"conv0/W/Momentum": (3, 3, 3, 8),
                                                                "tower1/conv0/W": (3, 3, 3, 8)})
    assign, report = match_weights(values, graph)
    assert report.skipped == {"cascade_rcnn_stage1/outputs/class/W": ((4, 5), (4, 2))}
    assert report.missing == ["rpn/class/W"]  # not global_step / Momentum / tower1 replica
    assert report.unused == ["extra/thing"]
    assert report.stripped == ["conv0/W/AccumGrad", "conv0/W/Momentum", "global_step"]
    assert sorted(assign) == sorted(set(PUBLISHED) - {"rpn/class/W", "cascade_rcnn_stage1/outputs/class/W"})
    assert "skipped 1" in report.summary() and "missing 1" in report.summary()


def test_no_stripping_carries_the_step_counter():
    assign, report = match_weights({"global_step": np.array(7, np.int64)}, {"global_step": ()}, strip_training=False)
    assert "global_step" in assign and report.stripped == []


def test_npz_loads_by_name_into_finalized_graph_mismatch_not_fatal(tmp_path):
    values = _values(PUBLISHED, 2.0)
    values["cascade_rcnn_stage1/outputs/class/W"] = np.full((4, 5), 2.0, np.float32)
    values["global_step"] = np.array(99, np.int64)
    values["learning_rate"] = np.array(9.0, np.float32)
    np.savez(tmp_path / "w.npz", **values)
    g, sess = _graph_session(PUBLISHED)
    report = load_weights(sess, str(tmp_path / "w.npz"))
    assert np.all(_value(sess, "conv0/W") == 2.0)
    assert np.all(_value(sess, "cascade_rcnn_stage1/head/fc6/W") == 2.0)
    assert np.all(_value(sess, "cascade_rcnn_stage1/outputs/class/W") == 0.0)  # skipped: keeps its init
    assert _value(sess, "global_step") == 0 and _value(sess, "learning_rate") == 0.5  # stripped
    assert list(report.skipped) == ["cascade_rcnn_stage1/outputs/class/W"]
    assert len(report.loaded) == len(PUBLISHED) - 1 and report.missing == []


def test_tensorpack_checkpoint_prefix_and_dir_load(tmp_path):
    import tensorflow as tf

    src_graph, src, saver = _graph_session(PUBLISHED, with_saver=True)
    with src_graph.as_default():
        gamma = [v for v in tf.compat.v1.global_variables() if v.op.name == "conv0/gn/gamma"][0]
        src.run(gamma.initializer, {gamma.initializer.inputs[1]: np.full((8,), 3.0, np.float32)})
    prefix = saver.save(src, str(tmp_path / "model"), global_step=50)
    assert prefix.endswith("model-50")

    shapes = dict(PUBLISHED)
    shapes["cascade_rcnn_stage1/outputs/class/W"] = (4, 7)
    shapes["cascade_rcnn_stage1/outputs/class/b"] = (7,)
    for path in (prefix, prefix + ".index", str(tmp_path)):
        g, sess = _graph_session(shapes)
        report = load_weights(sess, path)
        assert np.all(_value(sess, "conv0/gn/gamma") == 3.0)
        assert sorted(report.skipped) == ["cascade_rcnn_stage1/outputs/class/W", "cascade_rcnn_stage1/outputs/class/b"]
        assert "global_step" in report.stripped and "conv0/W/Momentum" in report.stripped
        assert _value(sess, "global_step") == 0


def test_session_init_reports_through_echo(tmp_path):
    np.savez(tmp_path / "w.npz", **{"conv0/W": np.ones((3, 3, 3, 8), np.float32)})
    g, sess = _graph_session(PUBLISHED)
    lines = []
    init = FineTuneInit(str(tmp_path / "w.npz"), echo=lines.append)
    init._run_init(sess)
    assert init.report.loaded == ["conv0/W"]
    assert len(init.report.missing) == len(PUBLISHED) - 1
    assert "loaded 1" in lines[0] and "missing 8" in lines[0]


def test_missing_weights_file_is_user_error(tmp_path):
    from ddcache.errors import UserError

    with pytest.raises(UserError):
        FineTuneInit(str(tmp_path / "nope.npz"))


def test_published_names_load_into_the_cascade_rcnn_graph_with_another_class_count(tmp_path):
    """A 1-category (CELL) model's weights, by their published names, fine-tune a 2-category model.

    Every backbone / FPN / RPN / head tensor loads; the three stages' class
    outputs (another number of classes) are skipped with a report; the
    class-agnostic box outputs load; training-only extras are stripped.
    """
    from pathlib import Path

    import tensorflow as tf
    from tensorpack.tfutils.tower import PredictTowerContext

    from trainer.config import load_config
    from trainer.inference_export import model_variable_shapes
    from trainer.model.detector import CascadeRCNN

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    shapes = model_variable_shapes(load_config(str(tiny)))
    for name in ("conv0/W", "conv0/gn/gamma", "group0/block0/conv1/W", "group0/block0/convshortcut/gn/beta",
                 "fpn/lateral_1x1_c2/W", "fpn/posthoc_3x3_p5/W", "rpn/conv0/W", "cascade_rcnn_stage3/head/fc7/W",
                 "cascade_rcnn_stage2/outputs/box/W"):
        assert name in shapes, name  # the published naming (FACTS.md §4) is what the model builds
    values = {n: np.full(s, 0.25, np.float32) for n, s in shapes.items()}
    values.update({"global_step": np.array(5000, np.int64), "learning_rate": np.array(0.01, np.float32),
                   "conv0/W/Momentum": np.zeros(shapes["conv0/W"], np.float32)})
    np.savez(tmp_path / "cell.npz", **values)

    cfg2 = load_config(str(tiny), overrides=["DATA.CATEGORIES=[CELL, ROW]"])
    model = CascadeRCNN(cfg2, "NHWC")
    g = tf.Graph()
    with g.as_default():
        inputs = [tf.compat.v1.placeholder(s.dtype, s.shape, s.name) for s in model.get_input_signature()]
        with PredictTowerContext(""):
            model.build_graph(*inputs)
        sess = tf.compat.v1.Session(graph=g)
        sess.run(tf.compat.v1.global_variables_initializer())
    g.finalize()
    report = load_weights(sess, str(tmp_path / "cell.npz"))
    class_outputs = [f"cascade_rcnn_stage{k}/outputs/class/{p}" for k in (1, 2, 3) for p in ("W", "b")]
    assert sorted(report.skipped) == sorted(class_outputs)
    assert report.skipped["cascade_rcnn_stage1/outputs/class/W"] == (tuple(shapes[class_outputs[0]]),
                                                                     (shapes[class_outputs[0]][0], 3))
    assert report.missing == [] and report.unused == []
    assert len(report.loaded) == len(shapes) - 6
    assert report.stripped == ["conv0/W/Momentum", "global_step", "learning_rate"]
    assert np.all(_value(sess, "fpn/lateral_1x1_c3/W") == 0.25)
    assert np.all(_value(sess, "cascade_rcnn_stage2/outputs/box/W") == 0.25)
    assert not np.all(_value(sess, "cascade_rcnn_stage1/outputs/class/W") == 0.25)  # kept its fresh init


def _good_npz(tmp_path):
    path = tmp_path / "good.npz"
    np.savez(path, **_values(PUBLISHED, 1.0))
    return path


def _damaged_weight_files(tmp_path):
    """name -> a hostile weights file (each was a traceback, a wrong exit code, or loaded silently)."""
    import io
    import zipfile

    good = _good_npz(tmp_path).read_bytes()
    files = {"empty": b"", "text": b"hello, not a zip\n", "truncated": good[: len(good) // 2]}
    flipped = bytearray(good)
    for i in range(200, len(flipped) - 200, 97):  # inside the members, not the zip directory
        flipped[i] ^= 0xFF
    files["crc"] = bytes(flipped)
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.npz"
        out[name].write_bytes(data)
    header = io.BytesIO()  # a few KB that declare 2^31 float32 numbers (8 GiB)
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 31,)})
    out["bomb"] = tmp_path / "bomb.npz"
    with zipfile.ZipFile(out["bomb"], "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("conv0/W.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue() + b"\0" * 4096)
    return out


def test_damaged_npz_files_are_one_line_user_errors(tmp_path):
    """Was: BadZipFile tracebacks (truncated, bad CRC) and 'ddtrain: aborted' exit 130 for an empty file
    (click turns an EOFError into Abort); a zip bomb was decompressed as far as it went."""
    from ddcache.errors import UserError
    from trainer.weights import read_weights

    for name, path in _damaged_weight_files(tmp_path).items():
        with pytest.raises(UserError) as info:
            read_weights(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name
    assert "more than the limit" in str(pytest.raises(UserError, read_weights, tmp_path / "bomb.npz").value)


@pytest.mark.parametrize("bad", ["strings", "bool", "complex", "nan"])
def test_weights_that_are_not_finite_numbers_are_refused_strictly_and_for_fine_tuning(tmp_path, bad):
    """Was: a string array of the right shape was cast and trained on, bool/complex loaded, NaN exported."""
    from ddcache.errors import UserError
    from trainer.weights import check_weights_match

    values = _values(PUBLISHED, 1.0)
    w = values["conv0/W"]
    values["conv0/W"] = {"strings": w.astype("U3"), "bool": w.astype(bool), "complex": w.astype(np.complex64),
                         "nan": np.full_like(w, np.nan)}[bad]
    with pytest.raises(UserError, match="conv0/W holds"):
        check_weights_match(values, PUBLISHED, source="w.npz")
    with pytest.raises(UserError, match="^w.npz: conv0/W holds"):
        match_weights(values, PUBLISHED, source="w.npz")
    values["conv0/W"] = w.astype(np.float16)  # a narrower float is still a weight
    assert len(match_weights(values, PUBLISHED)[1].loaded) == len(PUBLISHED)


def test_a_checkpoint_list_that_is_not_tensorflows_is_a_user_error(tmp_path):
    """Was: a UnicodeDecodeError traceback (binary 'checkpoint'), and a list naming any existing file
    (/etc/passwd) was taken as a checkpoint; a truncated .data file raised IndexError."""
    from ddcache.errors import UserError
    from trainer.weights import latest_checkpoint_in, read_weights

    (tmp_path / "checkpoint").write_bytes(b"\xff\x82\x00 binary")
    with pytest.raises(UserError, match="not a TensorFlow checkpoint list"):
        latest_checkpoint_in(tmp_path)
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{_good_npz(tmp_path)}"\n')
    with pytest.raises(UserError, match=r"which is not a checkpoint \(no good.npz.index\)"):
        read_weights(tmp_path)

    src_graph, src, saver = _graph_session(PUBLISHED, with_saver=True)
    prefix = saver.save(src, str(tmp_path / "model"), global_step=5)
    data = next(tmp_path.glob("model-5.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UserError, match="unreadable checkpoint"):
        read_weights(prefix)
    assert latest_checkpoint_in(tmp_path / "nowhere") is None
