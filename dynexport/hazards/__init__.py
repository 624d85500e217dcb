"""Hazards: what in the user's model breaks or silently changes deployment (contract §4)."""

from dynexport.hazards.records import CATEGORIES, Hazard, SourceLocation, UnsupportedOp

__all__ = ["CATEGORIES", "Hazard", "SourceLocation", "UnsupportedOp"]
