"""Measurements: Frechet distance (clean-fid), ODE curvature and truncation error."""
