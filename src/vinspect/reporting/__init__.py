"""Run outputs: results.txt / results.json, comparison tables and plots."""

from .plots import comparison_png, confusion_matrix_png
from .results import results_text, write_results

__all__ = ["comparison_png", "confusion_matrix_png", "results_text", "write_results"]
