"""Layer 3: the registry of model versions (archive, promote, roll back, recover), its read-only
checks, and the promotion rule. Imports ``core`` and ``data``.
"""
