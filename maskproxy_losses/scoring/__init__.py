"""Scoring trials (cosine, ten-crop, S-norm / AS-norm), metrics (EER, minDCF), calibration and
plots."""
