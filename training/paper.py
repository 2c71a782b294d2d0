"""The paper's reported numbers (SSI, IJCAI 2021), for side-by-side tables.

Only the values quoted in the project's field notes are listed (Recall@10 / NDCG@10); the other
cells of the paper's tables are left empty rather than guessed.
"""
from __future__ import annotations

# dataset -> model -> metric -> value (SSI paper, Table 2, sampled protocol with 99 negatives)
TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "beauty": {
        "mostpop": {"recall@10": 0.297, "ndcg@10": 0.172},
        "gru4rec": {"recall@10": 0.366, "ndcg@10": 0.234},
        "hgn": {"recall@10": 0.470, "ndcg@10": 0.317},
        "bert4rec": {"recall@10": 0.471, "ndcg@10": 0.320},
        "s3rec": {"recall@10": 0.470, "ndcg@10": 0.321},
        "grec": {"recall@10": 0.470, "ndcg@10": 0.314},
        "ssi_gru4rec": {"recall@10": 0.473, "ndcg@10": 0.326},
        "ssi_hgn": {"recall@10": 0.487, "ndcg@10": 0.329},
    },
    "toys": {
        "mostpop": {"recall@10": 0.235, "ndcg@10": 0.141},
        "ssi_hgn": {"recall@10": 0.470, "ndcg@10": 0.313},
    },
    "sports": {"ssi_hgn": {"recall@10": 0.479, "ndcg@10": 0.301}},
}

# SSI paper, Table 3 (Beauty, HGN student): imitation ablation.
TABLE3: dict[str, dict[str, float]] = {
    "ssi_hgn": {"recall@10": 0.487, "ndcg@10": 0.329},
    "ssi_hgn_no_mse": {"recall@10": 0.483, "ndcg@10": 0.325},
    "ssi_hgn_no_kl": {"recall@10": 0.478, "ndcg@10": 0.321},
    "hgn": {"recall@10": 0.470, "ndcg@10": 0.317},
}

# S3-Rec authors (CIKM 2020) on the same Beauty files, HR@10 / NDCG@10: sampled and full ranking.
S3REC_AUTHORS_BEAUTY: dict[str, dict[str, dict[str, float]]] = {
    "sampled": {"sasrec": {"recall@10": 0.4696, "ndcg@10": 0.3156}, "hgn": {"recall@10": 0.4503, "ndcg@10": 0.2965},
                "bert4rec": {"recall@10": 0.4739, "ndcg@10": 0.2975}},
    "full": {"sasrec": {"recall@10": 0.0605, "ndcg@10": 0.0318}, "hgn": {"recall@10": 0.0512, "ndcg@10": 0.0266},
             "bert4rec": {"recall@10": 0.0347, "ndcg@10": 0.0170}, "gru4rec": {"recall@10": 0.0283, "ndcg@10": 0.0137}},
}
