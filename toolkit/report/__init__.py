"""Layer 6: the HTML report of a workspace. Imports the layers below.
"""
