"""Decompositions dynexport.export applies so that ops the backends lack convert."""
