"""`pipelines.score_dataset`: the README's example, run as written (its paths made absolute: Ray's workers do not
share this test's working directory), scores like the in-process scorer."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from corpus import portraits

import pipelines
import piqa_model


@pytest.mark.usefixtures("ray_local")
def test_the_readme_example_scores_a_dataset_like_the_scorer(repo_root, shared_dir, tmp_path):
    readme = (repo_root / "README.md").read_text()
    example = re.search(r"run by tests/test_score_dataset.py -->\n```python\n(.*?)```", readme, re.S)
    assert example, "the README's score_dataset example is gone"
    photos = [path.read_bytes() for path in portraits(shared_dir, 2)] + [b"not an image"]
    keys = ["a", "b", "broken"]
    pq.write_table(pa.table({"key": keys, "jpg": photos, "photographer": ["x", "y", "z"]}), tmp_path / "photos.parquet")

    code = example.group(1).replace('"photos.parquet"', repr(str(tmp_path / "photos.parquet")))
    exec(compile(code.replace('"scores"', repr(str(tmp_path / "scores"))), "README.md", "exec"), {})

    rows = {row["key"]: row for row in pads.dataset(tmp_path / "scores", format="parquet").to_table().to_pylist()}
    expected = piqa_model.load_bundle().score(photos)
    assert sorted(rows) == keys
    for key, reference in zip(keys, expected, strict=True):
        assert rows[key]["status"] == reference["status"] and rows[key]["num_faces"] == reference["num_faces"]
        if reference["score"] is None:
            assert rows[key]["score"] is None
        else:
            assert rows[key]["score"] == pytest.approx(reference["score"], abs=1e-4)


@pytest.mark.usefixtures("ray_local")
def test_a_dataset_of_images_alone_is_scored_and_clashing_columns_are_refused(shared_dir):
    import ray

    from piqa_model.errors import ConfigError

    photos = [path.read_bytes() for path in portraits(shared_dir, 1)] + [b"not an image"]
    rows = pipelines.score_dataset(ray.data.from_items([{"image": data} for data in photos]), image_column="image")
    assert sorted(row["status"] for row in rows.take_all()) == ["decode_error", "ok"]

    with_status = ray.data.from_items([{"image": data, "status": "from an earlier tool"} for data in photos])
    with pytest.raises(ConfigError, match="status"):
        pipelines.score_dataset(with_status, image_column="image")
