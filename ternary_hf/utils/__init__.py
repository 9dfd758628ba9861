"""Small helpers every other package may use: output folders and atomic files, progress bars.

Imports: the standard library (and tqdm) only, plus :mod:`ternary_hf.errors`.
"""
