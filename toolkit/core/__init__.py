"""Layer 1, the foundation: errors, files, the workspace layout, settings, the command line, the lock,
safe model loading, report files and the run history. Imports nothing else of the toolkit.
"""
