"""torchvision's ssdlite320_mobilenet_v3_large, random weights, one 192×192 image (resized
to 320×320 inside), a dynamic number of detections.

    python -m dynexport examples/torchvision_detectors/ssdlite.py   # with torchvision, see
                                                                    # _detectors.py

Its postprocessing calls `torchvision.ops.boxes.batched_nms`, which branches on the number of
boxes; dynexport's known-library patch `torchvision.batched_nms` replaces it during capture.
With random weights every class scores ~1/91; a score threshold of 0.032 keeps a different
number of boxes per image (measured: 21, 13 and 7 on the images of seeds 1, 2, 3).
"""

import torch
from _detectors import Detections, detection_models, image_inputs, with_batch_statistics


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    detector = detection_models().ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, score_thresh=0.032, topk_candidates=50,
        detections_per_img=100)
    with_batch_statistics(detector, 320)
    return Detections(detector)


get_inputs, get_probe_inputs, get_test_inputs = image_inputs(1, 2, 3)
