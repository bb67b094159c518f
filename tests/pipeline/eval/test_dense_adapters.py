"""SIIM-ACR, RSNA (boxes) and Object-CXR adapters on small trees in their real layouts, the Kaggle RLE, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_adapters import WINDOW, _gradient, _write_dicom

from data_prep.phantom.dense_sets import RSNA_POSITIVE, SIIM_POSITIVE, object_case, rsna_case, siim_case
from pipeline.eval.adapters import DenseImages, load_object_cxr, load_rsna_boxes, load_siim, parse_annotation
from pipeline.eval.dense_fit import balanced_ids, prepare
from pipeline.eval.splits import fraction_ids, partition_ids
from pipeline.shard_format.kaggle_rle import decode_kaggle_rle, encode_kaggle_rle, parse_kaggle_rle

# --------------------------------------------------------------------------- Kaggle RLE


def test_kaggle_rle_known_mask_written_by_hand() -> None:
    # 4 rows x 3 columns; column-major pixel numbers:  col0: 0-3, col1: 4-7, col2: 8-11
    mask = np.zeros((4, 3), dtype=bool)
    mask[1:3, 0] = True  # pixels 1, 2
    mask[0, 1] = True  # pixel 4
    mask[3, 2] = True  # pixel 11
    # runs (start, length): (1, 2), (4, 1), (11, 1); relative starts: 1, 4 - 3 = 1, 11 - 5 = 6
    assert encode_kaggle_rle(mask) == "1 2 1 1 6 1"
    assert (decode_kaggle_rle("1 2 1 1 6 1", 4, 3) == mask).all()
    assert encode_kaggle_rle(np.zeros((5, 5), bool)) == "-1"
    assert not decode_kaggle_rle(" -1", 5, 5).any()


def test_kaggle_rle_round_trip_matches_a_float64_loop() -> None:
    rng = np.random.default_rng(0)
    for rows, cols in ((7, 5), (32, 48), (1, 9)):
        mask = rng.random((rows, cols)) < 0.3
        mask[0, 0] = mask[-1, -1] = True  # runs touching both ends
        text = encode_kaggle_rle(mask)
        assert (decode_kaggle_rle(text, rows, cols) == mask).all()
        reference = np.zeros(rows * cols, dtype=np.float64)  # Kaggle's rle2mask, written out
        values = [int(v) for v in text.split()]
        position = 0
        for start, length in zip(values[0::2], values[1::2]):
            position += start
            for k in range(length):
                reference[position + k] = 1.0
            position += length
        assert (reference.reshape(cols, rows).T.astype(bool) == mask).all()


@pytest.mark.parametrize("text", ["1 2 3", "1 x", "1 0", "-5 2", "1 2 0 3"])
def test_kaggle_rle_malformed_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="RLE"):
        parse_kaggle_rle(text)


def test_kaggle_rle_longer_than_the_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="4 x 3"):
        decode_kaggle_rle("10 5", 4, 3)


# --------------------------------------------------------------------------- SIIM


def _siim_tree(tmp_path: Path, rows_csv: list[tuple[str, str]], images: dict[str, tuple[int, int]]) -> Path:
    """train-rle.csv (with the leading-space column) and DICOMs at dicom-images-train/<study>/<series>/<id>.dcm."""
    root = tmp_path / "siim"
    for k, (image_id, (rows, cols)) in enumerate(images.items()):
        _write_dicom(root / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}" / f"{image_id}.dcm",
                     _gradient(rows, cols).astype(np.uint16) * 16, "MONOCHROME2")  # fmt: skip
    with (root / "train-rle.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", " EncodedPixels"])
        writer.writerows(rows_csv)
    return root


def test_siim_regions_united_empty_and_missing_images(tmp_path: Path) -> None:
    first = np.zeros((6, 4), bool)
    first[0:2, 1] = True
    second = np.zeros((6, 4), bool)
    second[4, 3] = True
    root = _siim_tree(tmp_path, [("a", " " + encode_kaggle_rle(first)), ("a", " " + encode_kaggle_rle(second)),
                                 ("b", " -1"), ("gone", " -1")],
                      {"a": (6, 4), "b": (5, 7)})  # fmt: skip
    data = load_siim(root, WINDOW)
    assert data.ids == ["a", "b"] and data.skipped == {"missing_image": 1}
    assert data.sizes == [(6, 4), (5, 7)]
    assert (data.masks[0]() == (first | second)).all() and not data.masks[1]().any()
    assert tuple(data.loaders[1]().shape) == (1, 5, 7)
    assert list(data.positive) == [True, False]


def test_siim_bad_rle_names_file_line_and_column(tmp_path: Path) -> None:
    root = _siim_tree(tmp_path, [("a", " -1"), ("b", " 3 x")], {"a": (4, 4), "b": (4, 4)})
    with pytest.raises(ValueError, match=r"train-rle.csv:3 column ' EncodedPixels'"):
        load_siim(root, WINDOW)


def test_siim_mask_larger_than_its_image_is_an_error(tmp_path: Path) -> None:
    root = _siim_tree(tmp_path, [("a", " 10 20")], {"a": (4, 4)})
    with pytest.raises(ValueError, match=r"train-rle.csv:2 .*runs past its 4 x 4 image"):
        load_siim(root, WINDOW)


def test_siim_column_without_leading_space_is_named(tmp_path: Path) -> None:
    root = tmp_path / "siim"
    root.mkdir()
    (root / "train-rle.csv").write_text("ImageId,EncodedPixels\na,-1\n")
    with pytest.raises(ValueError, match="' EncodedPixels'"):
        load_siim(root, WINDOW)


# --------------------------------------------------------------------------- RSNA boxes


def test_rsna_boxes_masks_and_box_outside_is_counted(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    for pid in ("p1", "p2"):
        _write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", _gradient(20, 30).astype(np.uint16) * 16,
                     "MONOCHROME2")  # fmt: skip
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np1,2,3,10,5,1\np1,40,2,5,5,1\np2,,,,,0\n")
    data = load_rsna_boxes(root, WINDOW)
    assert data.ids == ["p1", "p2"] and data.skipped == {"box_outside_image": 1}
    assert data.boxes[0].tolist() == [[2.0, 3.0, 12.0, 8.0]] and data.boxes[1].shape == (0, 4)
    mask = data.masks[0]()
    assert mask.shape == (20, 30) and mask.sum() == 50 and mask[3, 2] and not mask[8, 2]


def test_rsna_missing_image_names_the_csv_and_patient(tmp_path: Path) -> None:
    """A labelled patientId without its DICOM is an error naming the CSV, the patientId and the missing path."""
    root = tmp_path / "rsna"
    _write_dicom(root / "stage_2_train_images" / "p1.dcm", _gradient(20, 30).astype(np.uint16) * 16, "MONOCHROME2")
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\np1,2,3,10,5,1\ngone,,,,,0\n")
    with pytest.raises(FileNotFoundError, match=r"stage_2_train_labels.csv: patientId 'gone' has no image .*gone.dcm"):
        load_rsna_boxes(root, WINDOW)


def test_rsna_bad_box_cell_names_line_and_column(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\np1,2,3,ten,5,1\n")
    with pytest.raises(ValueError, match=r"stage_2_train_labels.csv:2 column 'width'"):
        load_rsna_boxes(root, WINDOW)


# --------------------------------------------------------------------------- Object-CXR


def test_object_cxr_parser_on_all_three_types() -> None:
    objects = parse_annotation("0 10 20 30 40;1 5 6 15 26;2 50 60 70 65 55 90")
    assert objects == [(0, [10, 20, 30, 40]), (1, [5, 6, 15, 26]), (2, [50, 60, 70, 90])]
    assert parse_annotation("") == []
    for bad in ("3 1 2 3 4", "0 1 2 3", "2 1 2 3 4", "0 a b c d"):
        with pytest.raises(ValueError, match="object"):
            parse_annotation(bad)


def test_object_cxr_layout_missing_image_and_object_outside(tmp_path: Path) -> None:
    root = tmp_path / "object_cxr"
    (root / "train").mkdir(parents=True)
    Image.fromarray(_gradient(40, 50)).save(root / "train" / "a.jpg")
    Image.fromarray(_gradient(40, 50)).save(root / "train" / "b.jpg")
    (root / "train.csv").write_text('image_name,annotation\na.jpg,0 1 2 11 12;1 100 100 120 120\nb.jpg,\n'
                                    'gone.jpg,0 1 1 3 3\n')  # fmt: skip
    data = load_object_cxr(root, "train")
    assert data.ids == ["a.jpg", "b.jpg"]
    assert data.skipped == {"missing_image": 1, "object_outside_image": 1}
    assert data.boxes[0].tolist() == [[1, 2, 11, 12]] and len(data.boxes[1]) == 0
    (root / "train.csv").write_text("image_name,annotation\na.jpg,0 1 2\n")
    with pytest.raises(ValueError, match=r"train.csv:2 column 'annotation'"):
        load_object_cxr(root, "train")


def test_prepare_refuses_a_mask_whose_size_differs_from_its_image(tmp_path: Path) -> None:
    import torch

    data = DenseImages("t", ["a"], [lambda: torch.zeros(1, 8, 8)], [(8, 8)], masks=[lambda: np.zeros((8, 9), bool)])
    with pytest.raises(ValueError, match=r"mask of a is \(8, 9\), image 8 x 8"):
        prepare(data, 4, with_masks=True, with_boxes=False)


# --------------------------------------------------------------------------- the phantom layouts


def test_phantom_siim_rsna_and_object_cxr_layouts(phantom_root: Path) -> None:
    siim = load_siim(phantom_root / "downstream" / "siim", WINDOW)
    assert len(siim) == 60 and siim.skipped == {"missing_image": 0}
    for i in (0, 1, 2):
        pixels, masks = siim_case(0, i, (256, 320))
        truth = np.zeros(pixels.shape, bool) if not masks else masks[0]
        assert siim.sizes[i] == pixels.shape and (siim.masks[i]() == truth).all()
        assert tuple(siim.loaders[i]().shape) == (1, *pixels.shape)
    assert 0.3 < siim.positive.mean() < 0.9
    rsna = load_rsna_boxes(phantom_root / "downstream" / "rsna", WINDOW)
    assert len(rsna) == 60 and rsna.skipped == {"box_outside_image": 0} and 0.3 < rsna.positive.mean() < 0.9
    for i in (0, 1, 2, 3):
        pixels, _, boxes = rsna_case(0, i, (256, 320))
        assert rsna.sizes[i] == pixels.shape and rsna.boxes[i].tolist() == boxes
        assert (rsna.masks[i]().sum() > 0) == bool(boxes)
    objects = load_object_cxr(phantom_root / "downstream" / "object_cxr", "train")
    dev = load_object_cxr(phantom_root / "downstream" / "object_cxr", "dev")
    assert (len(objects), len(dev)) == (48, 12) and objects.skipped["object_outside_image"] == 0
    kinds = {kind for i in range(60) for kind, _ in object_case(0, i, (256, 320))[1]}
    assert kinds == {0, 1, 2}


def _one_percent_positives(positive: np.ndarray, balance: bool) -> int:
    """Positives in 1 % of the 70 % training split (balanced as SIIM's when ``balance``), floored at 24 images."""
    ids = [str(i) for i in range(len(positive))]
    pool = DenseImages("set", ids, [None] * len(ids), [(1, 1)] * len(ids),
                       boxes=[np.zeros((int(p), 4)) for p in positive])  # fmt: skip
    train = pool.by_ids(partition_ids(ids, [0.7, 0.15, 0.15], 0)[0])
    if balance:
        train = train.by_ids(balanced_ids(train, 0))
    return int(train.by_ids(fraction_ids(train.ids, 0.01, 0, 24)).positive.sum())


@pytest.mark.parametrize("name", ["siim", "rsna"])
def test_default_phantom_sets_hold_eight_positives_at_one_percent(name: str) -> None:
    """The enrichment claim at the default --downstream size (400) and the ablation's (200: the same first images)."""
    from launch.ablation import DOWNSTREAM_IMAGES

    case, share = {"siim": (lambda i: siim_case(0, i, (256, 320))[1], SIIM_POSITIVE),
                   "rsna": (lambda i: rsna_case(0, i, (256, 320))[2], RSNA_POSITIVE)}[name]  # fmt: skip
    positive = np.asarray([bool(case(i)) for i in range(400)])
    assert abs(positive.mean() - share) < 0.1
    for count in (400, DOWNSTREAM_IMAGES):
        assert _one_percent_positives(positive[:count], balance=name == "siim") >= 8, count


def test_rsna_mgca_split_sizes_and_split_files_reused(tmp_path: Path, repo_root: Path) -> None:
    from types import SimpleNamespace

    from pipeline.config import load_config
    from pipeline.eval.config import EvalConfig
    from pipeline.eval.dense_fit import load_dense_splits

    root = tmp_path / "rsna"
    rows = ["patientId,x,y,width,height,Target"]
    for k in range(6):
        _write_dicom(root / "stage_2_train_images" / f"p{k}.dcm", _gradient(8, 8).astype(np.uint16), "MONOCHROME2")
        rows.append(f"p{k},1,1,3,3,1" if k % 2 else f"p{k},,,,,0")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(EvalConfig, repo_root / "configs/eval/detection.yaml", [
        "checkpoint=x", f"data.rsna.root={root}", "data.rsna.dense_split=mgca", "data.rsna.mgca_split_sizes=[1, 2]",
        f"dense.split_dir={tmp_path / 'splits'}"])  # fmt: skip
    splits = load_dense_splits(SimpleNamespace(cfg=cfg, dicom_window=lambda: WINDOW), "rsna")
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (3, 1, 2)
    assert not set(splits.train.ids) & set(splits.test.ids)
    assert (splits.folder / "test.txt").read_text().split() == splits.test.ids
    assert load_dense_splits(SimpleNamespace(cfg=cfg, dicom_window=lambda: WINDOW), "rsna").test.ids == splits.test.ids
    cfg.data.rsna.mgca_split_sizes = (3, 3)
    with pytest.raises(ValueError, match="leave no training images"):
        load_dense_splits(SimpleNamespace(cfg=cfg, dicom_window=lambda: WINDOW), "rsna")
