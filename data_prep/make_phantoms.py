"""Write a phantom MIMIC-CXR data set: synthetic radiographs and reports whose ground truth is known.

    python data_prep/make_phantoms.py --out DIR --studies N --seed S [--jpg] [--workers K]
        [--image-size-range 384,640] [--split-fractions 0.98,0.01,0.01] [--downstream [--downstream-images 400]]
        [--report-voices N [--finding-sets K]]

Layout and contents follow docs/phantoms.md (MIMIC-CXR v2.0.0 folders and CSVs, DICOM in several
encodings, optional MIMIC-CXR-JPG mirror, ``phantom_annotations.json``, optional CheXpert layout, and
SIIM / RSNA / Object-CXR segmentation and detection sets of new chests). The same seed and arguments give byte-identical output whatever ``--workers`` is.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import multiprocessing
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

from data_prep.phantom.cohort import plan_cohort
from data_prep.phantom.dense_sets import write_dense_sets
from data_prep.phantom.study import Settings, StudyRecord, write_study
from data_prep.phantom.tables import (
    CSV_NAMES,
    write_annotations,
    write_chexpert_downstream,
    write_mimic_tables,
)

log = logging.getLogger("sista.phantoms")
ANNOTATIONS = "phantom_annotations.json"
OUTPUTS = ("files", "jpg", "downstream", ANNOTATIONS, *CSV_NAMES.values())


def _prepare_out_dir(out: Path) -> None:
    """Create ``out``; an earlier phantom set there is replaced, any other non-empty folder is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / ANNOTATIONS).is_file():
            raise FileExistsError(f"{out} is not empty and holds no phantom set ({ANNOTATIONS}); choose another --out")
        log.info("replacing the phantom set in %s", out)
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def make_phantoms(
    out_dir: str | os.PathLike[str],
    studies: int,
    seed: int,
    *,
    jpg: bool = False,
    workers: int = 1,
    image_size_range: tuple[int, int] = (384, 640),
    split_fractions: tuple[float, float, float] = (0.98, 0.01, 0.01),
    downstream: bool = False,
    downstream_images: int = 400,
    report_voices: int = 0,
    finding_sets: int = 0,
) -> Path:
    """Write ``studies`` phantom studies into ``out_dir`` (MIMIC-CXR layout) and return the folder."""
    lo, hi = (int(v) for v in image_size_range)
    if not 64 <= lo <= hi:
        raise ValueError(f"image_size_range must be two sizes 64 <= lo <= hi, got {image_size_range}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if report_voices < 0 or finding_sets < 0 or (finding_sets and not report_voices):
        raise ValueError(f"report_voices must be >= 0 and finding_sets >= 0 (and needs report_voices), "
                         f"got {report_voices}, {finding_sets}")
    out = Path(out_dir)
    plans = plan_cohort(studies, seed, tuple(split_fractions))
    _prepare_out_dir(out)
    settings = Settings(str(out), int(seed), bool(jpg), (lo, hi), bool(downstream), int(report_voices),
                        int(finding_sets))
    work = partial(write_study, settings)
    start = time.perf_counter()
    bar = tqdm(total=len(plans), desc="phantom studies", unit="study", disable=None if not os.environ.get("CI") else True)
    records: list[StudyRecord] = []
    if workers == 1:
        for plan in plans:
            records.append(work(plan))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for record in pool.imap(work, plans, chunksize=max(1, min(8, len(plans) // (4 * workers)))):
                records.append(record)
                bar.update()
    bar.close()

    metadata = [row for record in records for row in record.metadata]
    splits = {plan.study_id: plan.split for plan in plans}
    labels = {(plan.subject_id, plan.study_id): record.labels for plan, record in zip(plans, records)}
    write_mimic_tables(out, metadata, splits, labels)
    if jpg:
        write_mimic_tables(out / "jpg", metadata, splits, labels)
    images = {dicom_id: ann for record in records for dicom_id, ann in record.annotations.items()}
    generator = {"studies": len(plans), "seed": settings.seed, "image_size_range": [lo, hi],
                 "split_fractions": [float(f) for f in split_fractions], "jpg": settings.jpg,
                 "downstream": settings.downstream}  # fmt: skip
    if report_voices:  # recorded only when used, so the default annotation file keeps its bytes
        generator.update(report_voices=settings.report_voices, finding_sets=settings.finding_sets)
    study_labels = {plan.study_id: record.labels for plan, record in zip(plans, records)}
    write_annotations(out / ANNOTATIONS, images, study_labels, generator)
    if downstream:
        write_chexpert_downstream(out / "downstream" / "chexpert", [r for rec in records for r in rec.chexpert_rows])
        write_dense_sets(out / "downstream", settings.seed, downstream_images, (lo, hi))  # SIIM, RSNA, Object-CXR
    seconds = time.perf_counter() - start
    log.info("wrote %d phantom studies (%d images) to %s in %.1f s (%.1f studies/s)",
             len(plans), len(metadata), out, seconds, len(plans) / max(seconds, 1e-9))  # fmt: skip
    return out


def _pair(text: str, kind: type, count: int) -> tuple:
    """Parse "a,b[,c]" into a tuple of ``count`` numbers."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}") from err
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line; optional defaults are read from :func:`make_phantoms`'s signature."""
    defaults = {k: p.default for k, p in inspect.signature(make_phantoms).parameters.items()}
    parser = argparse.ArgumentParser(
        prog="sista-make-phantoms",
        description="Write a phantom MIMIC-CXR data set (synthetic images + reports with known ground truth).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; a previous phantom set is replaced)")
    parser.add_argument("--studies", required=True, type=int, help="number of studies")
    parser.add_argument("--seed", required=True, type=int, help="random seed (same seed + args = same bytes)")
    parser.add_argument("--jpg", action="store_true", help="also write the MIMIC-CXR-JPG mirror under OUT/jpg")
    parser.add_argument("--workers", type=int, default=defaults["workers"], help="processes (default: %(default)s)")
    parser.add_argument("--image-size-range", type=lambda t: _pair(t, int, 2), default=defaults["image_size_range"],
                        metavar="LO,HI", help="rows and columns are drawn in [LO, HI] (default: %(default)s)")  # fmt: skip
    parser.add_argument("--split-fractions", type=lambda t: _pair(t, float, 3), default=defaults["split_fractions"],
                        metavar="TRAIN,VAL,TEST", help="patient fractions (default: %(default)s)")  # fmt: skip
    parser.add_argument("--downstream", action="store_true",
                        help="also write CheXpert-, RSNA-, SIIM- and Object-CXR-style layouts")  # fmt: skip
    parser.add_argument("--downstream-images", type=int, default=defaults["downstream_images"],
                        help="images of each SIIM / Object-CXR set (default: %(default)s)")  # fmt: skip
    parser.add_argument("--report-voices", type=int, default=defaults["report_voices"], metavar="N",
                        help="write each report in one of N radiologist voices (0: default words; %(default)s)")
    parser.add_argument("--finding-sets", type=int, default=defaults["finding_sets"], metavar="K",
                        help="with voices: abnormal studies draw one of K fixed finding sets (0: fresh; %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``sista-make-phantoms``."""
    from pipeline.logging_setup import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    make_phantoms(args.out, args.studies, args.seed, jpg=args.jpg, workers=args.workers,
                  image_size_range=args.image_size_range, split_fractions=args.split_fractions,
                  downstream=args.downstream, downstream_images=args.downstream_images,
                  report_voices=args.report_voices, finding_sets=args.finding_sets)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
