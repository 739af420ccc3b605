"""permerge: align two transformer checkpoints by permutation matching and merge them along lambda.

Stages (each a plain function or small class, see the README):
checkpoints -> stats -> match/align -> permute -> interpolate/evaluate -> plots.
"""
__version__ = "0.1.0"
