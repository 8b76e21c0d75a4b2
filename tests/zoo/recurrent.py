"""Recurrent zoo entries: LSTM and GRU sequence models, and a CNN+LSTM text recognizer whose
greedy CTC decoding gives an output whose length depends on the data (a shape only a run of
the model knows)."""

from __future__ import annotations

import torch
from torch import nn

from tests.zoo.registry import Built, randomize_norm_stats, register


class SeqClassifier(nn.Module):
    """Features, a two-layer bidirectional recurrent stack, a head on the mean over time."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.inp = nn.Linear(20, 32)
        self.rnn = cell(32, 48, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(96, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.head(y.mean(dim=1))


def _sequence() -> torch.Tensor:
    return torch.randn(1, 12, 20, generator=torch.Generator().manual_seed(2))


@register("lstm_seq", "handwritten")
def lstm_seq() -> Built:
    return Built(SeqClassifier(nn.LSTM).eval(), {"input": _sequence()}, ["input"], ["logits"])


@register("gru_seq", "handwritten")
def gru_seq() -> Built:
    return Built(SeqClassifier(nn.GRU).eval(), {"input": _sequence()}, ["input"], ["logits"])


class CRNN(nn.Module):
    """Conv features over a text line, columns as time steps, a bidirectional LSTM, per-step
    class scores; the second output is the greedy CTC decoding (best class per step, blanks
    and repeats dropped): as many ids as the line holds characters."""

    def __init__(self, classes: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d((4, 1)),
        )
        self.rnn = nn.LSTM(32 * 2, 32, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)                              # [1, 32, 2, W/2]
        seq = f.flatten(1, 2).transpose(1, 2)             # [1, T, 64]
        y, _ = self.rnn(seq)
        logits = self.fc(y)                               # [1, T, classes]
        best = logits[0].argmax(-1)                       # [T]
        prev = torch.cat([best.new_full((1,), -1), best[:-1]])
        keep = (best != 0) & (best != prev)
        return logits, best[torch.nonzero(keep).flatten()]


@register("crnn", "handwritten")
def crnn() -> Built:
    line = torch.randn(1, 1, 16, 48, generator=torch.Generator().manual_seed(4))
    return Built(randomize_norm_stats(CRNN()).eval(), {"input": line}, ["input"], ["logits", "decoded"])
