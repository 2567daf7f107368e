"""Small text corpora that tests write in the exact on-disk formats the loaders read.

Each class has its own topic words, so that a model can learn something from a few
hundred samples; every text also gets words shared by all classes.
"""

import csv
import json
import random
from pathlib import Path

TOPICS = {
    "World": "election minister president war embassy treaty border refugees summit parliament",
    "Sports": "match goal striker league champion tennis coach season stadium tournament",
    "Business": "shares profit market bank economy investors quarter growth prices company",
    "Sci/Tech": "software internet computer chip phone researchers space network data google",
}
SHARED = "the a on in today said report new after over with for and".split()


def sentence(rng: random.Random, cls: str, words: int = 12) -> str:
    topic = TOPICS[cls].split()
    return " ".join(rng.choice(topic) if rng.random() < 0.5 else rng.choice(SHARED) for _ in range(words))


def write_ag_news(root: Path, train_per_class: int = 60, test_per_class: int = 15, seed: int = 0,
                  classes_txt: bool = True) -> Path:
    """root/ag_news_csv/{train,test}.csv (+ classes.txt): "index","title","description", no header, all quoted."""
    rng = random.Random(seed)
    folder = root / "ag_news_csv"
    folder.mkdir(parents=True, exist_ok=True)
    names = list(TOPICS)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        rows = [(str(i + 1), sentence(rng, name, 5).title(), sentence(rng, name) + " \\ more, \"quoted\" text")
                for i, name in enumerate(names) for _ in range(per_class)]
        rng.shuffle(rows)
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
    if classes_txt:
        (folder / "classes.txt").write_text("\n".join(names) + "\n")
    return folder


def write_folder_corpus(root: Path, per_class: int = 20, seed: int = 0, classes=("business", "sports", "tech")) -> Path:
    rng = random.Random(seed)
    mapping = dict(zip(classes, ["Business", "Sports", "Sci/Tech"]))
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            text = sentence(rng, mapping[cls], 5).capitalize() + "\n\n" + sentence(rng, mapping[cls], 30)
            (root / cls / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


def rows(n_per_class: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = [{"title": sentence(rng, c, 4), "body": sentence(rng, c), "topic": c} for c in TOPICS for _ in range(n_per_class)]
    rng.shuffle(out)
    return out


def write_table(path: Path, records: list[dict], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        writer.writerows(records)
    return path


BBC_TOPICS = {
    "business": "shares profit market bank economy investors quarter growth prices company",
    "entertainment": "film music award actor singer album festival box office director",
    "politics": "election minister labour tory party vote parliament campaign policy government",
    "sports": "match goal striker league champion tennis coach season stadium tournament",
    "tech": "software internet computer chip phone broadband users network games mobile",
}


def write_bbc_news(root: Path, per_class: int = 220, seed: int = 0) -> Path:
    """root/bbc-news/<topic>/NNN.txt like the real corpus: a headline, a blank line, the article.

    One article is cp1252 (a pound sign), as sports/199.txt of the real corpus, so that the
    configured fallback encoding is exercised.
    """
    rng = random.Random(seed)
    folder = root / "bbc-news"
    for topic, words in BBC_TOPICS.items():
        (folder / topic).mkdir(parents=True)
        vocabulary = words.split()
        for i in range(1, per_class + 1):
            head, *paragraphs = (" ".join(rng.choice(vocabulary) if rng.random() < 0.4 else rng.choice(SHARED)
                                          for _ in range(n)).capitalize() for n in (6, 40, 30))
            text = f"{head}\n\n" + "".join(f"{p}.\n\n" for p in paragraphs)
            encoding = "utf-8"
            if topic == "sports" and i == min(199, per_class):
                text, encoding = text + "The deal is worth \u00a315.8m.\n", "cp1252"
            (folder / topic / f"{i:03d}.txt").write_text(text, encoding=encoding)
    return folder
