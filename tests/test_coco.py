"""ddcache.coco: decoded samples -> COCO dataset dicts that pycocotools loads."""
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from ddcache.categories import CELL, COLUMN, ROW, TABLE
from ddcache.coco import CocoBuilder, coco_categories, sample_to_coco


def make_sample(key="00000000", height=60, width=100):
    """Two cells, one row, one column; provenance with numpy values as a decoder may give."""
    boxes = np.array(
        [[10.0, 5.0, 40.0, 20.0], [50.5, 5.0, 90.0, 20.25], [10.0, 5.0, 90.0, 20.25], [10.0, 5.0, 40.0, 55.0]],
        dtype=np.float32,
    )
    return {
        "key": key,
        "image": np.zeros((height, width, 3), dtype=np.uint8),
        "boxes": boxes,
        "category_ids": np.array([CELL, CELL, ROW, COLUMN], dtype=np.int32),
        "attributes": {
            "row": np.array([0, 0, 0, -1], dtype=np.int32),
            "col": np.array([0, 1, -1, 0], dtype=np.int32),
            "row_span": np.array([1, 1, -1, -1], dtype=np.int32),
            "col_span": np.array([1, 1, -1, -1], dtype=np.int32),
            "header": np.array([1, 0, -1, -1], dtype=np.int32),
        },
        "num_rows": 1,
        "num_cols": 2,
        "provenance": {
            "dataset": "fintabnet",
            "table_id": np.int64(7),
            "scale": np.float32(2.5),
            "crop_origin": np.array([3.0, 4.0]),
        },
    }


def test_coco_categories_names_and_unknown_id():
    assert coco_categories([ROW, CELL]) == [
        {"id": CELL, "name": "CELL", "supercategory": "table"},
        {"id": ROW, "name": "ROW", "supercategory": "table"},
    ]
    with pytest.raises(ValueError, match="unknown category id 9"):
        coco_categories([9])


def test_sample_to_coco_converts_boxes_and_keeps_attributes():
    image, anns = sample_to_coco(make_sample(), image_id=5, file_name="a.png", first_annotation_id=11)
    assert (image["id"], image["file_name"], image["width"], image["height"]) == (5, "a.png", 100, 60)
    assert image["ddcache_key"] == "00000000"
    assert image["ddcache_provenance"] == {"dataset": "fintabnet", "table_id": 7, "scale": 2.5, "crop_origin": [3.0, 4.0]}
    assert [a["id"] for a in anns] == [11, 12, 13, 14]
    assert all(a["image_id"] == 5 and a["iscrowd"] == 0 for a in anns)
    assert [a["category_id"] for a in anns] == [CELL, CELL, ROW, COLUMN]
    assert anns[1]["bbox"] == pytest.approx([50.5, 5.0, 39.5, 15.25])
    assert anns[1]["area"] == pytest.approx(39.5 * 15.25)
    assert anns[0]["attributes"] == {"col": 0, "col_span": 1, "header": 1, "row": 0, "row_span": 1}
    assert anns[3]["attributes"]["row"] == -1
    json.dumps([image, anns])  # numpy values must not leak into the export


def test_sample_to_coco_filters_categories_and_numbers_kept_boxes_consecutively():
    _, anns = sample_to_coco(make_sample(), 1, "a.png", category_ids=[ROW, COLUMN], first_annotation_id=1)
    assert [a["category_id"] for a in anns] == [ROW, COLUMN]
    assert [a["id"] for a in anns] == [1, 2]
    assert anns[0]["bbox"] == pytest.approx([10.0, 5.0, 80.0, 15.25])


def test_image_size_from_encoded_image_or_explicit():
    sample = make_sample()
    del sample["image"]
    sample["image_encoded"] = {"enc": "png", "shape": [33, 44, 3], "data": b""}
    image, _ = sample_to_coco(sample, 1, "a.png")
    assert (image["width"], image["height"]) == (44, 33)
    del sample["image_encoded"]
    with pytest.raises(ValueError, match="no image"):
        sample_to_coco(sample, 1, "a.png")
    image, _ = sample_to_coco(sample, 1, "a.png", image_size=(7, 8))
    assert (image["width"], image["height"]) == (7, 8)


def test_builder_output_loads_in_pycocotools(tmp_path):
    builder = CocoBuilder()
    assert builder.add(make_sample("00000000"), "00000000.png") == 1
    assert builder.add(make_sample("00000001", height=80, width=120), "00000001.png") == 2
    path = tmp_path / "coco.json"
    builder.write(path)

    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2]
    assert sorted(coco.getAnnIds()) == list(range(1, 9))
    assert sorted(coco.getCatIds()) == [TABLE, CELL, ROW, COLUMN]
    assert len(coco.getAnnIds(imgIds=[2], catIds=[CELL])) == 2
    assert coco.loadImgs([2])[0]["width"] == 120
    # annotation ids continue across images in add order
    second = coco.loadAnns(coco.getAnnIds(imgIds=[2]))
    assert sorted(a["id"] for a in second) == [5, 6, 7, 8]
    cell = coco.loadAnns([6])[0]
    assert cell["bbox"] == pytest.approx([50.5, 5.0, 39.5, 15.25])
    assert cell["attributes"]["col"] == 1


def test_builder_category_filter_and_determinism():
    a = CocoBuilder(category_ids=[CELL])
    b = CocoBuilder(category_ids=[CELL])
    for builder in (a, b):
        builder.add(make_sample("00000000"), "x.png")
        builder.add(make_sample("00000001"), "y.png")
    d = a.to_dict()
    assert d["categories"] == [{"id": CELL, "name": "CELL", "supercategory": "table"}]
    assert [ann["category_id"] for ann in d["annotations"]] == [CELL] * 4
    assert [ann["id"] for ann in d["annotations"]] == [1, 2, 3, 4]
    assert json.dumps(d) == json.dumps(b.to_dict())
    with pytest.raises(ValueError):
        CocoBuilder(category_ids=[0])
