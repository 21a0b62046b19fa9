"""Layer 5: the memory bank - its tables, readers (files, databases), aggregates, the analysis, the
priorities, the charts - and the detection system's API. Imports the layers below.
"""
