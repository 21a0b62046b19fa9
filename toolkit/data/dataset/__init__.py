"""The managed dataset (``training/datasets/``), one module per topic; importing it does nothing.

- ``manifest``: the manifest, its versions, counts per split, the split lists it generates
- ``incoming``: batches waiting in ``training/incoming/`` and their fingerprints
- ``checks``: the check of one source image (decode, hash, orientation, boxes)
- ``parallel``: the checks of a batch on threads or forked processes
- ``stratify``: near-duplicate groups and the leakage-free, per-class split
- ``plan``: what an import will add, and where (writes nothing)
- ``store``: managed names, staged copies, the commit that makes them visible, strays, disk space
"""
