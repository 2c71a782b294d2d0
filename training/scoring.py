"""Adapters from a model's servable contract (``encode`` + ``item_vectors``) to ``protocol.Scorer``."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ContractScorer:
    """Scores with ``encode(history, user) @ item_vectors().T``, the same path ONNX + FAISS serve.

    ``users`` from the protocol are row indices; models see ``row + 1`` (0 = anonymous), or ``None``
    when ``anonymous`` is set or the model has no user embedding.
    """

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", anonymous: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.anonymous = anonymous
        with torch.no_grad():
            was = model.training
            model.eval()
            self.items = model.item_vectors().detach().to(self.device)  # (N, D')
            model.train(was)

    @torch.no_grad()
    def __call__(self, histories: np.ndarray, users: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        was = self.model.training
        self.model.eval()
        h = torch.as_tensor(histories, dtype=torch.long, device=self.device)  # (B, L)
        u = None
        if self.model.uses_user and not self.anonymous:
            u = torch.as_tensor(users, dtype=torch.long, device=self.device) + 1  # (B,)
        q = self.model.encode(h, u).float()  # (B, D')
        self.model.train(was)
        if candidates is not None:
            c = torch.as_tensor(candidates, dtype=torch.long, device=self.device)  # (B, C)
            vec = self.items[c - 1]  # (B, C, D')
            return torch.einsum("bd,bcd->bc", q, vec).cpu().numpy()
        scores = q @ self.items.T  # (B, N)
        pad = torch.full((scores.shape[0], 1), float("-inf"), device=scores.device)
        return torch.cat([pad, scores], dim=1).cpu().numpy()  # (B, N+1), column = item id
