"""The POST paper's reference numbers (docs/paper.md): quoted beside ours by the report and the audit, never
rerun. One place, so a table and the line in RESULTS.md that quotes it cannot disagree."""

import pandas as pd

# sst2 test accuracy (%) per target
# (Direct = the source prompt pasted onto the target), GPT2-XL's wall minutes on one A100, and online LiRA on
# prompts of RoBERTa-base (sst2, 8 shadow models; 05 writes these rows into audit.json).
PAPER = {
    "accuracy": pd.DataFrame([("Roberta-base", 72.25, 91.74, 79.10, 76.49, 87.16, 81.42),
                              ("GPT2-XL", 60.78, 94.84, 80.94, 59.06, 85.89, 84.06),
                              ("Llama2-7b", 78.67, 94.84, 78.78, 55.28, 89.33, 89.91)],
                             columns=["target", "ZS", "FullPT", "CompPT", "Direct", "POST", "POST eps=8"]),
    "minutes": {"FullPT": 2660, "tune on source": 310, "transfer": 99, "distillation": 1203},
    "wall_ratio": 6.5,  # FullPT / POST (tune on source + transfer)
    "lira": ({"setting": "no DP", "epsilon": "inf", "auc": 0.561}, {"setting": "eps=8", "epsilon": "8", "auc": 0.526}),
}
