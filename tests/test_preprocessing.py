"""Training/eval resize and flip: sizes, caps, boxes following the image, reproducibility."""
import numpy as np

import trainer  # noqa: F401
from trainer import preprocessing as pp


def _image(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[h // 4:h // 2, w // 5:w // 3] = 255  # a white block the boxes below describe
    return img, np.array([[w // 5, h // 4, w // 3, h // 2]], np.float32)


def test_short_edge_in_range_and_long_edge_capped():
    rng = np.random.RandomState(0)
    seen = set()
    for h, w in [(300, 500), (500, 300), (100, 1400), (700, 700)]:
        img, boxes = _image(h, w)
        for _ in range(20):
            out, _, scale = pp.random_resize(img, boxes, (600, 1200), 1408, rng)
            oh, ow = out.shape[:2]
            assert max(oh, ow) <= 1408
            if max(oh, ow) < 1408:  # not capped: the short edge is the drawn one
                assert 600 <= min(oh, ow) <= 1200
                seen.add(min(oh, ow))
            np.testing.assert_allclose(scale, [ow / w, oh / h], rtol=1e-6)
    assert len(seen) > 10  # really random, not a constant


def test_cap_applies_to_elongated_image():
    img, boxes = _image(100, 1400)
    out, _, _ = pp.random_resize(img, boxes, (600, 1200), 1408, np.random.RandomState(1))
    assert out.shape[:2] == (101, 1408)  # 100 * 1408/1400 rounds to 101


def test_boxes_follow_image_content():
    img, boxes = _image(400, 600)
    out, b, _ = pp.random_resize(img, boxes, (600, 1200), 1408, np.random.RandomState(3))
    x0, y0, x1, y1 = np.round(b[0]).astype(int)
    inner = out[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    assert inner.min() > 200  # inside the scaled box: the white block
    assert out[y1 + 3:, :].max() < 50 and out[:, x1 + 3:].max() < 50
    flipped, fb = pp.horizontal_flip(out, b)
    x0, y0, x1, y1 = np.round(fb[0]).astype(int)
    assert flipped[y0 + 2:y1 - 2, x0 + 2:x1 - 2].min() > 200


def test_flip_twice_is_identity():
    rng = np.random.RandomState(5)
    img = rng.randint(0, 255, (37, 53, 3)).astype(np.uint8)
    boxes = rng.uniform(0, 37, (20, 4)).astype(np.float32)
    i2, b2 = pp.horizontal_flip(*pp.horizontal_flip(img, boxes))
    assert np.array_equal(i2, img)
    np.testing.assert_allclose(b2, boxes, atol=1e-4)
    i1, b1 = pp.horizontal_flip(img, boxes)
    assert np.array_equal(i1[:, 0], img[:, -1])
    assert np.all(b1[:, 0] == 53 - boxes[:, 2])


def test_random_flip_probability():
    rng = np.random.RandomState(0)
    img, boxes = _image(10, 20)
    flips = sum(pp.random_flip(img, boxes, rng)[2] for _ in range(400))
    assert 150 < flips < 250


def test_reproducible_per_seed():
    img, boxes = _image(300, 450)

    def run(seed):
        rng = np.random.RandomState(seed)
        out, b, _ = pp.random_resize(img, boxes, (600, 1200), 1408, rng)
        out, b, f = pp.random_flip(out, b, rng)
        return out, b, f

    a, b = run(7), run(7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    sizes = {run(s)[0].shape for s in range(6)}
    assert len(sizes) > 1


def test_eval_resize_deterministic_and_capped():
    img, _ = _image(400, 600)
    out, scale = pp.eval_resize(img, 800, 1408)
    assert out.shape[:2] == (800, 1200)
    np.testing.assert_allclose(scale, [2.0, 2.0])
    out, scale = pp.eval_resize(np.zeros((200, 1000, 3), np.uint8), 800, 1408)
    assert out.shape[:2] == (282, 1408)
    np.testing.assert_allclose(scale, [1.408, 1.41], rtol=1e-5)


def test_clean_boxes_clips_and_drops():
    boxes = np.array([[-5, -5, 10, 10], [20, 20, 20, 30], [0, 0, np.nan, 4], [90, 90, 120, 95]], np.float32)
    out, keep = pp.clean_boxes(boxes, 100, 100)
    assert keep.tolist() == [True, False, False, True]
    assert out[0].tolist() == [0, 0, 10, 10] and out[3].tolist() == [90, 90, 100, 95]
