"""Layer 2: images, label formats, the managed dataset (``dataset/``), the perceptual hash, the
evaluation splits and synthetic data. Imports ``core`` only.
"""
