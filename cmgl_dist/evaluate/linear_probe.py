"""GLoRIA's linear classification (`eval.probe_model=linear`): one linear layer on frozen features.

GLoRIA's `linear_head` configs train `PretrainedImageClassifier` (the frozen encoder's pooled
features -> `nn.Linear(feature_dim, 5)`) with `nn.BCEWithLogitsLoss` over the five classes at once,
`torch.optim.Adam(lr=1e-4, weight_decay=1e-6, betas=(0.5, 0.999))` (`builder.build_optimizer`),
batches of 64, gradient-norm clipping at 0.25, at most 50 epochs, early stopping on the validation
loss (patience 5, min_delta 0) and the checkpoint of the best validation loss scoring the test set.
Its ReduceLROnPlateau (factor 0.5, patience 5, checked every 3 epochs) cannot act before that
early stop (5 epochs without improvement stop the run; the scheduler waits 5 checks, 15 epochs),
so it is left out. The features here are cached, so an epoch is a pass over feature rows, not
images: GLoRIA's random crops of the training images are not redrawn per epoch.

cmgl's default probe (`probe.fit_predict`) fits one logistic regression per class instead.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

LR = 1e-4
WEIGHT_DECAY = 1e-6
BETAS = (0.5, 0.999)
BATCH = 64
GRAD_CLIP = 0.25
MAX_EPOCHS = 50
PATIENCE = 5


def fit_predict_linear(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                       test_x: np.ndarray, *, seed: int, dtype=torch.float32) -> tuple[np.ndarray, int]:
    """(test probabilities [N_test, C] from the best-validation-loss layer, epochs run)."""
    generator = torch.Generator().manual_seed(seed)
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    train_x, train_y, val_x, val_y, test_x = map(as_tensor, (train_x, train_y, val_x, val_y, test_x))
    layer = init_layer(train_x.shape[1], train_y.shape[1], generator, dtype)
    optimizer = torch.optim.Adam(layer.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS)
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state, waited, epochs = float("inf"), copy.deepcopy(layer.state_dict()), 0, 0
    for epoch in range(MAX_EPOCHS):
        epochs = epoch + 1
        for rows in torch.randperm(len(train_x), generator=generator).split(BATCH):
            optimizer.zero_grad()
            loss_fn(layer(train_x[rows]), train_y[rows]).backward()
            nn.utils.clip_grad_norm_(layer.parameters(), GRAD_CLIP)
            optimizer.step()
        with torch.no_grad():
            val_loss = epoch_loss(layer, loss_fn, val_x, val_y)
        if val_loss < best:  # EarlyStopping(min_delta=0, mode="min") and ModelCheckpoint(save_top_k=1)
            best, best_state, waited = val_loss, copy.deepcopy(layer.state_dict()), 0
        else:
            waited += 1
            if waited >= PATIENCE:
                break
    layer.load_state_dict(best_state)
    with torch.no_grad():
        return torch.sigmoid(layer(test_x)).double().numpy(), epochs


def init_layer(n_in: int, n_out: int, generator: torch.Generator, dtype) -> nn.Linear:
    """nn.Linear's own initialisation (uniform +-1/sqrt(n_in), weights and bias), drawn from `generator`."""
    layer = nn.Linear(n_in, n_out).to(dtype)
    bound = 1.0 / n_in ** 0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def epoch_loss(layer: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """Lightning's epoch `val_loss`: the batch losses averaged, weighted by batch size."""
    total = sum(float(loss_fn(layer(x[rows]), y[rows])) * len(rows) for rows in torch.arange(len(x)).split(BATCH))
    return total / len(x)
