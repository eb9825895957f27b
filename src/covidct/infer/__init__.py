"""Inference without the training stack: both networks on ONNX Runtime, NumPy preprocessing, no torch import.

:mod:`covidct.infer.onnx` runs exports that :mod:`covidct.infer.export` writes (with torch, once).
"""
