"""Global and local contrastive losses (GLoRIA), with negatives gathered from every rank."""
from . import comm
from .cmgl_loss import CMGLLoss
from .contrastive import global_contrastive_loss, global_logits, local_contrastive_loss, symmetric_cross_entropy
from .distributed import gather_with_grad
from .backend_choice import chosen_backends
from .local_compiled import local_similarity_compiled
from .local_reference import local_similarity_reference
from .similarity import local_similarity, resolve_backend

__all__ = [
    "CMGLLoss",
    "chosen_backends",
    "comm",
    "gather_with_grad",
    "global_contrastive_loss",
    "global_logits",
    "local_contrastive_loss",
    "local_similarity",
    "local_similarity_compiled",
    "local_similarity_reference",
    "resolve_backend",
    "symmetric_cross_entropy",
]
