"""data.py: file formats and their error messages, the task registry, scores to pairs, the odd-one-out generator.
Run: python -m pytest -q tests/test_data.py"""
import collections
import json
import os

import pytest

import data
import formats
from data import DEFAULTS, TASKS, labelled_target, load_task
from formats import load_rows, row_sequences, scores_to_pairs
from oddoneout import CATEGORIES, OOO_PROMPT, food_lists, oddoneout_rows

PAIR = {"prompt": "Is it legal?", "response_chosen": "Ask a lawyer.", "response_rejected": "Sure."}
MCQ = {"prompt": "Which?", "correct": "apple", "wrong_a": "cake", "wrong_b": "pie", "wrong_c": "tart",
       "wrong_d": "flan"}


def write(path, rows, jsonl=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        else:
            json.dump(rows, f, ensure_ascii=False, indent=1)
    return str(path)


def pairs(n, tag=""):
    return [{"prompt": f"q{tag}{i}", "response_chosen": f"good{tag}{i}", "response_rejected": f"bad{tag}{i}"}
            for i in range(n)]


# -----------------------------------------------------------------------------
# formats


def test_json_list_and_json_lines_give_the_same_rows(tmp_path):
    rows = pairs(3) + [{**PAIR, "prompt": "", "response_chosen": "line\u2028separator inside a string", "extra": 1}]
    a = load_rows(write(tmp_path / "a.json", rows), "pairs")
    path = write(tmp_path / "b.jsonl", rows, jsonl=True)
    with open(path, "a") as f:
        f.write("\n\n")  # blank lines are not rows
    b = load_rows(path, "pairs")
    assert a == b == rows  # extra fields kept, an empty prompt allowed, U+2028 does not split a JSON line
    with open(tmp_path / "bom.json", "w", encoding="utf-8-sig") as f:
        json.dump(rows, f)
    assert load_rows(str(tmp_path / "bom.json"), "pairs") == rows


def test_scores_labels(tmp_path):
    rows = [{"text": "an essay", "label": 4}, {"text": "another", "label": 2.0}]
    got = load_rows(write(tmp_path / "s.json", rows), "scores")
    assert [r["label"] for r in got] == [4, 2] and all(type(r["label"]) is int for r in got)
    for bad in ["4", True, 0, 7, 3.5, None, float("nan")]:
        path = write(tmp_path / "bad.json", rows + [{"text": "x", "label": bad}])
        with pytest.raises(ValueError) as e:
            load_rows(path, "scores")
        assert f"{path}, row 3" in str(e.value) and "'label'" in str(e.value) and "1 to 6" in str(e.value)


@pytest.mark.parametrize("content, kind, expected", [
    ("", "pairs", ["is empty"]),
    ("  \n", "pairs", ["is empty"]),
    ("[]", "pairs", ["empty list"]),
    ('[{"prompt": "a",\n "response_chosen": }]', "pairs", ["not valid JSON", "line 2"]),
    ('{"prompt": "a"}\n{"prompt": \n', "text", ["line 2 is not valid JSON"]),
    ("hello", "pairs", ["expected a JSON list"]),
    (json.dumps([PAIR, 5]), "pairs", ["row 2 is a number", "not an object", "response_chosen"]),
    (json.dumps([PAIR, {"prompt": "a", "response_chosen": "b"}]), "pairs", ["row 2", "'response_rejected'", "missing"]),
    (json.dumps([{**PAIR, "prompt": 3}]), "pairs", ["row 1", "'prompt'", "should be a string", "a number 3"]),
    (json.dumps([PAIR, {**PAIR, "response_chosen": "  "}]), "pairs", ["row 2", "'response_chosen'", "is empty"]),
    (json.dumps([MCQ, {**MCQ, "wrong_c": None}]), "mcq", ["row 2", "'wrong_c'", "should be a string", "null"]),
    (json.dumps([{"text": "", "label": 3}]), "scores", ["row 1", "'text'", "is empty"]),
    (json.dumps([{"text": "a"}]), "scores", ["row 1", "'label'", "missing"]),
    (json.dumps([PAIR, MCQ]), "text", ["row 2 is a multiple-choice row", "row 1 is a pairs row"]),
    (json.dumps([{"question": "a"}]), "text", ["row 1", "cannot tell", "question"]),
    (json.dumps([{"text": 5}]), "text", ["row 1", "'text'", "should be a string"]),
    ("\n" + json.dumps(PAIR) + "\n\n" + json.dumps({**PAIR, "response_rejected": 1}) + "\n", "pairs",
     ["row 2 (line 4)", "'response_rejected'"]),
])
def test_bad_files_name_file_row_and_field(tmp_path, content, kind, expected):
    path = tmp_path / "rows.json"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        load_rows(str(path), kind)
    message = str(e.value)
    assert message.startswith(str(path)), message
    for part in expected:
        assert part in message, message


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_rows(str(tmp_path / "nope.json"), "pairs")
    with pytest.raises(ValueError, match="unknown row kind 'pair'"):
        load_rows(write(tmp_path / "a.json", [PAIR]), "pair")


def test_text_rows_accept_every_shape_and_ignore_labels(tmp_path):
    for rows in ([PAIR], [MCQ], [{"text": "an essay"}], [{"text": "an essay", "label": "not read"}]):
        assert load_rows(write(tmp_path / "t.json", rows), "text") == rows
    assert row_sequences(PAIR) == [("Is it legal?", "Ask a lawyer."), ("Is it legal?", "Sure.")]
    assert row_sequences(MCQ) == [("Which?", x) for x in ("apple", "cake", "pie", "tart", "flan")]
    assert row_sequences({"text": "an essay", "label": 3}) == [("", "an essay")]


# -----------------------------------------------------------------------------
# scores to pairs


def score_rows(counts):
    return [{"text": f"essay {label}.{i}", "label": label} for label, n in counts.items() for i in range(n)]


def test_scores_to_pairs_coverage():
    rows = score_rows({1: 7, 2: 3, 3: 12, 4: 1, 5: 5, 6: 2})
    out = scores_to_pairs(rows, seed=0)
    label = {r["text"]: r["label"] for r in rows}
    for p in out:
        formats._check(p, "pairs", "pair")  # a valid pairs row
        assert p["prompt"] == ""
        assert label[p["response_chosen"]] - label[p["response_rejected"]] == 1  # neighbouring levels only
        assert (p["score_chosen"], p["score_rejected"]) == (label[p["response_chosen"]], label[p["response_rejected"]])
    chosen = collections.Counter(p["response_chosen"] for p in out)
    rejected = collections.Counter(p["response_rejected"] for p in out)
    assert set(chosen) | set(rejected) == set(label)  # every example appears
    assert set(chosen) == {t for t, s in label.items() if s > 1}  # chosen at least once iff a lower level exists
    assert set(rejected) == {t for t, s in label.items() if s < 6}  # rejected at least once iff a higher level exists
    assert len(out) == sum(max(a, b) for a, b in [(7, 3), (3, 12), (12, 1), (1, 5), (5, 2)])
    assert len({(p["response_chosen"], p["response_rejected"]) for p in out}) == len(out)  # no pair twice


def test_scores_to_pairs_seeds_and_gaps():
    rows = score_rows({1: 6, 2: 9, 3: 4})
    assert scores_to_pairs(rows, seed=3) == scores_to_pairs(rows, seed=3)
    assert scores_to_pairs(rows, seed=3) != scores_to_pairs(rows, seed=4)
    gap = scores_to_pairs(score_rows({2: 3, 5: 4}), seed=0)  # no 3 or 4: 2 and 5 are the neighbouring levels
    assert {(p["score_chosen"], p["score_rejected"]) for p in gap} == {(5, 2)} and len(gap) == 4
    with pytest.raises(ValueError, match="at least two score levels"):
        scores_to_pairs(score_rows({3: 5}))
    with pytest.raises(ValueError, match="row 1 is not a checked scores row"):
        scores_to_pairs([{"text": "a", "label": "3"}, {"text": "b", "label": 2}])


# -----------------------------------------------------------------------------
# odd-one-out


def test_food_lists():
    lists = food_lists()
    assert list(lists) == list(CATEGORIES)
    owner = {}
    for cat, items in lists.items():
        assert len(items) == 100 and len({x.lower() for x in items}) == 100, cat
        for x in items:
            assert x == x.strip().lower() and x.isascii(), x
            assert x.lower() not in owner, f"{x} is in {owner.get(x.lower())} and {cat}"
            owner[x.lower()] = cat
    assert "cookie" not in owner and "cookies" not in owner  # the paper lists cookies under desserts and snacks


def test_food_lists_reject_an_item_in_two_lists(tmp_path):
    for cat in CATEGORIES:
        (tmp_path / f"{cat}.txt").write_text("\n".join(f"{cat} {i}" for i in range(5)) + "\n")
    (tmp_path / "snacks.txt").write_text("Fruits 2\nchips\ncrackers\npretzel\n")
    with pytest.raises(ValueError, match=r"snacks.txt: item 'Fruits 2' is also in fruits.txt"):
        food_lists(str(tmp_path))


def test_oddoneout_rows():
    lists = food_lists()
    rows = oddoneout_rows("sauces", "train", n=1000, seed=0)
    assert len(rows) == 1000
    positions = collections.Counter()
    for r in rows:
        formats._check(r, "mcq", "row")
        wrong = [r[f"wrong_{c}"] for c in "abcd"]
        assert len(set(wrong)) == 4 and all(x in lists["sauces"] for x in wrong)
        assert r["correct"] not in lists["sauces"] and r["correct"] in lists[r["odd_category"]]
        items = r["prompt"][len(OOO_PROMPT):-1].split(", ")
        pos = items.index(r["correct"])
        assert items[:pos] + items[pos + 1:] == wrong
        assert r["prompt"] == ("Identify the item that does not fit. Only output the name of the item as written and "
                               "nothing else.\n\n" + ", ".join(items) + "\n")
        positions[pos] += 1
    assert sorted(positions) == [0, 1, 2, 3, 4] and all(150 <= c <= 250 for c in positions.values()), positions
    odd_categories = collections.Counter(r["odd_category"] for r in rows)
    assert set(odd_categories) == set(CATEGORIES) - {"sauces"}


def question(row):  # a question is its set of five items, whatever their order
    return frozenset([row["correct"]] + [row[f"wrong_{c}"] for c in "abcd"])


def test_oddoneout_determinism_and_disjoint_splits():
    a = oddoneout_rows("fruits", "val", n=300, seed=1)
    assert a == oddoneout_rows("fruits", "val", n=300, seed=1)
    assert a != oddoneout_rows("fruits", "val", n=300, seed=2)
    splits = {s: oddoneout_rows("fruits", s, n=300, seed=1) for s in ("train", "val", "test")}
    keys = {s: [question(r) for r in rows] for s, rows in splits.items()}
    for s in keys:
        assert len(set(keys[s])) == 300, f"a question repeats within {s}"
    assert not set(keys["train"]) & set(keys["val"]) and not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])
    items = {s: {r["wrong_a"] for r in rows} for s, rows in splits.items()}
    assert items["train"] & items["test"]  # documented: the splits share items, never questions
    # With 5 items a category there are only 5 * 20 = 100 possible questions, so 3 x 30 draws collide for sure.
    tiny = {cat: [f"{cat} {i}" for i in range(5)] for cat in CATEGORIES}
    keys = [question(r) for s in ("train", "val", "test")
            for r in oddoneout_rows("fruits", s, n=30, lists=tiny)]
    assert len(set(keys)) == 90
    with pytest.raises(ValueError, match="fewer than 120 distinct questions"):
        oddoneout_rows("fruits", "test", n=40, lists=tiny)
    with pytest.raises(ValueError, match="unknown odd-one-out category 'fruit'"):
        oddoneout_rows("fruit", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        oddoneout_rows("fruits", "dev")


# -----------------------------------------------------------------------------
# task registry and load_task


def test_registry():
    names = ([f"{s}-{l}" for s in ("legaladvice", "askscience", "explainlikeimfive") for l in ("ko", "th", "zh")]
             + [f"{s}-noisy" for s in ("legaladvice", "askscience", "explainlikeimfive")]
             + [f"cvalues-fewshot-{x}" for x in "abc"] + ["essays-short2long"]
             + [f"oddoneout-{a}-{b}" for a in CATEGORIES for b in CATEGORIES if a != b] + ["custom"]
             + ["sentiment-movies-tweets", "sentiment-movies-nyt", "sentiment-en-zh"])
    assert len(names) == 40 and sorted(TASKS) == sorted(names)
    for name, spec in TASKS.items():
        assert set(spec["defaults"]) == set(DEFAULTS), name
        if name == "custom":
            continue
        assert spec["kind"] in ("pairs", "mcq") and spec["target_kind"] in ("pairs", "mcq", "text"), name
        rated = name in ("sentiment-movies-tweets", "sentiment-movies-nyt")  # scores rows with a mean rating
        assert spec["metric"] == ("rated" if rated else
                                  {"pairs": "pairwise", "mcq": "mcq", "scores": "correlation"}[spec["eval_kind"]])
        if spec["family"] == "odd-one-out":
            assert spec["source_category"] != spec["target_category"] and spec["files"] is None
        else:
            assert set(spec["files"]) == {"source", "target", "val", "test"}, name
            for folder, stems in spec["files"].values():
                assert folder in (*data.HUB, "sentiment") and stems and all(isinstance(s, str) for s in stems), name
    d = {name: TASKS[name]["defaults"] for name in TASKS}
    assert (d["legaladvice-ko"]["batch_src"], d["legaladvice-ko"]["batch_tgt"], d["legaladvice-ko"]["epochs"],
            d["legaladvice-ko"]["batch_src_only"]) == (4, 4, 3, 8)
    assert d["askscience-noisy"]["epochs"] == 3 and d["askscience-noisy"]["weight_decay"] == 0.01
    assert (d["cvalues-fewshot-b"]["batch_src"], d["cvalues-fewshot-b"]["batch_src_only"]) == (8, 16)
    assert (d["essays-short2long"]["batch_src"], d["essays-short2long"]["epochs"],
            d["essays-short2long"]["max_length"]) == (4, 10, 1024)
    assert (d["oddoneout-snacks-fruits"]["batch_tgt"], d["oddoneout-snacks-fruits"]["batch_src_only"],
            d["oddoneout-snacks-fruits"]["epochs"]) == (8, 16, 5)
    assert TASKS["essays-short2long"]["metric"] == "correlation"


def test_load_task_oddoneout():
    t = load_task("oddoneout-desserts-fruits")
    lists = food_lists()
    assert (t["kind"], t["metric"], t["batch_src"], t["epochs"]) == ("mcq", "mcq", 8, 5)
    assert all(len(t[k]) == 1000 for k in ("source", "target", "val", "test"))
    assert all(r["wrong_a"] in lists["desserts"] for r in t["source"])
    assert all(r["wrong_a"] in lists["fruits"] for k in ("target", "val", "test") for r in t[k])
    assert t["val"] == oddoneout_rows("fruits", "val")
    with pytest.raises(ValueError, match="is generated"):
        load_task("oddoneout-desserts-fruits", source="x.json")


def test_load_task_custom(tmp_path):
    src = write(tmp_path / "src.jsonl", score_rows({1: 3, 2: 4, 3: 2}), jsonl=True)
    tgt = write(tmp_path / "tgt.json", [{"text": f"long essay {i}"} for i in range(5)])
    ev = write(tmp_path / "val.json", score_rows({2: 2, 5: 2}))
    te = write(tmp_path / "test.json", score_rows({1: 2, 4: 3}))
    t = load_task("custom", source=src, target=tgt, val=ev, test=te, seed=1)
    assert (t["kind"], t["target_kind"], t["eval_kind"], t["metric"]) == ("pairs", "text", "scores", "correlation")
    assert t["source"] == scores_to_pairs(load_rows(src, "scores"), seed=1)
    assert t["val"] == load_rows(ev, "scores") and t["test"] == load_rows(te, "scores") and len(t["target"]) == 5
    assert t["files"] == {"source": src, "target": tgt, "val": ev, "test": te}
    ev_pairs, te_pairs = write(tmp_path / "e.json", pairs(2)), write(tmp_path / "t.json", pairs(3, "t"))
    t = load_task("custom", source=write(tmp_path / "p.json", pairs(4)), target=tgt, val=ev_pairs, test=te_pairs)
    assert (t["kind"], t["metric"], t["batch_src"]) == ("pairs", "pairwise", 4)
    with pytest.raises(ValueError, match="needs a --source, a --target, a --val and a --test file .*; --test not given"):
        load_task("custom", source=src, target=tgt, val=ev)
    with pytest.raises(ValueError, match="source holds multiple-choice rows but the evaluation file holds pairs"):
        load_task("custom", source=write(tmp_path / "m.json", [MCQ]), target=tgt, val=ev_pairs, test=te_pairs)
    with pytest.raises(ValueError, match="has a text but no 'label'"):
        load_task("custom", source=tgt, target=tgt, val=ev, test=te)


def test_test_is_never_the_selection_set(tmp_path):
    """The checkpoint is chosen on validation: a test metric on the same file, or on the same rows, is refused."""
    src, tgt = write(tmp_path / "src.json", pairs(4)), write(tmp_path / "tgt.json", pairs(5, "u"))
    ev = write(tmp_path / "val.json", pairs(3, "v"))
    with pytest.raises(ValueError, match="the test file .*val.json is the validation file, which chooses the checkpoint"):
        load_task("custom", source=src, target=tgt, val=ev, test=str(tmp_path / "." / "val.json"))
    same_rows = write(tmp_path / "copy.jsonl", pairs(3, "v")[::-1], jsonl=True)  # another file, the same rows
    with pytest.raises(ValueError, match="every row of the test file .*copy.jsonl is also in the validation file"):
        load_task("custom", source=src, target=tgt, val=ev, test=same_rows)
    some = write(tmp_path / "some.json", pairs(3, "v")[:1] + pairs(2, "w"))  # an overlap that is not the whole set:
    t = load_task("custom", source=src, target=tgt, val=ev, test=some)  # the shared row dropped, and counted
    assert t["test"] == pairs(2, "w") and t["dropped"] == {"test_in_val": 1}


def test_subsets_are_seeded_and_nested():
    full = load_task("oddoneout-desserts-fruits")
    small = load_task("oddoneout-desserts-fruits", n_source=50, n_target=20)
    big = load_task("oddoneout-desserts-fruits", n_source=200, n_target=100)
    assert (len(small["source"]), len(small["target"]), len(big["source"]), len(big["target"])) == (50, 20, 200, 100)
    assert small["val"] == full["val"] and small["test"] == full["test"]  # evaluation never shrinks
    keys = lambda rows: {json.dumps(r, sort_keys=True) for r in rows}  # noqa: E731
    assert keys(small["source"]) <= keys(big["source"]) <= keys(full["source"])  # nested: a sweep only adds rows
    assert keys(small["target"]) <= keys(big["target"]) <= keys(full["target"])
    assert [r for r in full["source"] if keys([r]) <= keys(small["source"])] == small["source"]  # in file order
    other = load_task("oddoneout-desserts-fruits", n_source=50, seed=1)["source"]
    assert keys(other) != keys(small["source"]) or other != small["source"]
    with pytest.raises(ValueError, match="--n-target 1001 asks for more target rows than the task has \\(1000\\)"):
        load_task("oddoneout-desserts-fruits", n_target=1001)


def test_missing_shp_folder_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_task("legaladvice-ko", data_dir=str(tmp_path / "data"))
    message = str(e.value)
    root = os.path.join(str(tmp_path / "data"), "shp_translations")
    for part in ["task 'legaladvice-ko'", "legaladvice_english_train.json", f"{root} does not exist",
                 f"hf download david9dragon9/shp_translations --repo-type dataset --local-dir {root}", "--source"]:
        assert part in message, message


def test_missing_file_lists_the_closest_names(tmp_path):
    root = tmp_path / "shp_translations"
    write(root / "legaladvice_english_train.json", pairs(2))
    write(root / "legaladvice_kor_Hang_val.json", pairs(2))
    write(root / "sub" / "legaladvice_kor_Hang_Train_v2.json", pairs(2))
    with pytest.raises(FileNotFoundError) as e:
        load_task("legaladvice-ko", data_dir=str(tmp_path))
    message = str(e.value)
    for part in ["unlabelled target training set", "legaladvice_kor_Hang_train.json(l)", "holds 3 file(s)",
                 "the closest being sub/legaladvice_kor_Hang_Train_v2.json", "--target"]:
        assert part in message, message


def test_load_task_shp_from_a_folder(tmp_path):
    root = tmp_path / "shp_translations"
    write(root / "data" / "askscience_english_train.jsonl", pairs(6, "en"), jsonl=True)  # found in a subfolder
    write(root / "data" / "askscience_tha_Thai_train.json", pairs(5, "th"))
    write(root / "data" / "askscience_tha_Thai_val.json", pairs(3, "v"))
    write(root / "data" / "askscience_tha_Thai_test.json", pairs(4, "t"))
    write(root / ".cache" / "askscience_tha_Thai_test.json", [])  # hf download's metadata folder is never read
    t = load_task("askscience-th", data_dir=str(tmp_path))
    assert [len(t[k]) for k in ("source", "target", "val", "test")] == [6, 5, 3, 4]
    assert (t["kind"], t["target_kind"], t["metric"], t["epochs"]) == ("pairs", "pairs", "pairwise", 3)
    assert t["files"]["test"] == str(root / "data" / "askscience_tha_Thai_test.json")
    assert labelled_target(t) == t["target"]
    t = load_task("askscience-th", data_dir=str(tmp_path), val=write(tmp_path / "mine.json", pairs(2)))
    assert (len(t["val"]), len(t["test"])) == (2, 4)
    write(root / "other" / "askscience_tha_Thai_train.json", pairs(1))
    with pytest.raises(ValueError, match="more than once"):
        load_task("askscience-th", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="holds multiple-choice rows, but task 'askscience-th' needs pairs rows"):
        load_task("askscience-th", data_dir=str(tmp_path), val=write(tmp_path / "m.json", [MCQ]),
                  target=str(root / "data" / "askscience_tha_Thai_train.json"))


def test_load_task_essays_and_cvalues(tmp_path):
    root = tmp_path / "short_to_long_essays"
    write(root / "short_train.json", score_rows({1: 4, 2: 4, 3: 4}))
    write(root / "long_train.json", score_rows({2: 3, 4: 3}))
    write(root / "long_val.json", score_rows({1: 3, 6: 2}))
    t = load_task("essays-short2long", data_dir=str(tmp_path), seed=5)
    assert (t["kind"], t["target_kind"], t["metric"]) == ("pairs", "text", "correlation")
    assert t["source"] == scores_to_pairs(load_rows(str(root / "short_train.json"), "scores"), seed=5)
    # no long test file: the val file is split in two disjoint seeded halves, validation and test
    val_rows = load_rows(str(root / "long_val.json"), "scores")
    assert (len(t["val"]), len(t["test"])) == (2, 3) and sorted(t["val"] + t["test"], key=str) == sorted(val_rows, key=str)
    assert not {str(r) for r in t["val"]} & {str(r) for r in t["test"]}
    assert "first half" in t["files"]["val"] and "second half" in t["files"]["test"]
    assert load_task("essays-short2long", data_dir=str(tmp_path), seed=5)["test"] == t["test"]  # seeded
    assert t["tgt_only"] == {"epochs": 2, "batch_tgt": 8}  # A.5: the target upper bound's own schedule
    write(root / "long_test.json", score_rows({2: 2, 5: 2}))
    t = load_task("essays-short2long", data_dir=str(tmp_path), seed=5)
    assert (t["val"], t["test"]) == (val_rows, load_rows(str(root / "long_test.json"), "scores"))
    assert {(p["score_chosen"], p["score_rejected"]) for p in labelled_target(t)} == {(4, 2)}
    write(root / "short_pref_train.json", pairs(3))  # the released pairs file wins over the scores file
    assert load_task("essays-short2long", data_dir=str(tmp_path))["source"] == pairs(3)
    write(root / "long_train.json", [{"text": "no label"}])
    with pytest.raises(ValueError, match=r"long_train.json, row 1: field 'label' is missing"):
        labelled_target(load_task("essays-short2long", data_dir=str(tmp_path)))

    write(tmp_path / "cvalues_samples" / "B_just_sample.json", pairs(10, "s"))  # names match ignoring case
    for split, n in (("train", 7), ("val", 3), ("test", 2)):
        write(tmp_path / "cvalues-english" / f"{split}.json", pairs(n, split))
    t = load_task("cvalues-fewshot-b", data_dir=str(tmp_path))
    assert len(t["source"]) == 10_000 and t["source"][:10] == t["source"][10:20] == pairs(10, "s")  # A.4: 1000x
    assert (t["batch_src"], t["batch_tgt"], t["batch_src_only"], t["max_length"]) == (8, 8, 16, 768)


def test_unknown_task():
    with pytest.raises(ValueError) as e:
        load_task("legaladvise-ko")
    assert "did you mean legaladvice-ko" in str(e.value) and "python train.py --help" in str(e.value)
