"""Seeing inside a network: per-layer activation and gradient statistics, the recorded graph as
boxes and arrows, initialisation and curvature checks, loss landscapes, and their pictures."""
