"""Keep one backend's conversion from leaking into the next one's: `isolated_shape_env`,
which lives with the other torch.export internals in `dynexport.adapters.torch_export`."""

from dynexport.adapters.torch_export import isolated_shape_env

__all__ = ["isolated_shape_env"]
