import random
from collections import Counter

import numpy as np
import pytest

from clipood.errors import ClipoodError
from clipood.datasets.fewshot import sample_few_shot, shots_per_class

# 3 classes, interleaved and unequal: class 0 has 10 images, class 1 has 7, class 2 has 5
LABELS = [i % 3 for i in range(15)] + [0] * 5 + [1] * 2


def test_counts_per_class_and_order():
    idx = sample_few_shot(LABELS, shots=4, seed=0)
    assert len(idx) == 12 and len(set(idx)) == 12
    assert Counter(LABELS[i] for i in idx) == {0: 4, 1: 4, 2: 4}
    assert idx == sorted(idx, key=lambda i: (LABELS[i], i))
    assert shots_per_class(LABELS, idx) == {0: 4, 1: 4, 2: 4}


def test_deterministic_and_independent_of_global_rng():
    a = sample_few_shot(LABELS, 3, seed=5)
    np.random.seed(123)
    random.seed(123)
    np.random.rand(10)
    b = sample_few_shot(LABELS, 3, seed=5)
    assert a == b
    state = np.random.get_state()[1].copy()
    sample_few_shot(LABELS, 3, seed=7)
    assert np.array_equal(state, np.random.get_state()[1])  # global state untouched


def test_different_seeds_differ():
    labels = [i % 4 for i in range(400)]  # 100 images per class: a collision of all picks is ~impossible
    draws = {tuple(sample_few_shot(labels, 4, seed=s)) for s in range(5)}
    assert len(draws) == 5


def test_class_draw_does_not_depend_on_other_classes():
    full = sample_few_shot(LABELS, 2, seed=3)
    only_class_2 = [y if y == 2 else 7 for y in LABELS]  # relabel the others: class 2's picks must not move
    sub = sample_few_shot(only_class_2, 2, seed=3)
    assert [i for i in full if LABELS[i] == 2] == [i for i in sub if only_class_2[i] == 2]


def test_too_many_shots_message():
    with pytest.raises(ClipoodError, match=r"class 'cat' \(label 2\) has 5 images but shots=6; lower shots"):
        sample_few_shot(LABELS, 6, classnames=["dog", "bird", "cat"])
    with pytest.raises(ClipoodError, match=r"class '2' \(label 2\) has 5 images but shots=6"):
        sample_few_shot(LABELS, 6)


def test_all_images_and_invalid_values():
    assert sample_few_shot(LABELS, None) == sorted(range(len(LABELS)), key=lambda i: (LABELS[i], i))
    assert sample_few_shot(LABELS, 0) == sample_few_shot(LABELS, None)
    for bad in (-1, 2.5, True):
        with pytest.raises(ClipoodError, match="shots"):
            sample_few_shot(LABELS, bad)
    with pytest.raises(ClipoodError, match="seed"):
        sample_few_shot(LABELS, 1, seed=-3)
