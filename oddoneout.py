"""
The odd-one-out questions of the paper (section 3.7, appendix A.6), generated from our lists of foods: four items of
one category and one of another; the reward model must score the odd one highest. No download: the lists are
assets/oddoneout/{category}.txt (SOURCE.txt there says where they come from). The tasks that use them are in data.py
(TASKS["oddoneout-{source}-{target}"]).

Splits share the 100 items of each category but never a question: no set of five items appears twice, within a split
or across splits. Each category's questions come from one seeded stream, train then val then test.
"""
import math
import os
import random


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
