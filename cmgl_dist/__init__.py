"""cmgl: cross-modal global-local representation learning from chest X-rays and reports."""
import sys
from pathlib import Path

__version__ = "0.1.0"


def _leave_the_checkout_root_off_sys_path() -> None:
    """The checkout's top-level folders kernels/, shards/ and configs/ are installed as cmgl_dist.kernels,
    cmgl_dist.shards and cmgl_dist.configs (setup.py's package_dir). When the checkout root itself is on
    sys.path (`python -m` run from it, torchrun's `-m`, Ray workers started there), `kernels/` shadows the
    PyPI package `kernels` that transformers imports, and transformers fails to import. cmgl needs the
    root on no path, so it is taken off before anything imports transformers."""
    root = Path(__file__).resolve().parent.parent
    if not ((root / "setup.py").is_file() and (root / "kernels" / "__init__.py").is_file()):
        return  # an installed copy: its parent is site-packages, which stays
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != root]


_leave_the_checkout_root_off_sys_path()


def load(export_dir, device=None, pack_size=None):
    """A trained export for inference (`cmgl_dist.api`): model, transform, tokenizer, zero_shot, attention."""
    from cmgl_dist.api import load as _load

    return _load(export_dir, device=device, pack_size=pack_size)
