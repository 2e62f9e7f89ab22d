"""`piqa data degrade`: synthetic degradations of real portraits as a ranked, grouped manifest."""

import io
import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import run
from piqa_model.images import open_image
from training.degrade import BAND, FORMS, KINDS, MIXTURE, DegradeConfig, degrade_folder, degraded_versions, downscale


@pytest.fixture(scope="module")
def portraits(shared_dir: Path) -> Path:
    return shared_dir / "data" / "portraits" / "london"


def _read_manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def test_manifest_rows_files_and_determinism(portraits: Path, tmp_path: Path) -> None:
    stems = [p.stem for p in sorted(portraits.glob("*.jpg"))[:3]]
    first = degrade_folder(DegradeConfig(str(portraits), str(tmp_path / "a"), max_size=128, limit=3), workers=1)
    second = degrade_folder(DegradeConfig(str(portraits), str(tmp_path / "b"), max_size=128, limit=3), workers=3)

    per_source = 1 + len(KINDS) * 5
    assert (first.sources, first.images, first.skipped) == (3, 3 * per_source, [])
    assert (second.sources, second.images) == (first.sources, first.images)
    table = pq.read_table(tmp_path / "a" / "manifest.parquet")
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("uri", "string"),
        ("label", "double"),
        ("label_std", "double"),
        ("group", "string"),
        ("kind", "string"),
        ("level", "int64"),
        ("form", "string"),
    ]
    rows = table.to_pylist()
    assert rows == _read_manifest(tmp_path / "b")  # as many threads as sources: the same manifest as one
    for stem in stems:
        group = [r for r in rows if r["group"] == stem]
        expected = [("clean", 0)] + [(kind, level) for kind in KINDS for level in range(1, 6)]
        assert [(r["kind"], r["level"]) for r in group] == expected
        for row in group:
            assert row["uri"] == f"images/{stem}/{row['kind']}-{row['level']}.png"
            assert row["label_std"] == 0.5
            if row["kind"] not in ("clean", MIXTURE):
                # the severity is drawn inside the level's band; the label is its negation
                assert row["level"] - BAND[1] <= -row["label"] <= row["level"] - BAND[0]
                assert row["form"] in FORMS[row["kind"]]
            with Image.open(tmp_path / "a" / row["uri"]) as image:
                assert image.format == "PNG" and max(image.size) == 128
        forms = {r["kind"]: r["form"] for r in group}
        assert all(r["form"] == forms[r["kind"]] for r in group)  # one form per photo and kind
    assert {r["group"] for r in rows} == set(stems)
    assert len({r["label"] for r in rows if r["kind"] == "blur" and r["level"] == 2}) == 3  # drawn, not fixed

    for stem in stems:
        for level in range(1, 6):
            name = f"images/{stem}/noise-{level}.png"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    record = json.loads((tmp_path / "a" / "degrade.json").read_text())
    assert record["config"]["seed"] == 0 and record["config"]["max_size"] == 128
    assert set(record["parameters"]) == set(KINDS)
    assert set(record["parameters"]["blur"]) == {"gaussian", "defocus", "motion"}

    reseeded = degrade_folder(DegradeConfig(str(portraits), str(tmp_path / "c"), max_size=128, limit=1, seed=1), 1)
    assert reseeded.images == per_source
    name = f"images/{stems[0]}/noise-3.png"
    assert (tmp_path / "c" / name).read_bytes() != (tmp_path / "a" / name).read_bytes()


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def _sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the luma."""
    g = _grey(image)
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(laplacian.var())


def _rms_error(image: Image.Image, clean: Image.Image) -> float:
    return float(np.sqrt(np.mean((np.asarray(image, np.float64) - np.asarray(clean, np.float64)) ** 2)))


def _chroma_shift(image: Image.Image, clean: Image.Image) -> float:
    """Mean absolute change of the channels minus their mean (colour, not brightness)."""

    def chroma(im: Image.Image) -> np.ndarray:
        a = np.asarray(im, np.float64)
        return a - a.mean(axis=2, keepdims=True)

    return float(np.abs(chroma(image) - chroma(clean)).mean())


def _contrast(image: Image.Image, clean: Image.Image) -> float:
    """How much the luma's spread shrank (flat contrast and haze both shrink it)."""
    return float(_grey(clean).std() - _grey(image).std())


def _resolution_loss(image: Image.Image, clean: Image.Image) -> float:
    """Fine detail lost: the drop in the variance of the Laplacian."""
    return _sharpness(clean) - _sharpness(image)


MEASURES = {
    "blur": (lambda image, clean: _sharpness(image), "decreasing"),
    "noise": (_rms_error, "increasing"),
    "jpeg": (lambda image, clean: -20 * np.log10(_rms_error(image, clean) / 255), "decreasing"),  # PSNR
    "underexposure": (lambda image, clean: _grey(image).mean(), "decreasing"),
    "overexposure": (lambda image, clean: _grey(image).mean(), "increasing"),
    "contrast": (_contrast, "increasing"),
    "colour": (_chroma_shift, "increasing"),
    "resolution": (_resolution_loss, "increasing"),
}


