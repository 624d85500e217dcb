"""Hazards: what in the user's model breaks or silently changes deployment (contract §4).

One module per category holds that category's rules (each a function of the Evidence the
stages left); `find.find_hazards` runs them all once, after the stages."""

from dynexport.hazards.records import Handled, Hazard, SourceLocation, UnsupportedOp

__all__ = ["Handled", "Hazard", "SourceLocation", "UnsupportedOp"]
