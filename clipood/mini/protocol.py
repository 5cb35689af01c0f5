"""The mini world's benchmark as evaluation splits (Base / unseen classes / unseen styles) and training data."""
from __future__ import annotations

import os
from pathlib import Path

from ..datasets.specs import ImageFolderSpec
from ..evaluation.protocol import EvalSplit
from .build import load_manifest


def mini_splits(world_dir: str | os.PathLike) -> list[EvalSplit]:
    """``base``: Base classes vs textures / digits / shapes / rare shapes / clutter; ``new_class``: unseen shapes as ID
    with their own OOD sets; ``new_style``: Base classes in unseen styles (one ID set per style) vs Base OOD."""
    w = Path(world_dir).resolve()
    m = load_manifest(w)
    base, new = m["shapes"]["base"], m["shapes"]["new"]
    ood = lambda split: {o: ImageFolderSpec(str(w / split / o), ood=True, name=o) for o in m["ood_sets"]}  # noqa: E731
    styles = m["config"]["unseen_styles"]
    return [
        EvalSplit("base", {"base": ImageFolderSpec(str(w / "base" / "test"), name="base")}, ood("base_ood"), base,
                  "Base classes, photo style"),
        EvalSplit("new_class", {"new_class": ImageFolderSpec(str(w / "new_class" / "test"), name="new_class")},
                  ood("new_class_ood"), new, "unseen ID classes"),
        EvalSplit("new_style", {s: ImageFolderSpec(str(w / "new_style" / s), name=s) for s in styles},
                  ood("base_ood"), base, "Base classes in unseen styles"),
    ]


def mini_train_spec(world_dir: str | os.PathLike) -> ImageFolderSpec:
    """The few-shot training pool (Base classes, photo style)."""
    return ImageFolderSpec(str(Path(world_dir).resolve() / "base" / "train"), name="base_train")


def mini_corpus(world_dir: str | os.PathLike):
    """The world's mining corpus (grounded world words minus the rare shapes; WordNet distractors only if the
    world was built with ``distractor_nouns`` / ``distractor_adjectives``)."""
    from ..negatives import load_word_file

    return load_word_file(Path(world_dir) / "corpus.tsv")
