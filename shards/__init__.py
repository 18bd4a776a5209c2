"""IU-RR -> WebDataset shards: parse reports, label, render phantoms, pack, verify."""
