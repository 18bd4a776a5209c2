"""Fused Triton kernels (installed as cmgl_dist.kernels)."""
from cmgl_dist.kernels.attention_maps import local_attention_maps
from cmgl_dist.kernels.local_similarity import local_similarity_triton

__all__ = ["local_attention_maps", "local_similarity_triton"]
