"""Dice/IoU on hand cases, mAP against torchmetrics on a hand case, the YOLO head's assignment and decoding, the heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval import metrics
from pipeline.eval.detection import Detector, mean_average_precision
from pipeline.eval.segmentation import dice_summary, mixed_loss
from pipeline.eval.yolo import YoloHead, anchors, decode, yolo_loss

IOUS = [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def test_dice_and_iou_hand_cases() -> None:
    truth = np.zeros((4, 2, 4), bool)
    pred = np.zeros((4, 2, 4), bool)
    truth[0, 0, :2] = True  # 2 true pixels, 1 predicted of them plus 1 extra: Dice 2*1/(2+2) = 0.5, IoU 1/3
    pred[0, 0, 1:3] = True
    truth[1, 1, :] = pred[1, 1, :] = True  # perfect: 1, 1
    # image 2: both empty -> 1 (MGCA), image 3: truth only -> 0
    truth[3, 0, 0] = True
    assert metrics.dice(pred, truth).tolist() == [0.5, 1.0, 1.0, 0.0]
    assert np.allclose(metrics.iou(pred, truth), [1 / 3, 1.0, 1.0, 0.0])
    summary = dice_summary(metrics.dice(pred, truth), truth.any(axis=(1, 2)), metrics.iou(pred, truth), 50, 0, 0.95)
    assert summary["dice"] == pytest.approx(0.625)
    assert summary["dice_positive"] == pytest.approx(0.5)  # images 0, 1, 3
    assert summary["dice_ci"][0] <= 0.625 <= summary["dice_ci"][1]


def test_mixed_loss_matches_a_float64_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64)
    masks = torch.rand(2, 3, 3, generator=gen) < 0.4
    focal, inter, total = 0.0, 0.0, 0.0
    for p_logit, y in zip(logits.flatten().tolist(), masks.flatten().float().tolist()):
        p = 1 / (1 + np.exp(-p_logit))
        p_true = p if y else 1 - p
        focal += (1 - p_true) ** 2 * -np.log(p_true)
        inter, total = inter + p * y, total + p + y
    expected = 10 * focal / 18 - np.log((2 * inter + 1) / (total + 1))
    assert float(mixed_loss(logits, masks, 10.0)) == pytest.approx(expected, rel=1e-9)


def test_map_of_a_hand_case_matches_the_library() -> None:
    from torchmetrics.detection import MeanAveragePrecision

    truth = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[20.0, 20.0, 40.0, 40.0]])]
    predicted = [(torch.tensor([[0.0, 0.0, 10.0, 6.0]]), torch.tensor([0.9])),  # IoU 0.6: a hit at 5 of 8 thresholds
                 (torch.tensor([[20.0, 20.0, 40.0, 40.0], [0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.8, 0.7]))]  # fmt: skip
    value = mean_average_precision(predicted, truth, IOUS)
    library = MeanAveragePrecision(iou_thresholds=IOUS)
    library.update([{"boxes": b, "scores": s, "labels": torch.zeros(len(b), dtype=torch.long)} for b, s in predicted],
                   [{"boxes": t, "labels": torch.zeros(1, dtype=torch.long)} for t in truth])  # fmt: skip
    assert value == pytest.approx(float(library.compute()["map"]))
    # by hand: ranked 0.9 (IoU 0.6), 0.8 (IoU 1), 0.7 (IoU 0.25). At IoU <= 0.6 the first two are hits: AP 1.
    # Above, 0.9 is a miss, so recall stops at 0.5 with precision 0.5: COCO's 101-point AP = 51 x 0.5 / 101.
    assert value == pytest.approx((5 * 1.0 + 3 * 51 * 0.5 / 101) / 8, abs=1e-6)


def _perfect_outputs(boxes: list[torch.Tensor], size: int, strides: tuple[int, ...]) -> list[torch.Tensor]:
    """YOLO outputs (one level per stride) that encode ``boxes`` exactly at their assigned anchors (-20 elsewhere).

    The class logit is low (-2): as in MGCA, objectness alone gates and ranks a box.
    """
    prior = anchors(size)
    out = [torch.full((len(boxes), 3, size // s, size // s, 6), -20.0) for s in strides]
    for image, image_boxes in enumerate(boxes):  # a reference written as a loop over boxes
        for x1, y1, x2, y2 in image_boxes.tolist():
            w, h = x2 - x1, y2 - y1
            ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in prior.tolist()]
            best = int(np.argmax(ious))
            level, a, stride = best // 3, best % 3, strides[best // 3]
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            gx, gy = int(cx), int(cy)
            logit = lambda v: float(np.log(v / (1 - v)))  # noqa: E731
            out[level][image, a, gy, gx] = torch.tensor([logit(cx - gx), logit(cy - gy), np.log(w / prior[best, 0]),
                                                         np.log(h / prior[best, 1]), 20.0, -2.0])  # fmt: skip
    return out


@pytest.mark.parametrize("strides", [(8, 16, 32), (8, 16, 16)])  # plain; a ResNet at output stride 16
def test_yolo_decode_recovers_encoded_boxes_and_their_loss_is_low(strides: tuple[int, ...]) -> None:
    size = 64
    boxes = [torch.tensor([[4.0, 6.0, 20.0, 30.0], [30.0, 30.0, 62.0, 50.0]]), torch.zeros(0, 4),
             torch.tensor([[10.0, 10.0, 14.0, 15.0]])]  # fmt: skip
    outputs = _perfect_outputs(boxes, size, strides)
    decoded = decode(outputs, size, confidence=0.5, nms_iou=0.5)
    for (got, scores), want in zip(decoded, boxes):
        assert got.shape == want.shape
        order = torch.argsort(got[:, 0])
        assert torch.allclose(got[order], want[torch.argsort(want[:, 0])], atol=1e-3)
        assert (scores > 0.99).all()
    perfect = float(yolo_loss(outputs, boxes, size))
    shifted = [o.clone() for o in outputs]
    for o in shifted:
        o[..., 2] += 1.0  # every log-width off by one: the squared error adds 1 per box
    # the offset BCE of a perfect output is the targets' own entropy; 3 boxes over 3 images add 3 / 3
    assert float(yolo_loss(shifted, boxes, size)) == pytest.approx(perfect + 1.0, abs=1e-4)


def test_yolo_head_learns_one_box_on_fixed_maps() -> None:
    torch.manual_seed(0)
    size = 64
    maps = [torch.randn(4, 8, size // 16, size // 16)]
    from pipeline.eval.dense_heads import SimpleFeaturePyramid

    model = Detector(SimpleFeaturePyramid(8, 16), width=32)
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]])] * 4
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(80):
        loss = yolo_loss(model(maps), boxes, size)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = decode(model(maps), size, 0.5, 0.5)
    assert mean_average_precision(predicted, boxes, IOUS) > 0.5


def test_objectness_prior_sets_every_cell_at_init_and_is_checked() -> None:
    head = YoloHead([4, 4, 4], objectness_prior=0.01).eval()
    outputs = head([torch.zeros(1, 4, n, n) for n in (8, 4, 4)])  # zero maps: each output is its bias
    for out in outputs:
        assert torch.allclose(out[..., 4].sigmoid(), torch.full_like(out[..., 4], 0.01))
        assert torch.allclose(out[..., :4], torch.zeros_like(out[..., :4]), atol=0.2)  # the rest keeps its init
    with pytest.raises(ValueError, match="objectness_prior"):
        YoloHead([4], objectness_prior=1.0)


def test_min_steps_adds_epochs_only_to_small_training_sets() -> None:
    from types import SimpleNamespace

    from pipeline.eval.dense_fit import max_epochs

    budget = SimpleNamespace(epochs=1, min_steps=60, batch_size=16)
    assert max_epochs(budget, 24) == 30  # 2 steps an epoch
    assert max_epochs(budget, 112) == 9  # 7 steps an epoch: 63 steps
    assert max_epochs(budget, 2000) == 1
    assert max_epochs(SimpleNamespace(epochs=50, min_steps=0, batch_size=16), 24) == 50  # MGCA: epochs alone


def test_heads_output_the_input_size() -> None:
    from pipeline.eval.dense_heads import SetrDecoder, UnetHead

    assert tuple(SetrDecoder(8)([torch.randn(2, 8, 4, 4)], (64, 64)).shape) == (2, 1, 64, 64)
    pyramid = [torch.randn(2, c, 32 // 2**k, 32 // 2**k) for k, c in enumerate((4, 6, 8, 10, 12))]
    assert tuple(UnetHead(1, [4, 6, 8, 10, 12])(pyramid, (64, 64)).shape) == (2, 1, 64, 64)
    assert [tuple(o.shape) for o in YoloHead([4, 4, 4])([torch.randn(1, 4, n, n) for n in (8, 4, 2)])] == [
        (1, 3, 8, 8, 6), (1, 3, 4, 4, 6), (1, 3, 2, 2, 6)]  # fmt: skip


@pytest.mark.parametrize("trunk", ["test_vit", "resnet10t"])
def test_heads_on_a_frozen_timm_trunk(trunk: str) -> None:
    """ViT: SETR on the token map and the simple pyramid; CNN: the U-Net over its stages and its last three stages."""
    from pipeline.eval.dense_heads import build_detection_neck, build_segmentation_head, encoder_maps
    from pipeline.models import ImageEncoderConfig
    from pipeline.models.image_encoder import ImageEncoder

    encoder = ImageEncoder(ImageEncoderConfig(trunk, 1, 64 if trunk == "test_vit" else None, "none")).eval()
    maps = encoder_maps(encoder, torch.randn(2, 1, 64, 64))
    head = build_segmentation_head(encoder, (16, 8, 8, 8))
    assert tuple(head(maps, (64, 64)).shape) == (2, 1, 64, 64)
    outputs = Detector(build_detection_neck(encoder), width=8)(maps)
    assert [tuple(o.shape[2:4]) for o in outputs] == [(8, 8), (4, 4), (2, 2)]
