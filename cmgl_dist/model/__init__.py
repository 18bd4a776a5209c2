"""Image and text encoders with projection heads into one shared space (`build_model`)."""
from cmgl_dist.model.cmgl_model import CMGLModel, build_model

__all__ = ["CMGLModel", "build_model"]
