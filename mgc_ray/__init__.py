"""mgc_ray: Ray-distributed hyperparameter search for music genre classification.

Nothing happens at import time (no I/O, no Ray): submodules are imported by name.
"""

__version__ = "0.1.0"
