"""
What a row is: the row formats of the authors' released datasets, reading and checking JSON / JSON-lines files of
rows (one clear sentence per bad file, row or field), and scores to preference pairs (paper appendix A.5). Which
files make a task is data.py.

Rows are plain dicts, in the formats of the authors' released datasets (JSON list or JSON lines, one object a row):
  pairs   prompt, response_chosen, response_rejected         SHP, CValues, and the essays' "pref" files
  mcq     prompt, correct, wrong_a, wrong_b, wrong_c, wrong_d  odd-one-out (1 right answer, 4 wrong ones)
  scores  text, label (an integer score, 1..6)                 essays
  text    an unlabelled target row: a pairs or mcq row, or a row with a text field (a scores row without the
          need for a label). Labels are never read, but every text the model will see must be a non-empty string.
Scores and text rows may have a prompt too (the real sentiment tasks' fixed instruction); the prompt may be "" (the
essays' pairs have none); every response, answer and text must be non-empty.
Extra fields are kept and ignored.

What is subtle:
- scores_to_pairs (appendix A.5) pairs only neighbouring score levels. The lowest level can never be the chosen
  side of a pair, and the highest can never be the rejected side. So the paper's "every example is chosen at least
  once" holds for every level above the lowest; every example appears in at least one pair.
"""
import json
import os
import random
import re

from checkpoint import MAX_DEPTH, check_file, nested_deeper

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


def show(value, n=40):
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "..."


TOO_DEEP = object()  # what json.loads gave when it ran out of recursion


def _read_json(path):
    """The rows of a JSON list or JSON lines file, and for each row a 'file, row N' string for error messages."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: expected a JSON list or JSON lines file of rows")
    check_file(path, "a JSON list or JSON lines file of rows")  # a FIFO or /dev/zero: said as such
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark is not part of the JSON
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line} is not UTF-8 text (byte {raw[e.start]:#04x} at byte {e.start} of the "
                         "file): expected a JSON list or JSON lines file of rows") from None
    body = text.lstrip()
    if not body:
        raise ValueError(f"{path} is empty: expected a JSON list of rows, or JSON lines (one object per line)")
    if body[0] == "[":  # one JSON document holding the list of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        except RecursionError:
            rows = TOO_DEEP  # said below, where its traceback is not chained
        if rows is TOO_DEEP or nested_deeper(rows):
            raise ValueError(f"{path} nests JSON arrays or objects more than {MAX_DEPTH} levels deep")
        if not rows:
            raise ValueError(f"{path} holds an empty list: expected at least one row")
        where = [f"{path}, row {i + 1}" for i in range(len(rows))]
        return _text_only(rows, where, text), where
    if body[0] != "{":
        raise ValueError(f"{path} starts with {body[:20]!r}: expected a JSON list ('[') of rows, "
                         "or JSON lines (one object per line, each starting with '{')")
    rows, where = [], []
    # split on "\n" only: str.splitlines() would also split at U+2028 and friends, which JSON strings may contain raw
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                                 "a JSON lines file holds one complete object per line") from None
            except RecursionError:
                row = TOO_DEEP  # said below, where its traceback is not chained
            if row is TOO_DEEP or nested_deeper(row):
                raise ValueError(f"{path}, line {n} nests JSON arrays or objects more than {MAX_DEPTH} levels deep")
            rows.append(row)
            where.append(f"{path}, row {len(rows)} (line {n})")
    return _text_only(rows, where, text), where


# a \ud800-\udfff escape: JSON lets one stand alone, which then decodes to no character (a "lone surrogate")
SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _text_only(rows, where, text):
    """rows, refused in one sentence naming the row and field if a string in them is not text: a lone surrogate,
    which no encoder accepts, so the tokenizer, a log or a fingerprint would fail on it later, far from here."""
    if SURROGATE.search(text):  # only then can a parsed string hold one
        for row, w in zip(rows, where):
            for field, value in (row.items() if isinstance(row, dict) else [("", row)]):
                if _not_text(field) or _not_text(value):
                    raise ValueError(f"{w}: field {json.dumps(field)} holds a lone surrogate (an escape such as "
                                     "\\ud800 that stands for no character); expected text")
    return rows


def _not_text(x):
    """True if x (parsed JSON) holds a string, or an object key, that UTF-8 cannot encode; iterative."""
    stack = [x]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack += [*x, *x.values()]
        elif isinstance(x, list):
            stack += x
    return False


def _shape(row, where):
    """Which kind of row this is, judged by its fields: 'pairs', 'mcq' or 'text'."""
    if "response_chosen" in row or "response_rejected" in row:
        return "pairs"
    if "correct" in row or any(f"wrong_{c}" in row for c in "abcd"):
        return "mcq"
    if "text" in row:
        return "text"
    fields = ", ".join(show(k, 30) for k in sorted(row)[:12]) or "none"  # quoted: a name may hold a newline
    raise ValueError(f"{where}: cannot tell which kind of row this is (its fields: {fields}); expected the fields "
                     f"of a pairs row ({', '.join(FIELDS['pairs'])}), a multiple-choice row "
                     f"({', '.join(FIELDS['mcq'])}) or a text row (text)")


def check_label(row, where):
    # Integers, and floats with an integral value (4.0, as pandas writes them), are scores. Strings ("4") and booleans
    # are not: the authors' loader turns labels into tensors, so a string label means a broken file.
    value = row["label"]
    integral = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not integral or not SCORES[0] <= value <= SCORES[1]:
        raise ValueError(f"{where}: field 'label' should be an integer score from {SCORES[0]} to {SCORES[1]}, "
                         f"found {_json_type(value)} {show(value)}")
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
                             f"{show(row[field])}")
        if field != "prompt" and not row[field].strip():
            raise ValueError(f"{where}: field '{field}' is empty; it is a text the reward model scores")
    read_as = "pairs" if "response_chosen" in row else "mcq" if "correct" in row else "text"  # as row_sequences does
    if read_as != (kind if kind in ("pairs", "mcq") else "text"):
        field = "response_chosen" if read_as == "pairs" else "correct"
        raise ValueError(f"{where} is a {KIND_NAMES[kind]} row with the field '{field}' of a {KIND_NAMES[read_as]} "
                         "row, which would decide what is scored; a row holds the fields of one kind")
    if "prompt" not in FIELDS[kind] and not isinstance(row.get("prompt", ""), str):  # optional on scores and text rows
        raise ValueError(f"{where}: field 'prompt' should be a string, found {_json_type(row['prompt'])} "
                         f"{show(row['prompt'])}")
    if kind == "scores":
        row = {**row, "label": check_label(row, where)}
    return row


def load_any(path, kind):
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
    return load_any(path, kind)[0]


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