@pytest.mark.parametrize("index", range(6))
def test_severity_grows_with_level_whatever_the_form(portraits: Path, index: int) -> None:
    source = sorted(portraits.glob("*.jpg"))[index]
    clean = downscale(open_image(source.read_bytes()), 256)
    versions = list(degraded_versions(clean, KINDS, 5, np.random.default_rng(index)))
    assert (versions[0].kind, versions[0].level, versions[0].image) == ("clean", 0, clean)
    assert set(MEASURES) | {MIXTURE} == set(KINDS)
    for kind, (measure, direction) in MEASURES.items():
        images = [v.image for v in versions if v.kind == kind]
        form = next(v.form for v in versions if v.kind == kind)
        values = [measure(image, clean) for image in images]
        if kind != "jpeg":  # a JPEG's PSNR against itself is infinite
            values.insert(0, measure(clean, clean))
        steps = np.diff(values) * (1 if direction == "increasing" else -1)
        assert np.all(steps > 0), f"{kind} ({form}): {values}"
    # every level of every kind, mixtures included, also moves further from the clean image
    for kind in KINDS:
        errors = [_rms_error(v.image, clean) for v in versions if v.kind == kind]
        assert errors[0] > 0 and np.all(np.diff(errors) > 0), f"{kind}: {errors}"
        severities = [v.severity for v in versions if v.kind == kind]
        assert np.all(np.diff(severities) > 0), f"{kind}: {severities}"


def test_the_draws_meet_every_form_of_every_kind(portraits: Path) -> None:
    clean = downscale(open_image(sorted(portraits.glob("*.jpg"))[0].read_bytes()), 64)
    seen: dict[str, set[str]] = {}
    for seed in range(12):
        for version in degraded_versions(clean, KINDS, 1, np.random.default_rng(seed)):
            seen.setdefault(version.kind, set()).add(version.form)
    assert all(seen[kind] == set(forms) for kind, forms in FORMS.items()), seen


def test_cli_writes_a_manifest_and_skips_unreadable_images(portraits: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "portraits"
    (source / "studio").mkdir(parents=True)
    (source / ".thumbnails").mkdir()
    first, second = sorted(portraits.glob("*.jpg"))[:2]
    shutil.copy(first, source / first.name)
    shutil.copy(second, source / "studio" / second.name)
    shutil.copy(second, source / ".thumbnails" / second.name)  # hidden: not a source
    (source / "broken.jpg").write_bytes(b"not a jpeg")
    (source / "notes.txt").write_text("not an image")
    out = source / "degraded"  # inside the input: its PNGs must not become sources on a rerun

    argv = ["data", "degrade", str(source), "--out", str(out), "--levels", "2", "--kinds", "blur,jpeg"]
    argv += ["--max-size", "96", "--workers", "1"]
    for _ in range(2):
        assert run(argv) == 0
        captured = capsys.readouterr()
        assert "warning: skipped unreadable" in captured.err and "broken.jpg" in captured.err
        assert captured.out.strip().splitlines() == [
            f"degraded 2 source photos (1 unreadable, skipped) into 10 images: {out}/manifest.parquet"
        ]
    rows = _read_manifest(out)
    assert sorted({r["group"] for r in rows}) == [first.stem, f"studio/{second.stem}"]
    assert {(r["kind"], r["level"]) for r in rows} == {("clean", 0), ("blur", 1), ("blur", 2), ("jpeg", 1), ("jpeg", 2)}
    assert all((out / r["uri"]).is_file() for r in rows)
    assert json.loads((out / "degrade.json").read_text())["skipped"][0]["uri"].endswith("broken.jpg")


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda tmp: tmp / "missing", [], "does not exist"),
        (lambda tmp: tmp, [], "holds no jpg, jpeg or png images"),
        (None, ["--kinds", "blur,sepia"], "unknown degradation kind sepia"),
        (None, ["--levels", "0"], "levels must be between 1 and 10"),
    ],
)
def test_cli_errors_are_one_line(portraits: Path, tmp_path: Path, capsys, make_input, extra, message) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    source = make_input(empty) if make_input else portraits
    assert run(["data", "degrade", str(source), "--out", str(tmp_path / "out"), *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_s3_input_and_output(portraits: Path, s3_endpoint: str) -> None:
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("degrade-test")
    source = sorted(portraits.glob("*.jpg"))[0]
    fs.pipe_file(f"degrade-test/portraits/{source.name}", source.read_bytes())

    config = DegradeConfig(
        "s3://degrade-test/portraits", "s3://degrade-test/out", levels=1, kinds=("noise",), max_size=64
    )
    summary = degrade_folder(config, workers=1)
    assert (summary.sources, summary.images) == (1, 2)
    rows = pq.read_table(io.BytesIO(fs.cat_file("degrade-test/out/manifest.parquet"))).to_pylist()
    assert [r["uri"] for r in rows] == [f"images/{source.stem}/clean-0.png", f"images/{source.stem}/noise-1.png"]
    assert all(fs.exists(f"degrade-test/out/{r['uri']}") for r in rows)
