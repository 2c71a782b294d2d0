"""How learnable is a consistency task on a dataset: probes on the task's own augmented views (issue 26).

    python -m training.task_probe --dataset lastfm --data-dir /work/shared/data --task temporal \
        [--run RUN_DIR] [--random-encoder] [--json probe.json]

Users are split with a fixed seed into three disjoint groups: *corpus* (``corpus_share``), *fit* and *test*
(``test_share``). Every fit and test user's training view ``s[:-2]`` (its most recent ``max_len - 1`` items)
gets ``views`` augmented copies drawn by the task module itself (``models.consistency``, with the run's
``ConsistencyConfig`` or the default one), so a probe sees exactly the pairs a teacher trains on. Probes:

- ``counts``: statistics of the corpus users' sequences only, so fit and test rows are alike (no row's own
  items are counted). Binary tasks: a logistic regression on a few count features of each sequence (temporal:
  corpus counts of its adjacent bigrams in both directions; persona: corpus co-occurrence of each item with
  the sequence's other items, and item popularity). Global: no fitting; the segment whose items co-occur most
  with a context (mean log(1 + co-occurrence)) is its top-1 among ``global_batch`` segments.
- ``encoder`` (``--run``): a fresh head (the task's: MLP for binary, linear map + InfoNCE for global) trained on
  the frozen last-token hidden states of a finished teacher run, fitted on the fit users, read on the test
  users. The encoder itself trained on every user (leave-one-out), so only the head and the views are new.
- ``random-encoder`` (``--random-encoder`` with ``--run``): the same head on a freshly initialised encoder of the
  run's config: what the head alone gets from untrained features.
- ``own-head`` (``--own-head`` with ``--run``): the teacher's own task head and encoder as they are in its
  ``checkpoint.pt`` (the last epoch), read on the test users without any fitting.

Truly unseen users: ``--write-subset FILE`` writes the dataset without the test users (same seed and split),
so that a teacher trained on FILE has never seen them; probing that run with ``--dataset`` the full data then
reads every probe on users the encoder never trained on. Where the largest item id occurs only among the
test users, FILE gets a placeholder user ``0`` holding that id three times, so the item table keeps its size.

Accuracy on the test users against chance (binary: majority-label share; global: 1/B). Prints one JSON
object per probe; ``--json`` writes them all.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.consistency import VARIANTS, ConsistencyConfig, SequencePool, build_consistency, info_nce
from protocol import SequenceDataset, load_dataset, pad_left, train_sequences
from training.io import read_json
from training.runs import build_model, load_checkpoint, load_run_model


@dataclass
class ProbeConfig:
    views: int = 4  # augmented copies per fit/test user
    corpus_share: float = 0.5  # users whose sequences give the count statistics (not probed)
    test_share: float = 0.2  # users the probes are read on
    max_users: int = 6000  # users drawn at most (Beauty has 22k; the counts probe is cheap, encoders less so)
    max_len: int = 50
    global_batch: int = 256  # B of the global task's top-1 (chance 1/B)
    steps: int = 300  # full-batch Adam steps of a fresh binary head; InfoNCE epochs for global
    lr: float = 1e-2
    seed: int = 0


@dataclass
class ProbeResult:
    probe: str
    task: str
    acc: float  # on the test users
    chance: float
    fit_rows: int
    test_rows: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ViewSet:
    """A group's augmented views: binary (task_input (R, L+1) with [INT], label (R,)) or global (masked, alone)."""

    batch: dict[str, torch.Tensor]
    users: np.ndarray  # (R,) user row of each view


