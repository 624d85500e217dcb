"""dynexport's custom ops: each module holds one op's kernel, fake kernel, autograd,
decomposition, ONNX translation and OpenVINO conversion side by side (see README.md here).

Importing this package registers them; the backends read the translations from `registry`.
"""

from dynexport.custom_ops import registry
from dynexport.custom_ops.bev_pool import bev_pool_v2, prepare_bev_pool_v2

__all__ = ["bev_pool_v2", "prepare_bev_pool_v2", "registry"]
