"""brats_utils: the code behind the notebook series on 3D brain-tumour segmentation (BraTS 2020).

One small module per notebook (see README.md for the map); import the one you need,
e.g. ``from brats_utils import model``. Importing the package itself is cheap.
"""

__version__ = "0.1.0"
