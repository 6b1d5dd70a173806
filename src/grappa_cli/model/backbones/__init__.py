"""Frozen backbones: timm ViTs and CNNs, packaged offline weights, weight files."""
