"""sparseseg: semantic segmentation of liquid-argon TPC images with sparse UResNets.

Light to import: heavy modules (torch, spconv, matplotlib) load only when used.
"""
from .classes import CLASS_NAMES, IGNORE, NUM_CLASSES
from .event import Event

__version__ = "0.6.0"
__all__ = ["Event", "CLASS_NAMES", "NUM_CLASSES", "IGNORE", "__version__"]
