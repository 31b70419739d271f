import msgpack
import numpy as np
import pytest

from ddcache.codec import ENCODINGS, checksum, decode_record, encode_record, pack_array, unpack_array
from ddcache.errors import CorruptRecordError


def _sample(h=40, w=60):
    rng = np.random.RandomState(1)
    img = np.full((h, w, 3), 255, np.uint8)
    img[10:20, 5:30] = rng.randint(0, 80, (10, 25, 3))
    return {
        "image": img,
        "boxes": np.array([[5, 10, 30, 20], [0, 0, 60, 40]], np.float32),
        "category_ids": np.array([2, 3], np.int32),
        "attributes": {"row": [0, 0], "col": [1, -1]},
        "num_rows": 1,
        "num_cols": 2,
        "provenance": {"source_file": "A/2017/page_1.pdf", "scale": 2.0},
    }


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip(encoding):
    s = _sample()
    raw = encode_record(s, encoding)
    d = decode_record("00000001", raw)
    assert d["key"] == "00000001"
    assert d["boxes"].dtype == np.float32 and np.array_equal(d["boxes"], s["boxes"])
    assert d["category_ids"].tolist() == [2, 3]
    assert d["attributes"]["col"].tolist() == [1, -1]
    assert d["provenance"] == s["provenance"]
    assert d["image"].shape == s["image"].shape and d["image"].dtype == np.uint8
    if ENCODINGS[encoding].lossless:
        assert np.array_equal(d["image"], s["image"])
    else:
        assert np.abs(d["image"].astype(int) - s["image"]).mean() < 8


def test_deterministic_bytes():
    assert encode_record(_sample(), "png") == encode_record(_sample(), "png")
    assert checksum(encode_record(_sample(), "png")) != checksum(encode_record(_sample(h=41), "png"))


def test_corruption_names_the_key():
    raw = bytearray(encode_record(_sample(), "png"))
    with pytest.raises(CorruptRecordError, match="00000007"):
        decode_record("00000007", bytes(raw[: len(raw) // 2]))
    payload = msgpack.unpackb(bytes(raw), raw=False)
    payload["image"]["data"] = payload["image"]["data"][:20]
    with pytest.raises(CorruptRecordError, match="image|decode"):
        decode_record("00000007", msgpack.packb(payload, use_bin_type=True))


def test_object_arrays_are_refused():
    with pytest.raises(ValueError):
        pack_array(np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        unpack_array({"dtype": "O", "shape": [1], "data": b"x"})


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_neutral_images_round_trip_as_three_channels(encoding):
    s = _sample()
    s["image"] = np.repeat(s["image"][:, :, :1], 3, axis=2)  # B == G == R: stored as one channel
    d = decode_record("k", encode_record(s, encoding))
    assert d["image"].shape == s["image"].shape
    if encoding == "png":
        assert np.array_equal(d["image"], s["image"])
    colour = _sample()
    colour["image"][0, 0] = (0, 0, 255)  # one red pixel keeps the image in colour
    assert np.array_equal(decode_record("k", encode_record(colour, "png"))["image"], colour["image"])


def test_corrupt_record_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(CorruptRecordError("00000007", "checksum mismatch")))
    assert (err.key, err.reason) == ("00000007", "checksum mismatch") and "00000007" in str(err)


def test_store_grows_its_map_instead_of_failing(tmp_path):
    from ddcache.store import LmdbWriter

    writer = LmdbWriter(tmp_path / "env", map_size=64 * 1024)
    payload = bytes(range(256)) * 1024  # 256 KB per record: far past the initial 64 KB map
    for i in range(8):
        writer.commit([(f"{i:08d}", payload)], {"progress": {"i": i}})
    assert writer.env.info()["map_size"] >= 8 * len(payload)
    assert writer.get_raw("00000007") == payload and writer.get_meta("progress") == {"i": 7}
    writer.close()
