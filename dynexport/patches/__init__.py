"""Known-library patches: export-safe replacements of well-known library functions, applied
only while dynexport captures a model (docs/patches.md)."""

from dynexport.patches.registry import (
    Patch,
    PatchCall,
    applied,
    calls_in_graph,
    patch_names,
    register_patch,
    registered_patches,
)

__all__ = ["Patch", "PatchCall", "applied", "calls_in_graph", "patch_names", "register_patch",
           "registered_patches"]
