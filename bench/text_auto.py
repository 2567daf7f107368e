"""`+experiment=text_auto` against the shipped BBC fastText recipe and TF-IDF + logistic regression.

Three real corpora built from the BBC News articles under $LIGHTDIST_DATA/bbc-news:

- articles:  the 2,225 articles themselves (`data=bbc_news`, a folder corpus);
- headlines: the first line of each article alone (a CSV): a short-text task of the same topics;
- sentences: every sentence of the article bodies with at least 5 words (a CSV, about 40,000
  short texts): a larger corpus. Sentences of one article land in different splits, so this is
  an easier task than unseen articles would be; it is the same for the three contenders.

Every contender sees the same splits: the data module's seeded stratified split (the baseline
asks the data module built from the run's config for them). Test accuracy of the best
validation checkpoint for the two lightdist recipes.

    python bench/text_auto.py                          # all three corpora
    python bench/text_auto.py --corpora headlines --contenders auto tfidf

Needs scikit-learn for the baseline: pip install "lightdist[bench]". Results:
bench/results/text_auto.json (merged per corpus and contender, so corpora can be run apart).
"""

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, REPO, RESULTS, write_result  # noqa: E402

CORPORA = ("articles", "headlines", "sentences")
CONTENDERS = ("auto", "fasttext", "tfidf")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _articles() -> list[tuple[str, str]]:
    """(text, topic) of every BBC News article; one file is cp1252."""
    out = []
    for path in sorted((DATA / "bbc-news").glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252")
        out.append((text, path.parent.name))
    return out


def write_headlines(path: Path) -> Path:
    rows = [(text.strip().splitlines()[0].strip(), topic) for text, topic in _articles()]
    return _write(path, rows)


def write_sentences(path: Path, min_words: int = 5) -> Path:
    rows = []
    for text, topic in _articles():
        body = " ".join(text.strip().splitlines()[1:])
        rows += [(s.strip(), topic) for s in _SENTENCE_END.split(body) if len(s.split()) >= min_words]
    return _write(path, rows)


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def data_overrides(corpus: str, work: Path) -> list[str]:
    """How a run reads `corpus` (a folder corpus for the articles, a CSV table for the others)."""
    if corpus == "articles":
        return ["data=bbc_news"]
    path = work / f"bbc_{corpus}.csv"
    if not path.exists():
        (write_headlines if corpus == "headlines" else write_sentences)(path)
    return ["data=text_table", f"data.corpus.train={path}"]


def recipe_overrides(contender: str) -> list[str]:
    if contender == "auto":
        return ["+experiment=text_auto"]
    # the shipped BBC recipe, its data switched to the corpus (its tokenizer settings kept)
    return ["+experiment=bbc_news_fasttext", "data.tokenizer.model=word"]


def run_lightdist(corpus: str, contender: str, work: Path) -> dict:
    run_dir = work / f"{corpus}-{contender}"
    overrides = [*recipe_overrides(contender), *data_overrides(corpus, work), f"hydra.run.dir={run_dir}",
                 "logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "lightdist", *overrides], cwd=REPO, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"{corpus}/{contender} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    test = summary.get("test") or {}
    out = {"test_acc": test.get("test/acc"), "test_f1": test.get("test/f1_macro"), "wall_s": round(wall, 1),
           "epochs": summary.get("epoch"), "overrides": overrides}
    plan = re.search(r"text_auto plan: (\{.*\})", (run_dir / "train.log").read_text())
    if plan:
        out["plan"] = json.loads(plan.group(1))
    return out


def run_tfidf(corpus: str, work: Path) -> dict:
    """TF-IDF (words and bigrams, sublinear tf) + logistic regression on the data module's splits."""
    from hydra.utils import instantiate
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from bench.common import compose_resolved

    started = time.time()
    cfg = compose_resolved(["+experiment=text_auto", *data_overrides(corpus, work)], work / f"{corpus}-tfidf")
    splits = instantiate(cfg.data).splits()
    texts = {s: [str(t) for t in splits[s][0]] for s in ("train", "test")}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(texts["train"])
    classifier = LogisticRegression(C=10.0, max_iter=2000).fit(features, splits["train"][1])
    predicted = classifier.predict(vectorizer.transform(texts["test"]))
    truth = splits["test"][1]
    return {"test_acc": float(accuracy_score(truth, predicted)),
            "test_f1": float(f1_score(truth, predicted, average="macro")), "wall_s": round(time.time() - started, 1),
            "sizes": {s: len(splits[s][1]) for s in ("train", "val", "test")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--work", type=Path, default=None, help="where corpora and runs go (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="text_auto_"))
    previous = RESULTS / "text_auto.json"
    results = json.loads(previous.read_text()).get("results", {}) if previous.exists() else {}
    for corpus in args.corpora:
        for contender in args.contenders:
            result = run_tfidf(corpus, work) if contender == "tfidf" else run_lightdist(corpus, contender, work)
            results.setdefault(corpus, {})[contender] = result
            print(f"{corpus:10s} {contender:9s} test acc {result['test_acc']:.4f}  ({result['wall_s']} s)", flush=True)
    print(write_result("text_auto", {"results": results}))


if __name__ == "__main__":
    main()
