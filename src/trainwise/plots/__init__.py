"""Figures of the data steps. Every function returns a matplotlib Figure and writes nothing.

Figures are `matplotlib.figure.Figure` objects with their own Agg canvas, never pyplot's: pyplot keeps
global state (the current figure, a registry that leaks figures until closed) that is not
thread-safe, and a library must not choose the process's backend. Each figure stays readable from
one class to a hundred with names of ~20 characters: category axes are horizontal with tick labels
sized to the room each gets (and thinned when even the smallest size would collide), long lists
keep their top and bottom with a note, and sizes grow with the content up to 16 x 12 inches.
"""

from trainwise.plots._base import ALERT, DPI, MAIN, MAX_H, MAX_W, PALETTE, SECOND, save_png
from trainwise.plots.images import (
    brightness_contrast,
    channel_stats,
    class_distribution,
    distribution_comparison,
    duplicate_groups,
    image_batch,
    ks_statistic,
    label_distribution_comparison,
    mean_images,
    property_auc_heatmap,
    sample_grid,
    size_histograms,
)
from trainwise.plots.tables import (
    correlation_heatmap,
    feature_distributions,
    feature_drift,
    feature_importance,
    missingness,
    target_distribution,
)
from trainwise.plots.training import confusion_matrix, curves, learning_curve, per_class_metrics, predicted_vs_true

__all__ = [
    "ALERT",
    "DPI",
    "MAIN",
    "MAX_H",
    "MAX_W",
    "PALETTE",
    "SECOND",
    "brightness_contrast",
    "channel_stats",
    "class_distribution",
    "confusion_matrix",
    "correlation_heatmap",
    "curves",
    "distribution_comparison",
    "duplicate_groups",
    "feature_distributions",
    "feature_drift",
    "feature_importance",
    "image_batch",
    "ks_statistic",
    "label_distribution_comparison",
    "learning_curve",
    "mean_images",
    "missingness",
    "per_class_metrics",
    "predicted_vs_true",
    "property_auc_heatmap",
    "sample_grid",
    "save_png",
    "size_histograms",
    "target_distribution",
]
