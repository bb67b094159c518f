"""The phantom cohort: patients, studies, MIMIC-shaped ids, patient-disjoint splits, shifted dates.

Everything here depends only on (seed, number of studies, split fractions), never on workers.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

import numpy as np

SPLIT_NAMES = ("train", "validate", "test")
MEAN_STUDIES_PER_PATIENT = 2.5
EPOCH = datetime.date(2110, 1, 1)  # MIMIC shifts dates into the 22nd century


@dataclass(frozen=True)
class StudyPlan:
    """Who and when one study is: ids, split and demographics, fixed before any image is drawn."""

    index: int
    subject_id: int
    study_id: int
    split: str
    patient_index: int
    study_in_patient: int
    sex: str
    age: int
    study_date: int
    study_time: str


def stable_digest(*parts: object) -> bytes:
    """A SHA-256 digest of the parts' text; the one source of every derived id and UID."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def make_dicom_id(seed: int, study_index: int, image_index: int) -> str:
    """A MIMIC-shaped dicom_id: five groups of eight lowercase hex digits joined by '-'."""
    hexed = stable_digest("dicom_id", seed, study_index, image_index).hex()[:40]
    return "-".join(hexed[i : i + 8] for i in range(0, 40, 8))


def make_uid(*parts: object) -> str:
    """A DICOM UID under the UUID-derived root ``2.25`` (at most 44 characters), fixed by ``parts``."""
    return "2.25." + str(int.from_bytes(stable_digest("uid", *parts)[:16], "big"))


def _unique_ids(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers in [low, high) in random order."""
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        for value in rng.integers(low, high, size=count - len(chosen)).tolist():
            chosen.setdefault(int(value), None)
    return list(chosen)


def split_counts(num_patients: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Patients per split; a split with a positive fraction gets at least one patient when there are enough."""
    total = sum(fractions)
    if len(fractions) != 3 or total <= 0 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers with a positive sum, got {fractions}")
    shares = [f / total for f in fractions]
    val = round(num_patients * shares[1])
    test = round(num_patients * shares[2])
    if num_patients >= 3:
        val = max(val, 1 if shares[1] > 0 else 0)
        test = max(test, 1 if shares[2] > 0 else 0)
    train = num_patients - val - test
    if train < 1 and shares[0] > 0:
        raise ValueError(f"{num_patients} patients are too few for split fractions {fractions}")
    return train, val, test


def plan_cohort(studies: int, seed: int, split_fractions: tuple[float, float, float]) -> list[StudyPlan]:
    """Assign ``studies`` studies to patients, ids, splits (patient-disjoint) and chronological dates."""
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    rng = np.random.default_rng([seed, 0x5157A])
    num_patients = max(1, min(studies, round(studies / MEAN_STUDIES_PER_PATIENT)))
    weights = rng.exponential(size=num_patients)
    per_patient = 1 + rng.multinomial(studies - num_patients, weights / weights.sum())
    subject_ids = _unique_ids(rng, num_patients, 10_000_000, 20_000_000)
    study_ids = _unique_ids(rng, studies, 50_000_000, 60_000_000)
    n_train, n_val, _ = split_counts(num_patients, split_fractions)
    order = rng.permutation(num_patients)
    patient_split = {}
    for rank, patient in enumerate(order.tolist()):
        patient_split[patient] = "train" if rank < n_train else "validate" if rank < n_train + n_val else "test"
    plans: list[StudyPlan] = []
    for patient in range(num_patients):
        sex = "F" if rng.random() < 0.5 else "M"
        first_age = int(rng.integers(18, 90))
        first_day = day = int(rng.integers(0, 80 * 365))  # days after EPOCH
        for k in range(int(per_patient[patient])):
            day += int(rng.integers(1, 400)) if k else 0
            date = EPOCH + datetime.timedelta(days=day)
            seconds = int(rng.integers(0, 86_400_000))
            hh, mm, ss, ms = seconds // 3_600_000, seconds // 60_000 % 60, seconds // 1000 % 60, seconds % 1000
            plans.append(
                StudyPlan(
                    index=len(plans),
                    subject_id=subject_ids[patient],
                    study_id=study_ids[len(plans)],
                    split=patient_split[patient],
                    patient_index=patient,
                    study_in_patient=k,
                    sex=sex,
                    age=min(first_age + (day - first_day) // 365, 95),
                    study_date=date.year * 10000 + date.month * 100 + date.day,
                    study_time=f"{hh:02d}{mm:02d}{ss:02d}.{ms:03d}",
                )
            )
    return plans
