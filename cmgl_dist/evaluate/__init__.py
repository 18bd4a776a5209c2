"""cmgl_dist.evaluate"""
