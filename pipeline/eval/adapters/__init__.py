"""Data-set adapters: each reads one data set's own published layout into :class:`LabelledImages`."""

from pipeline.eval.adapters.base import GroundingPhrase, GroundingSet, LabelledImages, read_image_file
from pipeline.eval.adapters.chexpert import load_chexpert
from pipeline.eval.adapters.covidx import load_covidx
from pipeline.eval.adapters.dense import DenseImages
from pipeline.eval.adapters.dicom import read_dicom
from pipeline.eval.adapters.grounding_sets import decode_rle, load_ms_cxr, load_phantom_grounding
from pipeline.eval.adapters.object_cxr import load_object_cxr, parse_annotation
from pipeline.eval.adapters.rsna import load_rsna, load_rsna_boxes
from pipeline.eval.adapters.shards import load_shard_split
from pipeline.eval.adapters.siim import load_siim

__all__ = [
    "DenseImages",
    "GroundingPhrase",
    "GroundingSet",
    "LabelledImages",
    "decode_rle",
    "load_chexpert",
    "load_covidx",
    "load_ms_cxr",
    "load_object_cxr",
    "load_phantom_grounding",
    "load_rsna",
    "load_rsna_boxes",
    "load_shard_split",
    "load_siim",
    "parse_annotation",
    "read_dicom",
    "read_image_file",
]
