"""Measurements: features (small classifier), fd (FD, KID, floor, confidence intervals),
inception (paper-scale FID through clean-fid), curvature (kappa, truncation error)."""
