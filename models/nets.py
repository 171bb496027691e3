"""Plain `nn.Module` sequence classifiers (no Lightning here, so scorers load them bare).

A sequence is right-padded: `x` (B, T, D) with `lengths` (B,). The encoder normalises
inputs with stored statistics (buffers, so they travel with the state dict), finds local
motifs with one convolution (a front-run/back-run pair, one step of a sybil script), runs a
GRU over the real steps only (packed), and pools last state + masked mean + masked max:
the last state answers "what is it doing now", mean/max keep what happened earlier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild the net (recorded in every artifact)."""

    in_dim: int
    n_classes: int
    hidden: int = 64
    conv_kernel: int = 5
    gru_layers: int = 1
    dropout: float = 0.1

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool: True on real steps."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class SequenceEncoder(nn.Module):
    """(B, T, D) padded sequences -> (B, 3 * hidden) summary."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.register_buffer("feature_mean", torch.zeros(cfg.in_dim))
        self.register_buffer("feature_std", torch.ones(cfg.in_dim))
        self.proj = nn.Sequential(nn.Linear(cfg.in_dim, h), nn.GELU())
        self.conv = nn.Conv1d(h, h, cfg.conv_kernel, padding=cfg.conv_kernel // 2)
        self.gru = nn.GRU(
            h,
            h,
            num_layers=cfg.gru_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,
        )
        self.out_dim = 3 * h

    @torch.no_grad()
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Training-set statistics of the inputs; constant features get std 1."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        lengths = lengths.clamp(min=1, max=T)
        mask = length_mask(lengths, T)
        m = mask.unsqueeze(-1).to(x.dtype)
        z = (x - self.feature_mean) / self.feature_std
        z = self.proj(z) * m
        z = z + torch.relu(self.conv(z.transpose(1, 2))).transpose(1, 2) * m
        packed = pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out_p, h_n = self.gru(packed)
        out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=T)
        last = h_n[-1]
        mean = (out * m).sum(1) / lengths.unsqueeze(-1).to(out.dtype)
        mx = out.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return torch.cat((last, mean, mx), dim=-1)


class SequenceClassifier(nn.Module):
    """Family logits (class 0 = normal / honest); the anomaly score is 1 - P(class 0)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SequenceEncoder(cfg)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_dim, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.n_classes),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(x, lengths))
        return out

    @staticmethod
    def anomaly_score(logits: torch.Tensor) -> torch.Tensor:
        """1 - P(normal), computed stably as sum of the other classes' probabilities."""
        p = torch.softmax(logits.float(), dim=-1)
        return p[:, 1:].sum(-1)