# ---- views ---------------------------------------------------------------------------------------
def split_users(n: int, cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corpus, fit, test) user rows: disjoint, seeded."""
    rng = np.random.default_rng(cfg.seed)
    users = rng.permutation(n)[: min(n, cfg.max_users)]
    n_corpus, n_test = round(cfg.corpus_share * len(users)), round(cfg.test_share * len(users))
    return users[:n_corpus], users[n_corpus:len(users) - n_test], users[len(users) - n_test:]


def make_views(task: nn.Module, seqs: list[np.ndarray], users: np.ndarray, cfg: ProbeConfig, salt: int) -> ViewSet:
    rows = np.repeat(users, cfg.views)  # (R,)
    tokens = torch.from_numpy(pad_left([seqs[u][-(cfg.max_len - 1):] for u in rows], cfg.max_len - 1))
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + salt)
    return ViewSet(task.views(tokens, torch.from_numpy(rows), gen), rows)


# ---- counts probe --------------------------------------------------------------------------------
class PairCounts:
    """Counts of item pairs as sorted int64 keys ``a * (N + 2) + b`` (sparse, any catalogue size)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, num_items: int):
        self.base = num_items + 2
        self.keys, self.counts = np.unique(a * self.base + b, return_counts=True)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = a * self.base + b
        at = np.searchsorted(self.keys, k).clip(max=max(len(self.keys) - 1, 0))
        return np.where(self.keys[at] == k, self.counts[at], 0) if len(self.keys) else np.zeros_like(k)


def bigram_counts(seqs: list[np.ndarray], corpus: np.ndarray, num_items: int) -> PairCounts:
    a = np.concatenate([seqs[u][:-1] for u in corpus])
    b = np.concatenate([seqs[u][1:] for u in corpus])
    return PairCounts(a, b, num_items)


def cooccurrence(seqs: list[np.ndarray], corpus: np.ndarray, num_items: int) -> PairCounts:
    """Users holding both items (i, j), i == j included (an item's user count)."""
    a, b = [], []
    for u in corpus:
        s = np.unique(seqs[u])
        a.append(np.repeat(s, len(s)))
        b.append(np.tile(s, len(s)))
    return PairCounts(np.concatenate(a), np.concatenate(b), num_items)


def items_of(row: torch.Tensor, num_items: int) -> np.ndarray:
    r = row.numpy()
    return r[(r > 0) & (r <= num_items)]


def temporal_features(x: np.ndarray, bigrams: PairCounts) -> list[float]:
    fwd, bwd = np.log1p(bigrams(x[:-1], x[1:])), np.log1p(bigrams(x[1:], x[:-1]))
    if len(fwd) == 0:
        return [0.0] * 5
    return [fwd.mean(), bwd.mean(), (fwd == 0).mean(), (bwd > fwd).mean(), fwd.min()]


def persona_features(x: np.ndarray, co: PairCounts) -> list[float]:
    c = np.log1p(co(np.repeat(x, len(x)), np.tile(x, len(x))).reshape(len(x), len(x)).astype(float))  # (n, n)
    pop = np.diag(c).copy()
    np.fill_diagonal(c, 0.0)
    s = c.sum(1) / max(len(x) - 1, 1)  # (n,) mean co-occurrence of each item with the others
    return [s.min(), s.mean(), (s == 0).mean(), pop.min(), pop.mean()]


def binary_features(views: ViewSet, task: str, stats: PairCounts, num_items: int) -> torch.Tensor:
    feat = temporal_features if task == "temporal" else persona_features
    rows = [feat(items_of(r, num_items), stats) for r in views.batch["task_input"]]
    lengths = (views.batch["task_input"] > 0).sum(1, keepdim=True).float().log()
    return torch.cat([torch.tensor(rows, dtype=torch.float32), lengths], dim=1)  # (R, F)


def fit_head(x: torch.Tensor, y: torch.Tensor, head: nn.Module, cfg: ProbeConfig) -> nn.Module:
    """Full-batch Adam on BCE; features standardised with the fit rows' statistics (kept in the head)."""
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    model = nn.Sequential(Standardise(mu, sd), head)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    for _ in range(cfg.steps):
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class Standardise(nn.Module):
    def __init__(self, mu: torch.Tensor, sd: torch.Tensor):
        super().__init__()
        self.mu, self.sd = mu, sd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sd


def binary_result(name: str, task: str, xf: torch.Tensor, fit: ViewSet, xt: torch.Tensor, test: ViewSet,
                  head: nn.Module, cfg: ProbeConfig) -> ProbeResult:
    yf, yt = fit.batch["task_label"], test.batch["task_label"]
    model = fit_head(xf, yf, head, cfg)
    with torch.no_grad():
        acc_test = float(((model(xt).squeeze(1) > 0).float() == yt).float().mean())
        acc_fit = float(((model(xf).squeeze(1) > 0).float() == yf).float().mean())
    share = float(yt.mean())
    return ProbeResult(name, task, acc_test, max(share, 1 - share), len(yf), len(yt), {"fit_acc": acc_fit})


