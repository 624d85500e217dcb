"""torchvision's retinanet_resnet50_fpn, random weights, one 192×192 image (resized to
192×192 inside instead of 800), a dynamic number of detections.

    python -m dynexport examples/torchvision_detectors/retinanet.py   # with torchvision, see
                                                                      # _detectors.py

Its postprocessing calls `torchvision.ops.boxes.batched_nms`, which branches on the number of
boxes; dynexport's known-library patch `torchvision.batched_nms` replaces it during capture.
A score threshold of 0.0455 keeps 2, 1 and 1 boxes on the images of seeds 3, 1 and 2
(measured; no score within 2e-4 of it).
"""

import torch
from _detectors import Detections, detection_models, image_inputs


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Detections(detection_models().retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=192, max_size=192, score_thresh=0.0455,
        topk_candidates=100, detections_per_img=100).eval())


get_inputs, get_probe_inputs, get_test_inputs = image_inputs(3, 1, 2)
