"""Seeing inside a network: per-layer activation and gradient statistics, the recorded graph as
boxes and arrows, initialisation and curvature checks, loss landscapes, the linear regions of
ReLU networks, and their pictures.

>>> import nodegrad as ng
>>> from nodegrad import diagnostics as D
>>> net = D.DeepMLP(64, depth=6, width=64, activation="tanh", init="small_normal")
>>> report = D.layer_stats(net, ng.randn(128, 64))
>>> report[-1].activation.std < 1e-6       # the notes' collapse under N(0, 0.01²)
True

matplotlib is imported only when a picture is drawn.
"""

from . import landscape, regions
from .callback import GradientFlowMonitor
from .curvature import hessian_eigenvalues, model_hessian_eigenvalues
from .deep_mlp import DeepMLP, init_comparison
from .gradcheck import assert_gradients, check_gradients, format_gradcheck
from .graph import draw_graph
from .init_checks import (format_symmetric_units, format_variance_table, layer_variances,
                          symmetric_units, variance_across_depth, variance_verdict)
from .landscape import (interpolate, plot_interpolation, plot_surface, random_direction,
                        surface_2d)
from .plots import (plot_activation_grid, plot_grad_norms, plot_layer_profile, plot_training,
                    plot_unit_fractions, plot_update_ratios)
from .stats import LayerRecord, LayerReport, Summary, layer_stats, warnings

__all__ = ["DeepMLP", "GradientFlowMonitor", "LayerRecord", "LayerReport", "Summary",
           "assert_gradients", "check_gradients", "draw_graph", "format_gradcheck",
           "format_symmetric_units", "format_variance_table", "hessian_eigenvalues",
           "init_comparison", "interpolate", "landscape", "layer_stats", "layer_variances",
           "model_hessian_eigenvalues", "plot_activation_grid", "plot_grad_norms",
           "plot_interpolation", "plot_layer_profile", "plot_surface", "plot_training",
           "plot_unit_fractions", "plot_update_ratios", "random_direction", "regions", "surface_2d",
           "symmetric_units", "variance_across_depth", "variance_verdict", "warnings"]
