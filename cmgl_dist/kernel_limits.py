"""The Triton local-similarity kernel's limits, torch-free: the config validates against them
before any work (cmgl_dist.config), and the kernel refuses inputs past them (kernels/)."""

# The kernel's softmaxes over regions and words use fixed offsets (gamma1 a - gamma1,
# gamma2 cos - |gamma2|) instead of running maxima; they stay within fp32's range up to these
# (kernels/README.md, "Fixed offsets instead of running maxima").
KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2 = 60.0, 30.0