def global_counts_result(test: ViewSet, co: PairCounts, num_items: int, cfg: ProbeConfig) -> ProbeResult:
    ctx = [items_of(r, num_items) for r in test.batch["global_masked"]]
    seg = [items_of(r, num_items) for r in test.batch["global_segment"]]
    hits, total, b = 0, 0, min(cfg.global_batch, len(ctx))
    for lo in range(0, len(ctx) - b + 1, b):  # whole chunks of B pairs
        score = np.array([[np.log1p(co(np.repeat(s, len(c)), np.tile(c, len(s)))).mean() if len(s) and len(c) else 0.0
                           for s in seg[lo:lo + b]] for c in ctx[lo:lo + b]])  # (B contexts, B segments)
        hits += int((score.argmax(1) == np.arange(b)).sum())
        total += b
    return ProbeResult("counts", "global", hits / max(total, 1), 1 / b, 0, total)


# ---- encoder probes ------------------------------------------------------------------------------
@torch.no_grad()
def last_hidden(model: nn.Module, tokens: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(R, L) -> (R, d) the encoder's hidden state at the last token, in eval mode."""
    model.eval()
    return torch.cat([model.hidden_states(tokens[i:i + batch])[:, -1] for i in range(0, len(tokens), batch)])


def global_encoder_result(name: str, model: nn.Module, fit: ViewSet, test: ViewSet, cfg: ProbeConfig,
                          temperature: float) -> ProbeResult:
    gf, sf = last_hidden(model, fit.batch["global_masked"]), last_hidden(model, fit.batch["global_segment"])
    gt, st = last_hidden(model, test.batch["global_masked"]), last_hidden(model, test.batch["global_segment"])
    proj = nn.Linear(gf.shape[1], gf.shape[1], bias=False)
    opt = torch.optim.Adam(proj.parameters(), lr=cfg.lr / 10)
    b = min(cfg.global_batch, len(gt))
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps // 10):
        for idx in torch.randperm(len(gf), generator=gen).split(b):
            loss = info_nce(proj(gf[idx]), sf[idx], temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
    hits, total = 0, 0
    with torch.no_grad():
        for lo in range(0, len(gt) - b + 1, b):
            sim = F.normalize(proj(gt[lo:lo + b]), dim=-1) @ F.normalize(st[lo:lo + b], dim=-1).T  # (B, B)
            hits += int((sim.argmax(1) == torch.arange(b)).sum())
            total += b
    return ProbeResult(name, "global", hits / max(total, 1), 1 / b, len(gf), total)


def encoder_result(name: str, task: str, model: nn.Module, fit: ViewSet, test: ViewSet, cfg: ProbeConfig,
                   ccfg: ConsistencyConfig) -> ProbeResult:
    if task == "global":
        return global_encoder_result(name, model, fit, test, cfg, ccfg.temperature)
    xf, xt = last_hidden(model, fit.batch["task_input"]), last_hidden(model, test.batch["task_input"])
    d = xf.shape[1]
    head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))  # the task head, without dropout
    return binary_result(name, task, xf, fit, xt, test, head, cfg)


