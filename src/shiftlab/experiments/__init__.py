"""Experiments: each turns images or models into measurements, then into figures and report sections."""
