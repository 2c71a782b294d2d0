"""The paper's evaluation protocol, shared by training, export and serving.

Data loading, the leave-one-out split, the stored sampled negatives and the metrics live here,
so that ``/eval`` on the server computes exactly what training reports. Imports only numpy.
"""
from protocol.data import DataError, SequenceDataset, load_dataset, resolve_data_dir
from protocol.evaluate import Scorer, evaluate
from protocol.metrics import KS, metrics_from_ranks, pessimistic_ranks
from protocol.negatives import Negatives, load_or_create_negatives
from protocol.split import eval_examples, pad_left, train_sequences

__all__ = [
    "KS",
    "DataError",
    "Negatives",
    "Scorer",
    "SequenceDataset",
    "eval_examples",
    "evaluate",
    "load_dataset",
    "load_or_create_negatives",
    "metrics_from_ranks",
    "pad_left",
    "pessimistic_ranks",
    "resolve_data_dir",
    "train_sequences",
]
