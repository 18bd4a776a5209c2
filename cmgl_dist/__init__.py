"""cmgl: cross-modal global-local representation learning from chest X-rays and reports."""

__version__ = "0.1.0"


def load(export_dir, device=None, pack_size=None):
    """A trained export for inference (`cmgl_dist.api`): model, transform, tokenizer, zero_shot, attention."""
    from cmgl_dist.api import load as _load

    return _load(export_dir, device=device, pack_size=pack_size)
