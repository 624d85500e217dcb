"""dynexport's custom ops: each module holds one op's kernel, fake kernel, autograd,
decomposition, ONNX translation and OpenVINO conversion side by side (see README.md here).

Importing this package registers them in the default registry; `to_onnx`/`to_openvino` take
an `OpRegistry` for scoped ones.
"""

from dynexport.custom_ops import registry
from dynexport.custom_ops.bev_pool import bev_pool_v2, prepare_bev_pool_v2
from dynexport.custom_ops.bevfusion_bev_pool import bev_pool as bevfusion_bev_pool
from dynexport.custom_ops.circle_nms import circle_nms, padded_circle_nms
from dynexport.custom_ops.deform_conv import deform_conv2d
from dynexport.custom_ops.ms_deform_attn import multi_scale_deformable_attn
from dynexport.custom_ops.nms import batched_nms, nms
from dynexport.custom_ops.registry import OpRegistry, default_registry
from dynexport.custom_ops.voxelize import hard_voxelize, voxelization

__all__ = ["OpRegistry", "batched_nms", "bev_pool_v2", "bevfusion_bev_pool", "circle_nms",
           "default_registry", "deform_conv2d", "hard_voxelize", "multi_scale_deformable_attn",
           "nms", "padded_circle_nms", "prepare_bev_pool_v2", "registry", "voxelization"]
