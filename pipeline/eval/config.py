"""EvalConfig: the schema of ``configs/eval/*.yaml`` (defaults live in configs/eval/base.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pipeline.config import require_in_range
from pipeline.data.transforms import TransformConfig

TaskName = Literal["zero_shot", "retrieval", "linear_probe", "grounding", "segmentation", "detection"]


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
    split_files: Optional[str] = None  # folder of committed split files (BenchX layout); None: seeded files


@dataclass
class RsnaDataConfig:
    """RSNA Pneumonia: the labelled pool split into train / valid / test fractions (split files)."""

    split_fractions: list[float]
    dense_split: Literal["fractions", "mgca"]  # segmentation/detection: these fractions or MGCA's fixed counts
    mgca_split_sizes: tuple[int, int]  # MGCA's RSNA validation / test sizes (the rest trains)
    root: Optional[str] = None
    split_files: Optional[str] = None  # folder of committed split files (BenchX layout); None: seeded files


@dataclass
class SiimDataConfig:
    """SIIM-ACR Pneumothorax: train-rle.csv's pool split into train / valid / test fractions (split files)."""

    split_fractions: list[float]
    balance_train: bool  # MGCA: as many negative as positive training images
    root: Optional[str] = None


@dataclass
class ObjectCxrDataConfig:
    """Object-CXR: train.csv (a validation part carved out) and dev.csv (the test set, as in MGCA)."""

    valid_fraction: float
    root: Optional[str] = None


@dataclass
class CovidxDataConfig:
    """COVIDx: train.txt (a validation part carved out) and test.txt; class names in a fixed order."""

    classes: list[str]
    valid_fraction: float
    root: Optional[str] = None
    split_files: Optional[str] = None  # folder of committed split files (BenchX layout); None: seeded files


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
    siim: SiimDataConfig
    object_cxr: ObjectCxrDataConfig
    phantom_annotations: Optional[str] = None  # phantom_annotations.json of the phantom tree (grounding, findings geometry)


@dataclass
class ZeroShotConfig:
    """CheXzero-style prompt pairs (YAML) scored on ``data.shards.labels``."""

    prompts: str


@dataclass
class RetrievalConfig:
    """Recall@K cut-offs."""

    ks: list[int]


@dataclass
class MgcaProbeConfig:
    """MGCA's linear probe: a linear layer trained with AdamW on the frozen encoder, early stopping on valid loss."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    batch_size: int
    max_epochs: int
    patience: int  # stop after this many epochs without a validation loss lower than the best by min_delta
    min_delta: float
    dropout: float  # before the linear layer
    random_crop: bool  # train: random image_size crop of the resize_size image (else the eval centre crop)
    hflip: float  # train: horizontal flip probability
    jitter: float  # train: brightness and contrast factors drawn from [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0, "batch_size": self.batch_size >= 1,
            "max_epochs": self.max_epochs >= 1, "patience": self.patience >= 1, "min_delta": self.min_delta >= 0,
            "dropout": 0 <= self.dropout < 1, "hflip": 0 <= self.hflip <= 1, "jitter": 0 <= self.jitter < 1,
            "betas": all(0 <= b < 1 for b in self.betas),
        }
        require_in_range("linear_probe.mgca", self, checks)

    @property
    def augments(self) -> bool:
        """Whether training images are augmented (else their features are computed once and cached)."""
        return self.random_crop or self.hflip > 0 or self.jitter > 0


@dataclass
class LinearProbeConfig:
    """A linear classifier on frozen image features at several label fractions (two protocols)."""

    datasets: list[Literal["shards", "chexpert", "rsna", "covidx"]]
    fractions: list[float]
    seed: int
    min_train: int  # at least this many training images at small fractions of a small set
    protocol: Literal["clip", "mgca"]  # clip: L-BFGS on cached features, L2 picked on valid; mgca: see mgca
    weight_decays: list[float]  # clip: L2 strengths tried; the best on the validation split is kept
    max_iter: int  # clip: L-BFGS iterations
    mgca: MgcaProbeConfig
    feature: Literal["backbone", "projected"]  # the trunk's pooled feature or the SIA embedding
    split_dir: str  # split files: written on first use, reused afterwards

    def __post_init__(self) -> None:
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"linear_probe.fractions must be in (0, 1], got {bad}")


@dataclass
class GroundingConfig:
    """Patch–word grounding: STA weights of each finding phrase over its image."""

    source: Literal["phantom", "ms_cxr"]
    statuses: list[str]  # phantom findings to ground: present and/or uncertain
    iou_threshold: float  # a heat map (min–max normalised) >= this is the predicted region
    figure_phrases: int  # rows in the figure grid
    sta_threshold: Optional[float] = None  # σ of the alignment weights; None = 1/P as in training


@dataclass
class DenseTrainConfig:
    """How a segmentation/detection head learns on the frozen encoder (MGCA's defaults in configs/eval/base.yaml)."""

    fractions: list[float]
    seed: int
    min_train: int  # at least this many training images at small fractions of a small set
    split_dir: str  # split files: written on first use, reused afterwards
    epochs: int
    min_steps: int  # at least this many optimizer steps (more epochs for a small fraction); 0: epochs alone (MGCA)
    patience: int  # early stopping: epochs without a lower validation loss
    batch_size: int
    learning_rate: float  # AdamW
    weight_decay: float
    augment: bool  # MGCA: a random affine per step, features recomputed; false: features computed once and cached
    rotate_degrees: float  # augmentation: rotation drawn from [-r, r]
    translate: float  # augmentation: shift, fraction of the side
    scale: tuple[float, float]  # augmentation: zoom range
    figure_images: int  # rows of the image | truth | prediction figure
    image_size: Optional[int] = None  # square input side; None: the pre-training transform's image_size

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "min_steps": self.min_steps >= 0, "patience": self.patience >= 1,
                  "batch_size": self.batch_size >= 1, "min_train": self.min_train >= 1}
        require_in_range("dense", self, checks)


@dataclass
class SegmentationConfig:
    """Frozen encoder + a decoder (SETR for ViTs, U-Net for CNNs): Dice at each label fraction."""

    datasets: list[Literal["siim", "rsna", "object_cxr"]]
    threshold: float  # probability >= this is foreground
    focal_alpha: float  # MGCA's MixedLoss: alpha x focal - log(soft Dice)
    setr_channels: list[int]  # ViT decoder widths, one 2x upsampling block each (MGCA: 512/256/128/64)


@dataclass
class DetectionConfig:
    """Frozen encoder + a YOLOv3-style head (ViTs through a simple feature pyramid): mAP at each label fraction."""

    datasets: list[Literal["rsna", "object_cxr"]]
    confidence: float  # a box is kept when its objectness >= this (MGCA's non_max_suppression)
    nms_iou: float
    iou_thresholds: list[float]  # mAP averaged over these IoUs
    n_boot: int  # bootstrap resamples of the mAP (each one a full mAP computation)
    objectness_prior: Optional[float]  # None: PyTorch's default bias init (MGCA); p: objectness bias = logit(p)

    def __post_init__(self) -> None:
        if self.objectness_prior is not None and not 0.0 < self.objectness_prior < 1.0:
            raise ValueError(f"detection.objectness_prior must be in (0, 1) or null, got {self.objectness_prior}")


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
    dense: DenseTrainConfig  # how segmentation and detection heads learn
    segmentation: SegmentationConfig
    detection: DetectionConfig
    output_dir: Optional[str] = None  # None: <checkpoint>/../eval/<config name>
    transform: Optional[TransformConfig] = None  # None: data.transform of the training run's config.yaml
