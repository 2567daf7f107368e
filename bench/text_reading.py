"""Rows/s of reading and tokenising a large CSV: lightdist's table reader and token cache against plain
pandas + tokenizers.

A CSV of --size-gb (default 1.0) is written to a temporary folder from the real BBC News articles
($LIGHTDIST_DATA/bbc-news; columns id, text, label; the 2,225 articles repeated, each row with its
own id) and a WordPiece tokenizer is trained on the articles (data=text_table's settings: 20,000
tokens, 256 tokens kept per text). Then each side runs once, in its own child process (so that
its peak memory is its own), one after the other:

- lightdist: TableCorpus.load(cache_dir=...) (pyarrow streams the CSV into an Arrow file in the
  cache and memory-maps it; a load without the cache, parsing into memory only, is timed too), then the data module's tokenising path: TokenCache.get, which
  encodes the text column in batches of 8,192 (tokenizers' encode_batch on all cores) and writes
  the ids to the cache. A second load (what a resume or an eval does) is timed as well.
- plain: pandas.read_csv, then Tokenizer.encode_batch of the same tokenizer.json over the same
  batches, the ids kept as int32 arrays in memory.

Reported: read and tokenise times and rows/s separately, the peak resident memory of each child
(getrusage's maxrss over the whole child, which counts the memory-mapped file pages it touched and
lightdist's in-memory read; and the peak of its anonymous memory, sampled, over reading and
tokenising), the ratios, the machine's load. The CSV is deleted afterwards.

    python bench/text_reading.py                 # 1 GB
    python bench/text_reading.py --size-gb 0.05  # a quick check
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, write_result  # noqa: E402

BATCH = 8192  # texts per encode_batch call, on both sides (lightdist's tokenizer.BATCH)
TOKENIZER = {"model": "wordpiece", "vocab_size": 20000, "min_frequency": 2, "lowercase": True, "max_length": 256}


# -- preparing: the CSV and the tokenizer ------------------------------------------------------------
def write_csv(path: Path, size_bytes: int) -> tuple[int, list[str]]:
    """BBC News rows repeated (each with its own id) until the file holds `size_bytes`; (rows, texts)."""
    from lightdist.text.data.corpora import FolderCorpus

    table = FolderCorpus(str(DATA / "bbc-news"), fallback_encoding="cp1252").load().train
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    rows = 0
    with open(path, "w", newline="", encoding="utf-8", buffering=1 << 22) as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        while f.tell() < size_bytes:
            writer.writerows((rows + i, text, label) for i, (text, label) in enumerate(zip(texts, labels)))
            rows += len(texts)
    return rows, texts


def train_tokenizer(texts: list[str], path: Path) -> None:
    from lightdist.text.data.tokenizer import TextTokenizer

    TextTokenizer(**TOKENIZER).fit(texts).save(path)


# -- the two sides (each in a child process) ----------------------------------------------------------
class AnonPeak:
    """The peak of this process's anonymous resident memory (RssAnon), sampled every 20 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def side_lightdist(csv_path: Path, tokenizer_path: Path, work: Path) -> dict:
    from lightdist.text.data.corpora import TableCorpus
    from lightdist.text.data.token_cache import TokenCache, read_entry
    from lightdist.text.data.tokenizer import TextTokenizer

    corpus = TableCorpus(str(csv_path), text_columns="text", label_column="label")
    start = time.perf_counter()
    table = corpus.load(cache_dir=work / "cache").train
    read = time.perf_counter() - start
    read_peak = PEAK.peak
    start = time.perf_counter()
    again = corpus.load(cache_dir=work / "cache").train  # a resume or an eval: the memory-mapped copy
    reread = time.perf_counter() - start
    assert again.num_rows == table.num_rows
    tokenizer = TextTokenizer()
    tokenizer.load(tokenizer_path)
    start = time.perf_counter()
    ids, offsets = read_entry(TokenCache(work / "cache" / "tokens").get(tokenizer, table.column("text")))
    tokenize = time.perf_counter() - start
    peak = PEAK.peak
    start = time.perf_counter()
    assert corpus.load().train.num_rows == table.num_rows  # without a cache: parsed into memory only (not in the peak)
    in_memory = time.perf_counter() - start
    return {"rows": table.num_rows, "tokens": int(offsets[-1]), "read_s": read, "reread_s": reread,
            "read_in_memory_s": in_memory, "tokenize_s": tokenize, "peak_anon_after_read_mb": round(read_peak / 2**20, 1),
            "peak_anon_mb": round(peak / 2**20, 1)}


