"""One evaluation job = (export dir, task, fraction, seed) -> one result dict.

A job is a pure function of its inputs: the sweep runs it as a Ray task, `cmgl evaluate` runs it
in-process. It reads everything through its evaluation context (`context.py`: export, settings,
cached features, loaders, gammas) and records the context's `inputs_key`, so a rerun reuses a
result only when it answers the same question. Per-sample test scores (for ROC curves) go to
`OUT/scores/<job>.npz`; the result dict keeps only the metrics and the file name.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cmgl_dist.evaluate.context import EvalContext, EvalInputs
from cmgl_dist.shards.schema import PATHOLOGIES

# Submission order: the first two jobs encode different splits (test, train), so on a small
# machine the two feature caches fill in parallel instead of one job waiting on the other's lock.
TASKS = ("zero_shot", "probe", "finetune", "zero_shot_negated", "retrieval", "localisation", "attention", "probe_cv")
# run when asked for (--tasks); finetune also when eval.finetune is true
OPT_IN_TASKS = ("finetune", "probe_cv")
# jobs of these tasks are repeated per (fraction, seed); the others run once per export
FRACTION_TASKS = ("probe", "finetune")
# Tasks by how long one job runs, longest first (the main job on 2 CPUs: retrieval's local
# similarity over every test pair took 3 min alone, after the other jobs had finished in 2.5).
LONGEST_FIRST = ("finetune", "retrieval", "probe_cv", "zero_shot_negated", "zero_shot", "probe",
                 "localisation", "attention")


@dataclass(frozen=True)
class Job:
    export: str
    task: str
    fraction: Optional[float] = None
    seed: int = 0

    @property
    def job_id(self) -> str:
        frac = "" if self.fraction is None else f"@{self.fraction:g}"
        digest = hashlib.sha1(str(Path(self.export).resolve()).encode()).hexdigest()[:8]
        return f"{Path(self.export).name}-{digest}/{self.task}{frac}/seed{self.seed}"

    @property
    def setting(self) -> str:
        """The row of the paper-shaped table this job fills."""
        if self.task in FRACTION_TASKS:
            return f"{'fine-tune' if self.task == 'finetune' else 'probe'} {self.fraction * 100:g}%"
        if self.task == "zero_shot_negated":
            return "zero-shot vs negation"
        if self.task == "probe_cv":
            return "probe k-fold CV"
        return self.task.replace("_", "-")


def plan_jobs(exports: list[str], tasks: list[str], fractions: list[float], seeds: list[int]) -> list[Job]:
    """checkpoints x tasks, times fractions x seeds for the probe and fine-tuning."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    jobs = []
    for export in exports:
        for task in tasks:
            if task in FRACTION_TASKS:
                jobs += [Job(export, task, float(f), s) for f in fractions for s in seeds]
            else:
                jobs.append(Job(export, task, None, 0))
    return jobs


def longest_first(jobs: list[Job]) -> list[Job]:
    """The jobs in the order a pool of workers should start them: the longest tasks first, so
    that the short ones fill in beside them instead of a long one running alone at the end."""
    return sorted(jobs, key=lambda job: LONGEST_FIRST.index(job.task))


def _auc_result(ctx: EvalContext, job: Job, labels: np.ndarray, scores: np.ndarray, keys) -> dict:
    from cmgl_dist.evaluate.metrics import bootstrap_aucs

    aucs = bootstrap_aucs(labels, scores, PATHOLOGIES, n_boot=ctx.settings.bootstrap, seed=job.seed)
    metrics = {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in aucs.items()}
    scores_file = ctx.save_scores(job.job_id.replace("/", "__"), labels=labels, scores=scores,
                                  keys=np.asarray(keys), classes=np.asarray(PATHOLOGIES))
    return {"aucs": metrics, "n_test": int(labels.shape[0]), "scores_file": scores_file}


def _finding_labels(feats) -> np.ndarray:
    return feats.labels[:, :len(PATHOLOGIES)].numpy() > 0.5


def run_zero_shot(job: Job, ctx: EvalContext) -> dict:
    from cmgl_dist.evaluate.prompts import NEGATIVE_PROMPTS, class_prompts
    from cmgl_dist.evaluate.zero_shot import class_scores, zero_shot_settings

    feats = ctx.features(with_text=True)
    scores = class_scores(ctx.model, feats, class_prompts(ctx.settings.n_prompts, seed=job.seed, vocabulary=ctx.settings.prompts),
                          negatives=NEGATIVE_PROMPTS if job.task == "zero_shot_negated" else None,
                          **zero_shot_settings(ctx.cfg, ctx.settings))
    return _auc_result(ctx, job, _finding_labels(feats), scores, feats.keys)


