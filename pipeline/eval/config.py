"""EvalConfig: the schema of ``configs/eval/*.yaml`` (defaults live in configs/eval/base.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pipeline.data.transforms import TransformConfig

TaskName = Literal["zero_shot", "retrieval", "linear_probe", "grounding"]


@dataclass
class BootstrapConfig:
    """Percentile bootstrap over evaluation samples: ``n_boot`` resamples with a fixed seed."""

    n_boot: int
    seed: int
    level: float  # 0.95 for 95 % intervals


@dataclass
class EvalTrackingConfig:
    """MLflow: a new run tagged with (and nested under) the pre-training run, or that run itself."""

    enabled: bool
    experiment: str
    same_run: bool  # log into the pre-training run instead of a new linked run
    uri: Optional[str] = None  # None: MLFLOW_TRACKING_URI, else the training run's sqlite store
    pretrain_run_id: Optional[str] = None  # None: read from the training run folder when it is there


@dataclass
class ShardDataConfig:
    """The project's shards (MIMIC-CXR or phantom): zero-shot, retrieval, grounding images and the probe."""

    name: str  # printed beside every number measured on these shards ("phantom" or "MIMIC-CXR")
    train_split: str
    valid_split: str
    test_split: str
    uncertain: Literal["ones", "zeros", "ignore"]
    labels: list[str]  # labels scored by zero-shot classification and the linear probe
    root: Optional[str] = None  # the folder holding manifest.json
    manifest: Optional[str] = None  # instead of root: the manifest's path or a pipe: command that prints it
    shard_root: Optional[str] = None  # as training's data.shard_root: a folder, or a template with {path}
    cache_dir: Optional[str] = None  # local copies of pipe: shards; None: $SISTA_SHARD_CACHE, else ~/.cache/sista/shards


@dataclass
class ChexpertDataConfig:
    """CheXpert: train.csv (probe training pool, a validation part carved out) and valid.csv (test)."""

    labels: list[str]
    uncertain: Literal["ones", "zeros"]
    frontal_only: bool
    valid_fraction: float
    root: Optional[str] = None


@dataclass
class RsnaDataConfig:
    """RSNA Pneumonia: the labelled pool split into train / valid / test fractions (split files)."""

    split_fractions: list[float]
    root: Optional[str] = None


@dataclass
class CovidxDataConfig:
    """COVIDx: train.txt (a validation part carved out) and test.txt; class names in a fixed order."""

    classes: list[str]
    valid_fraction: float
    root: Optional[str] = None


@dataclass
class MsCxrDataConfig:
    """MS-CXR boxes over MIMIC-CXR-JPG images (the real-data grounding set)."""

    csv: Optional[str] = None
    jpg_root: Optional[str] = None


@dataclass
class EvalDataConfig:
    """Where each evaluation data set is; a task that needs an unset one stops with a message."""

    shards: ShardDataConfig
    chexpert: ChexpertDataConfig
    rsna: RsnaDataConfig
    covidx: CovidxDataConfig
    ms_cxr: MsCxrDataConfig
    phantom_annotations: Optional[str] = None  # phantom_annotations.json of the phantom tree


@dataclass
class ZeroShotConfig:
    """CheXzero-style prompt pairs (YAML) scored on ``data.shards.labels``."""

    prompts: str


@dataclass
class RetrievalConfig:
    """Recall@K cut-offs."""

    ks: list[int]


@dataclass
class LinearProbeConfig:
    """Logistic regression on frozen image features at several label fractions."""

    datasets: list[Literal["shards", "chexpert", "rsna", "covidx"]]
    fractions: list[float]
    seed: int
    min_train: int  # at least this many training images at small fractions of a small set
    weight_decays: list[float]  # L2 strengths tried; the best on the validation split is kept
    max_iter: int  # L-BFGS iterations
    feature: Literal["backbone", "projected"]  # the trunk's pooled feature or the SIA embedding
    split_dir: str  # split files: written on first use, reused afterwards


@dataclass
class GroundingConfig:
    """Patch–word grounding: STA weights of each finding phrase over its image."""

    source: Literal["phantom", "ms_cxr"]
    statuses: list[str]  # phantom findings to ground: present and/or uncertain
    iou_threshold: float  # a heat map (min–max normalised) >= this is the predicted region
    figure_phrases: int  # rows in the figure grid
    sta_threshold: Optional[float] = None  # σ of the alignment weights; None = 1/P as in training


@dataclass
class EvalConfig:
    """Everything ``python -m pipeline.evaluate`` needs."""

    checkpoint: str  # a SistaModel.export folder (the trainer writes <run dir>/export)
    tasks: list[TaskName]
    device: Literal["auto", "cpu", "cuda"]
    batch_size: int
    num_workers: int
    bootstrap: BootstrapConfig
    tracking: EvalTrackingConfig
    data: EvalDataConfig
    zero_shot: ZeroShotConfig
    retrieval: RetrievalConfig
    linear_probe: LinearProbeConfig
    grounding: GroundingConfig
    output_dir: Optional[str] = None  # None: <checkpoint>/../eval/<config name>
    transform: Optional[TransformConfig] = None  # None: data.transform of the training run's config.yaml
