"""cmgl_dist.engine"""
