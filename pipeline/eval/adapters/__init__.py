"""Data-set adapters: each reads one data set's own published layout into :class:`LabelledImages`."""

from pipeline.eval.adapters.base import GroundingPhrase, GroundingSet, LabelledImages, read_image_file
from pipeline.eval.adapters.chexpert import load_chexpert
from pipeline.eval.adapters.covidx import load_covidx
from pipeline.eval.adapters.dicom import read_dicom
from pipeline.eval.adapters.grounding_sets import load_ms_cxr, load_phantom_grounding
from pipeline.eval.adapters.rsna import load_rsna
from pipeline.eval.adapters.shards import load_shard_split
from pipeline.shard_format.coco_rle import decode_rle

__all__ = [
    "GroundingPhrase",
    "GroundingSet",
    "LabelledImages",
    "decode_rle",
    "load_chexpert",
    "load_covidx",
    "load_ms_cxr",
    "load_phantom_grounding",
    "load_rsna",
    "load_shard_split",
    "read_dicom",
    "read_image_file",
]
