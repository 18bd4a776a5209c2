"""Fused Triton kernels (installed as cmgl_dist.kernels)."""