def own_head_result(run: Path, task: str, test: ViewSet, ccfg: ConsistencyConfig, pool: SequencePool) -> ProbeResult:
    """The run's own encoder and task head at its last epoch (``checkpoint.pt``), on the test users' views."""
    spec = read_json(run / "model_config.json")
    model = build_model(spec["model"], spec["config"])
    c = model.config
    head = build_consistency(task, c.dim, ccfg, c.mask_token, c.int_token, c.max_len, pool)
    state = load_checkpoint(run / "checkpoint.pt")["task"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    head.load_state_dict({k.removeprefix("consistency."): v for k, v in state.items() if k.startswith("consistency.")})
    model.eval()
    head.eval()
    with torch.no_grad():
        out = head(model.hidden_states, test.batch)
    rows = len(next(iter(test.batch.values())))
    return ProbeResult("own-head", task, float(out["acc"]), float(out["chance"]), 0, rows)


def write_subset(ds: SequenceDataset, cfg: ProbeConfig, out: Path) -> int:
    """``ds`` without the probe's test users, in the data file format; returns the users written."""
    _, _, test = split_users(ds.num_users, cfg)
    keep = np.setdiff1d(np.arange(ds.num_users), test)
    lines = [" ".join(map(str, [ds.users[u], *ds.sequences[u]])) for u in keep]
    if max(int(ds.sequences[u].max()) for u in keep) < ds.num_items:
        lines.append(" ".join(map(str, [0, *[ds.num_items] * 3])))  # placeholder: keeps num_items
    out.write_text("\n".join(lines) + "\n")
    return len(keep)


# ---- driver --------------------------------------------------------------------------------------
def run_probes(ds: SequenceDataset, task: str, cfg: ProbeConfig, run: Path | None = None,
               random_encoder: bool = False, own_head: bool = False) -> list[ProbeResult]:
    torch.manual_seed(cfg.seed)  # head initialisations: the same figures on every call
    seqs = train_sequences(ds)
    info = read_json(run / "run.json") if run else {}
    ccfg = ConsistencyConfig(**info["consistency_config"]) if info.get("consistency_config") else ConsistencyConfig()
    pool = SequencePool.from_sequences([torch.from_numpy(s) for s in seqs])
    n = ds.num_items
    module = build_consistency(task, 8, ccfg, n + 1, n + 2, cfg.max_len, pool)  # [MASK] = N + 1, [INT] = N + 2
    corpus, fit_users, test_users = split_users(ds.num_users, cfg)
    fit, test = make_views(module, seqs, fit_users, cfg, 1), make_views(module, seqs, test_users, cfg, 2)
    stats = bigram_counts(seqs, corpus, n) if task == "temporal" else cooccurrence(seqs, corpus, n)
    if task == "global":
        out = [global_counts_result(test, stats, n, cfg)]
    else:
        xf, xt = binary_features(fit, task, stats, n), binary_features(test, task, stats, n)
        out = [binary_result("counts", task, xf, fit, xt, test, nn.Linear(xf.shape[1], 1), cfg)]
    if run is not None:
        torch.manual_seed(cfg.seed)
        model, _ = load_run_model(run)
        out.append(encoder_result(f"encoder:{run}", task, model, fit, test, cfg, ccfg))
        if random_encoder:
            spec = read_json(run / "model_config.json")
            out.append(encoder_result("random-encoder", task, build_model(spec["model"], spec["config"]), fit, test,
                                      cfg, ccfg))
        if own_head:
            out.append(own_head_result(run, task, test, ccfg, pool))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.task_probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="beauty, toys, sports, lastfm, NAME (in the data folder) or a .txt path")
    p.add_argument("--data-dir", default=None, help="data folder (default: $SSI_DATA_DIR, else ./data)")
    p.add_argument("--task", required=True, choices=VARIANTS)
    p.add_argument("--run", type=Path, default=None, help="a finished teacher run: probe its frozen encoder")
    p.add_argument("--random-encoder", action="store_true", help="also probe a fresh encoder of the run's config")
    p.add_argument("--own-head", action="store_true", help="also read the run's own head (checkpoint.pt, last epoch)")
    p.add_argument("--write-subset", type=Path, default=None, metavar="FILE",
                   help="write the dataset without the probe's test users to FILE and exit")
    p.add_argument("--views", type=int, default=ProbeConfig.views, help="augmented copies per user")
    p.add_argument("--max-users", type=int, default=ProbeConfig.max_users)
    p.add_argument("--seed", type=int, default=ProbeConfig.seed)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if (args.random_encoder or args.own_head) and args.run is None:
        raise SystemExit("--random-encoder and --own-head need --run (a finished teacher folder)")
    cfg = ProbeConfig(views=args.views, max_users=args.max_users, seed=args.seed)
    ds = load_dataset(args.dataset, args.data_dir)
    if args.write_subset:
        print(f"{args.write_subset}: {write_subset(ds, cfg, args.write_subset)} of {ds.num_users} users")
        return 0
    results = run_probes(ds, args.task, cfg, args.run, args.random_encoder, args.own_head)
    rows = [{"dataset": ds.name, **asdict(r)} for r in results]
    for r in rows:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps({"config": asdict(cfg), "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
