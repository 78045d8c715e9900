"""wsss: weakly supervised semantic segmentation from image tags and boxes.

The package imports nothing heavy at import time; torch is only imported by the stages and models that need it.
"""

__version__ = "0.1.0"
