"""Evaluation of exported checkpoints (`cmgl evaluate`, `cmgl sweep`).

features (encode a split once, cached) -> zero_shot / probe / finetune / retrieval /
localisation / attention_maps, each run as one job (jobs.py) in-process (run.py) or as a Ray
task (sweep.py) -> results.jsonl (results.py) -> table.md and ROC PNGs (report.py).
Metrics (AUC, bootstrap CIs, recall@k) are in metrics.py, prompt sets in prompts.py.
"""
