"""The paper's reported numbers (SSI, IJCAI 2021), for side-by-side tables.

Table 2 (every cell: four datasets, eight models, Recall and NDCG at 5, 10, 15 and 20) and Table 3 (the
imitation ablation, Beauty, HGN student), sampled protocol: the test target ranked among 99 sampled
negatives, leave-one-out. Carried here as numbers; ``tests/test_paper_tables.py`` checks them against
the transcription of the paper (``table2.csv``, ``table3.csv``) where that file is present. The paper's
"SSI" row is ``ssi_hgn`` (HGN student); ``s3rec`` is S3-Rec without attributes. The Musical Instruments
data (``musical``) has no public preprocessed copy, so no run of this project meets that row.
"""
from __future__ import annotations

#: Table 2's metric columns, in the order of the rows below.
COLUMNS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@15", "ndcg@15", "recall@20", "ndcg@20")

_TABLE2_ROWS: dict[str, dict[str, tuple[float, ...]]] = {
    "beauty": {
        "mostpop":     (0.204, 0.124, 0.297, 0.172, 0.346, 0.188, 0.412, 0.197),
        "s3rec":       (0.369, 0.285, 0.470, 0.321, 0.539, 0.338, 0.588, 0.351),
        "grec":        (0.375, 0.282, 0.470, 0.314, 0.533, 0.333, 0.576, 0.343),
        "bert4rec":    (0.378, 0.290, 0.471, 0.320, 0.541, 0.338, 0.591, 0.350),
        "gru4rec":     (0.279, 0.206, 0.366, 0.234, 0.429, 0.250, 0.482, 0.263),
        "hgn":         (0.378, 0.288, 0.470, 0.317, 0.531, 0.334, 0.580, 0.345),
        "ssi_gru4rec": (0.385, 0.292, 0.473, 0.326, 0.548, 0.343, 0.604, 0.356),
        "ssi_hgn":     (0.389, 0.298, 0.487, 0.329, 0.551, 0.345, 0.605, 0.358),
    },
    "toys": {
        "mostpop":     (0.182, 0.103, 0.235, 0.141, 0.299, 0.169, 0.332, 0.178),
        "s3rec":       (0.350, 0.265, 0.458, 0.303, 0.530, 0.332, 0.586, 0.336),
        "grec":        (0.359, 0.262, 0.460, 0.295, 0.525, 0.319, 0.576, 0.329),
        "bert4rec":    (0.353, 0.268, 0.459, 0.302, 0.529, 0.321, 0.584, 0.334),
        "gru4rec":     (0.216, 0.146, 0.313, 0.177, 0.381, 0.195, 0.438, 0.209),
        "hgn":         (0.364, 0.275, 0.463, 0.307, 0.528, 0.325, 0.580, 0.335),
        "ssi_gru4rec": (0.366, 0.270, 0.465, 0.308, 0.532, 0.328, 0.588, 0.342),
        "ssi_hgn":     (0.369, 0.280, 0.470, 0.313, 0.539, 0.331, 0.595, 0.344),
    },
    "sports": {
        "mostpop":     (0.199, 0.122, 0.274, 0.145, 0.301, 0.183, 0.368, 0.194),
        "s3rec":       (0.345, 0.252, 0.462, 0.285, 0.540, 0.307, 0.605, 0.324),
        "grec":        (0.288, 0.203, 0.378, 0.241, 0.464, 0.267, 0.502, 0.282),
        "bert4rec":    (0.347, 0.252, 0.463, 0.290, 0.541, 0.311, 0.603, 0.325),
        "gru4rec":     (0.234, 0.160, 0.335, 0.193, 0.405, 0.211, 0.464, 0.225),
        "hgn":         (0.309, 0.227, 0.416, 0.261, 0.489, 0.281, 0.547, 0.294),
        "ssi_gru4rec": (0.357, 0.254, 0.467, 0.296, 0.549, 0.318, 0.608, 0.329),
        "ssi_hgn":     (0.361, 0.263, 0.479, 0.301, 0.558, 0.322, 0.619, 0.336),
    },
    "musical": {
        "mostpop":     (0.126, 0.048, 0.179, 0.079, 0.206, 0.103, 0.236, 0.117),
        "s3rec":       (0.243, 0.179, 0.322, 0.206, 0.374, 0.211, 0.419, 0.224),
        "grec":        (0.232, 0.175, 0.298, 0.194, 0.356, 0.211, 0.401, 0.223),
        "bert4rec":    (0.244, 0.177, 0.326, 0.204, 0.381, 0.218, 0.422, 0.228),
        "gru4rec":     (0.199, 0.148, 0.279, 0.174, 0.341, 0.190, 0.394, 0.203),
        "hgn":         (0.227, 0.171, 0.299, 0.194, 0.355, 0.209, 0.399, 0.219),
        "ssi_gru4rec": (0.234, 0.172, 0.328, 0.202, 0.389, 0.218, 0.428, 0.228),
        "ssi_hgn":     (0.246, 0.188, 0.331, 0.213, 0.388, 0.228, 0.427, 0.239),
    },
}

#: dataset -> model -> metric -> value (SSI paper, Table 2, sampled protocol with 99 negatives).
TABLE2: dict[str, dict[str, dict[str, float]]] = {
    ds: {model: dict(zip(COLUMNS, values, strict=True)) for model, values in models.items()}
    for ds, models in _TABLE2_ROWS.items()
}

#: Table 3: the dataset and student of the imitation ablation.
TABLE3_DATASET, TABLE3_STUDENT = "beauty", "hgn"
#: run_all's name of each Table 3 row -> the paper's label of that variant.
TABLE3_VARIANTS: dict[str, str] = {
    "ssi_hgn": "ssi (KL + MSE)",
    "ssi_hgn_no_mse": "w/o item representation imitation (KL only)",
    "ssi_hgn_no_kl": "w/o prediction distribution imitation (MSE only)",
    "hgn": "w/o both (student alone)",
}
#: SSI paper, Table 3 (Beauty, HGN student): run_all's row name -> metric -> value.
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
