"""cmgl_dist.losses"""
