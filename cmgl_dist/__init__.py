"""cmgl: cross-modal global-local representation learning from chest X-rays and reports."""

__version__ = "0.1.0"
