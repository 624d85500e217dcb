"""torchvision's fasterrcnn_mobilenet_v3_large_320_fpn, random weights, one 192×192 image
(resized to 320 inside), a dynamic number of detections.

    python -m dynexport examples/torchvision_detectors/fasterrcnn.py   # with torchvision, see
                                                                       # _detectors.py

The region proposal network and the box head both call `torchvision.ops.boxes.batched_nms`
and `BoxCoder.decode`, and the box head pools its proposals with `_multiscale_roi_align`: three
of dynexport's known-library patches replace them during capture (docs/patches.md). With
random weights every class scores ~1/91 on near-constant features: the backbone's batch norms
are measured on random batches and the class scores spread (normal weights, std 0.5), so that
a score threshold keeps a different number of boxes per image.
"""

import torch
from _detectors import Detections, detection_models, image_inputs, with_batch_statistics


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    detector = detection_models().fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.2, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50, box_detections_per_img=100)
    with_batch_statistics(detector, 320)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.weight.normal_(
            0.0, 0.5, generator=torch.Generator().manual_seed(4))
    return Detections(detector)


get_inputs, get_probe_inputs, get_test_inputs = image_inputs(1, 2, 3)
