import numpy as np

from ddcache.geometry import PageFrame, clip, pdf_to_pixels, pixels_to_pdf, shift, union, valid


def test_y_flip_and_scale_with_mediabox_origin():
    frame = PageFrame((18.0, 36.0, 630.0, 828.0), scale=200 / 72)
    s, h = 200 / 72, 792.0
    box = [118.0, 736.0, 218.0, 746.0]  # PDF points, user space
    px = pdf_to_pixels(box, frame)[0]
    assert np.allclose(px, [s * 100, s * (h - 710), s * 200, s * (h - 700)])
    # top edge (larger y in PDF) becomes the smaller pixel y
    assert px[1] < px[3]


def test_page_crop_page_round_trip():
    rng = np.random.RandomState(0)
    frame = PageFrame((0.0, 0.0, 612.0, 792.0), scale=2.5)
    x0 = rng.uniform(0, 500, 50)
    y0 = rng.uniform(0, 700, 50)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, 90, 50), y0 + rng.uniform(1, 80, 50)], axis=1)
    crop_origin = (123, 456)
    crop = shift(pdf_to_pixels(boxes, frame), -crop_origin[0], -crop_origin[1])
    back = pixels_to_pdf(shift(crop, *crop_origin), frame)
    assert np.allclose(back, boxes, atol=1e-9)


def test_clip_valid_union():
    b = np.array([[-5, -5, 10, 10], [5, 5, 200, 8], [50, 50, 50.5, 60]], dtype=float)
    c = clip(b, 100, 100)
    assert c[0].tolist() == [0, 0, 10, 10] and c[1].tolist() == [5, 5, 100, 8]
    assert valid(c).tolist() == [True, True, False]
    assert union(b).tolist() == [-5, -5, 200, 60]