def side_plain(csv_path: Path, tokenizer_path: Path, work: Path) -> dict:
    from itertools import chain

    import numpy as np
    import pandas as pd
    from tokenizers import Tokenizer

    start = time.perf_counter()
    frame = pd.read_csv(csv_path)
    read = time.perf_counter() - start
    read_peak = PEAK.peak
    tokenizer = Tokenizer.from_file(str(tokenizer_path))  # truncation to 256 is part of the file
    start = time.perf_counter()
    texts = frame["text"]
    kept = []
    for at in range(0, len(texts), BATCH):
        encodings = tokenizer.encode_batch(texts.iloc[at:at + BATCH].tolist())
        kept.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int32))
    tokenize = time.perf_counter() - start
    return {"rows": len(frame), "tokens": int(sum(len(k) for k in kept)), "read_s": read, "tokenize_s": tokenize,
            "peak_anon_after_read_mb": round(read_peak / 2**20, 1)}


def run_side(name: str, csv_path: Path, tokenizer_path: Path, work: Path) -> dict:
    """One side in a fresh interpreter; its result and peak memory come back as JSON."""
    proc = subprocess.run([sys.executable, __file__, "--side", name, "--csv", str(csv_path), "--tokenizer",
                           str(tokenizer_path), "--work", str(work)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


PEAK: AnonPeak


def child(args) -> None:
    import resource

    global PEAK
    PEAK = AnonPeak()
    result = {"lightdist": side_lightdist, "plain": side_plain}[args.side](args.csv, args.tokenizer, args.work)
    result.setdefault("peak_anon_mb", round(PEAK.stop() / 2**20, 1))
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    print(json.dumps(result))


# -- the comparison ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the CSV written (10^9 bytes)")
    parser.add_argument("--name", default="text_reading", help="result file bench/results/<name>.json")
    parser.add_argument("--side", choices=["lightdist", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="text-reading-") as tmp:
        tmp = Path(tmp)
        csv_path, tokenizer_path = tmp / "bbc_rows.csv", tmp / "tokenizer.json"
        start = time.perf_counter()
        rows, texts = write_csv(csv_path, int(args.size_gb * 1e9))
        size = csv_path.stat().st_size
        print(f"wrote {csv_path.name}: {rows:,} rows, {size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s",
              flush=True)
        train_tokenizer(texts, tokenizer_path)
        sides = {}
        for name in ("lightdist", "plain"):
            (tmp / name).mkdir()
            os.sync()  # start from a written-back page cache: the user's file exists already, nothing is pending
            sides[name] = run_side(name, csv_path, tokenizer_path, tmp / name)
            s = sides[name]
            for step in ("read", "tokenize"):
                s[f"{step}_rows_per_s"] = round(s["rows"] / s[f"{step}_s"])
            print(f"{name:9s} read {s['read_s']:7.1f} s ({s['read_rows_per_s']:>9,} rows/s)  tokenise "
                  f"{s['tokenize_s']:7.1f} s ({s['tokenize_rows_per_s']:>9,} rows/s)  max RSS {s['max_rss_mb']:,.0f} MB"
                  f"  peak anonymous {s['peak_anon_mb']:,.0f} MB" + (
                      f"  read again {s['reread_s']:.2f} s, into memory only {s['read_in_memory_s']:.1f} s"
                      if "reread_s" in s else ""), flush=True)
    light, plain = sides["lightdist"], sides["plain"]
    if (light["rows"], light["tokens"]) != (plain["rows"], plain["tokens"]):
        raise SystemExit(f"the sides disagree: lightdist {light['rows']} rows / {light['tokens']} tokens, "
                         f"plain {plain['rows']} / {plain['tokens']}")
    ratios = {f"{step}_speed": round(plain[f"{step}_s"] / light[f"{step}_s"], 3) for step in ("read", "tokenize")}
    ratios["read_in_memory_speed"] = round(plain["read_s"] / light["read_in_memory_s"], 3)
    ratios["total_speed"] = round((plain["read_s"] + plain["tokenize_s"]) / (light["read_s"] + light["tokenize_s"]), 3)
    ratios["peak_anon_memory"] = round(light["peak_anon_mb"] / plain["peak_anon_mb"], 3)
    print("lightdist / plain: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    for s in sides.values():
        for key in ("read_s", "reread_s", "read_in_memory_s", "tokenize_s"):
            if key in s:
                s[key] = round(s[key], 2)
    result = {"csv_bytes": size, "rows": rows, "tokens": light["tokens"], "tokenizer": TOKENIZER,
              "batch": BATCH, "lightdist": light, "plain": plain, "lightdist_over_plain": ratios,
              "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    print(f"wrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
