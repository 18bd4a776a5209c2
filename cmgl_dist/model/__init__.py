"""cmgl_dist.model"""
