"""A small CNN in PyTorch for the digits, with the interface the quickstart runs (see ``softmax.py``).

``initial_weights``, ``train``, ``accuracy`` and ``loss`` take and give weights as a name → numpy array
mapping: what ``fma_client.Client.pull()`` returns and ``push()`` takes (a ``state_dict`` works
for ``push()`` too). Two conv layers and one linear layer, about 6,000 parameters, on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from images import as_images

Weights = dict[str, np.ndarray]

torch.set_num_threads(1)  # ten clients share the machine's cores


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),  # 16 × 8 × 8
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16 × 4 × 4
        nn.Conv2d(16, 32, kernel_size=3, padding=1),  # 32 × 4 × 4
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 × 2 × 2
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def to_numpy(model: nn.Module) -> Weights:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in model.state_dict().items()}


def load(weights: Weights) -> nn.Module:
    model = build()
    model.load_state_dict({name: torch.from_numpy(np.asarray(array)) for name, array in weights.items()})
    return model


def initial_weights(seed: int = 0) -> Weights:
    torch.manual_seed(seed)
    return to_numpy(build())


def train(
    weights: Weights,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
) -> Weights:
    """The weights after ``epochs`` of SGD with momentum on (x, y); the input is not modified."""
    torch.manual_seed(seed)
    model = load(weights)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    images, labels = torch.from_numpy(as_images(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return to_numpy(model)


@torch.no_grad()
def accuracy(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    model = load(weights).eval()
    predictions = model(torch.from_numpy(as_images(x))).argmax(dim=1).numpy()
    return float((predictions == np.asarray(y)).mean())


@torch.no_grad()
def loss(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the model on (x, y): the quickstart reports it with the accuracy."""
    model = load(weights).eval()
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return float(nn.functional.cross_entropy(model(torch.from_numpy(as_images(x))), labels))