def run_probe(job: Job, ctx: EvalContext) -> dict:
    from cmgl_dist.evaluate.probe import check_fraction, fit_predict, stratified_subset

    check_fraction(job.fraction)
    train = ctx.features("train", with_text=False)
    test = ctx.features(with_text=True)
    train_y = _finding_labels(train)
    subset = stratified_subset(train_y, job.fraction, job.seed)
    choice = ctx.settings.probe_features
    if ctx.settings.probe_model == "linear":
        from cmgl_dist.evaluate.linear_probe import fit_predict_linear

        val = ctx.features("val", with_text=False)
        scores, epochs = fit_predict_linear(train.probe_inputs(choice)[subset], train_y[subset],
                                            val.probe_inputs(choice), _finding_labels(val),
                                            test.probe_inputs(choice), seed=job.seed)
        result = _auc_result(ctx, job, _finding_labels(test), scores, test.keys)
        result.update(n_train=int(subset.size), epochs=epochs, unfittable=[])
        return result
    scores, unfittable = fit_predict(train.probe_inputs(choice)[subset], train_y[subset],
                                     test.probe_inputs(choice), seed=job.seed)
    result = _auc_result(ctx, job, _finding_labels(test), scores, test.keys)
    result.update(n_train=int(subset.size), unfittable=[PATHOLOGIES[c] for c in unfittable])
    return result


def run_probe_cv(job: Job, ctx: EvalContext) -> dict:
    """Linear probe by patient-grouped k-fold cross-validation over the evaluated split alone (a
    corpus too small to split into train and test); AUCs of the pooled out-of-fold scores."""
    from cmgl_dist.evaluate.corpus import patients
    from cmgl_dist.evaluate.metrics import bootstrap_aucs
    from cmgl_dist.evaluate.probe import cross_validated_scores, patient_folds

    # with_text: the same cached features as zero-shot on this split, so the split is encoded once
    feats = ctx.features(with_text=True)
    folds = ctx.settings.folds
    labels = _finding_labels(feats)
    patient_of = patients(ctx.shards, ctx.split)
    fold_of = patient_folds(labels, [patient_of[k] for k in feats.keys], folds, job.seed)
    scores, unfittable = cross_validated_scores(feats.probe_inputs(ctx.settings.probe_features), labels, fold_of,
                                                seed=job.seed)
    per_fold = [bootstrap_aucs(labels[fold_of == f], scores[fold_of == f], PATHOLOGIES, n_boot=0, seed=job.seed)
                for f in range(folds)]
    result = _auc_result(ctx, job, labels, scores, feats.keys)
    result.update(setting=f"probe {folds}-fold CV", folds=folds,
                  fold_sizes=[int((fold_of == f).sum()) for f in range(folds)],
                  fold_mean_aucs=[round(float(a["mean"].value), 4) for a in per_fold],
                  unfittable=sorted({PATHOLOGIES[c] for missing in unfittable for c in missing}))
    return result


def run_finetune(job: Job, ctx: EvalContext) -> dict:
    import torch

    from cmgl_dist.evaluate.finetune import finetune_scores
    from cmgl_dist.evaluate.probe import check_fraction, stratified_subset

    check_fraction(job.fraction)
    train = ctx.features("train", with_text=False)
    train_y = _finding_labels(train)
    subset = stratified_subset(train_y, job.fraction, job.seed)
    scores, labels, keys = finetune_scores(ctx, {train.keys[i] for i in subset},
                                           torch.from_numpy(train_y[subset]).float(), job.seed)
    result = _auc_result(ctx, job, labels, scores, keys)
    result.update(n_train=int(subset.size))
    return result


def run_retrieval(job: Job, ctx: EvalContext) -> dict:
    from cmgl_dist.data.shardlist import samples_without_text
    from cmgl_dist.evaluate.corpus import unknown_labels
    from cmgl_dist.evaluate.retrieval import retrieval_recalls

    if samples_without_text(ctx.shards, ctx.split):
        raise ValueError(f"{ctx.shards} has samples without a report: retrieval needs reports")
    return retrieval_recalls(ctx.features(with_text=True), **ctx.gammas,
                             word_pooling=ctx.settings.retrieval_word_pooling,
                             unknown_labels=frozenset(unknown_labels(ctx.shards, ctx.split)))


def run_localisation(job: Job, ctx: EvalContext) -> dict:
    from cmgl_dist.evaluate.localisation import localisation_scores

    return localisation_scores(ctx)


def run_attention(job: Job, ctx: EvalContext) -> dict:
    from cmgl_dist.evaluate.attention_maps import write_attention_figures

    folder = ctx.out_dir / "attention" / job.job_id.split("/")[0]
    return {"figures": write_attention_figures(ctx, folder)}


RUNNERS = {"zero_shot": run_zero_shot, "zero_shot_negated": run_zero_shot, "probe": run_probe, "probe_cv": run_probe_cv,
           "finetune": run_finetune, "retrieval": run_retrieval,
           "localisation": run_localisation, "attention": run_attention}


def run_job(job: Job, inputs: EvalInputs) -> dict:
    """Run one job; the returned record is what results.jsonl stores for a success."""
    from cmgl_dist.evaluate.corpus import corpus_name

    start = time.perf_counter()
    if job.task not in RUNNERS:
        raise ValueError(f"unknown task {job.task!r}; choose from {list(RUNNERS)}")
    ctx = EvalContext(job.export, inputs)
    metrics = RUNNERS[job.task](job, ctx)
    return {**job_record(job, ctx.inputs_key), "status": "ok", "seconds": round(time.perf_counter() - start, 2),
            "inputs": ctx.key_parts, "corpus": corpus_name(ctx.shards), "split": ctx.split, **metrics}


def job_record(job: Job, key: Optional[str]) -> dict:
    """The fields every record of `job` carries; `inputs_key` says which inputs it answers for."""
    return {"job_id": job.job_id, "setting": job.setting, "inputs_key": key, **asdict(job)}
