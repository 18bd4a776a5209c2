"""Local-similarity kernels and what they share (installed as cmgl_dist.kernels).

Nothing here imports cmgl_dist.losses: the losses dispatch to the kernels, never the reverse.
`local_similarity_triton` is imported on first use, so the PyTorch parts work without triton
and importing this package does not fix Triton's JIT/interpreter mode.
"""
from cmgl_dist.kernels.attention import region_gram, word_region_attention
from cmgl_dist.kernels.attention_maps import local_attention_maps
from cmgl_dist.kernels.inputs import COSINE_EPS, WORD_BUCKET, check_local_inputs, word_bucket

__all__ = ["COSINE_EPS", "WORD_BUCKET", "check_local_inputs", "local_attention_maps",
           "local_similarity_triton", "region_gram", "word_bucket", "word_region_attention"]


def __getattr__(name):
    if name == "local_similarity_triton":
        from cmgl_dist.kernels.local_similarity import local_similarity_triton

        return local_similarity_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
