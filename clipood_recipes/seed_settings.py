"""Schemas of the seed methods that have recipes of their own: CLIPN (``recipes/clipn.py``), ZOC
(``recipes/zoc.py``) and the fine-tuned visual encoder baselines (``recipes/finetune.py``). Each is the zero-shot
recipe's settings (mini world, negatives, evaluation with the MCM row) plus one section of its own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from clipood.config.settings import RunSettings, opt, section

__all__ = ["CLIPNSettings", "CLIPNRunSettings", "ZOCSettings", "ZOCRunSettings", "FinetuneSettings",
           "FinetuneRunSettings", "SEED_RECIPE_SETTINGS", "SEED_PRESETS", "seed_hand_over"]


@dataclass
class CLIPNSettings:
    """CLIPN (xmed-lab/CLIPN): the 'no' text encoder, trained on image–text pairs (binary- and semantic-opposite
    losses), or loaded from a checkpoint."""

    pairs: Dict[str, Any] = opt({"kind": "mini", "num": 2048, "seed": 1234},
                                "image–text pairs: kind=mini (the mini world's pretraining scenes and captions: num, "
                                "seed; 1234 = the pretraining pool), kind=folder (path: a folder with captions.tsv lines 'image<TAB>caption'), "
                                "kind=hf (path: a save_to_disk folder; image_column, text_column)")
    checkpoint: Optional[str] = opt(None, "a CLIPN checkpoint (.pt / .safetensors: clipood's no_encoder file or the "
                                          "release's state dict) to evaluate instead of training")
    num_prompts: int = opt(16, "learnable 'no' prompts (release: 16; the mean of them at test time)")
    steps: int = opt(200, "optimisation steps")
    batch_size: int = opt(64, "image–text pairs per step (release: 512 per GPU)")
    lr: float = opt(3e-4, "AdamW learning rate (release: 3e-4)")
    weight_decay: float = opt(0.2, "AdamW weight decay (release: 0.2)")
    loss_weight: float = opt(0.5, "total = weight·(L_bin_yes + L_bin_no + L_tso) (release: 0.5)")
    tso_mode: str = opt("L2", "semantic-opposite loss: L2 (release default) | cosine")
    templates: List[str] = opt(["a photo of a {}."], "templates of the 'yes' and 'no' class features (summed, "
                                                      "normalised)")
    test_scale: float = opt(100.0, "logits = scale·cos at test time (release: 100)")


@dataclass
class CLIPNRunSettings(RunSettings):
    output_dir: str = opt("outputs/clipn", "folder for results, the trained 'no' encoder and plots")
    preset: Optional[str] = opt("mini", "name of the complete setting this run starts from (recipes/configs)")
    clipn: CLIPNSettings = section(CLIPNSettings, "CLIPN")


@dataclass
class ZOCSettings:
    """ZOC (sesmae/ZOC): candidate labels per image over a fixed vocabulary, score = mass on the seen labels."""

    generator: str = opt("retrieval", "retrieval (offline: the top-k vocabulary words by image–text cosine) | "
                                      "captioner (a local caption decoder: decoder_dir)")
    vocabulary: Optional[str] = opt(None, "word file (one a line) of candidate labels (None = the benchmark's mining "
                                          "corpus)")
    k: int = opt(5, "retrieval: candidates per image (5 of the mini world's 58 nouns; the release keeps 35 tokens "
                    "of each of 9 decoding steps over a 30k-token vocabulary)")
    template: str = opt("This is a photo of a {}", "prompt of seen and candidate labels (the release's)")
    decoder_dir: Optional[str] = opt(None, "captioner: a local Hugging Face BertGenerationDecoder folder")
    decoder_weights: Optional[str] = opt(None, "captioner: the release's model.pt (optional)")
    steps: int = opt(9, "captioner: greedy decoding steps (release: 9)")
    top_k: int = opt(35, "captioner: tokens kept per step (release: 35)")
    condition_scale: float = opt(1.0, "captioner: it is conditioned on scale·(unit image features); the release "
                                      "uses the raw CLIP embedding, whose norm the feature cache does not keep")


@dataclass
class ZOCRunSettings(RunSettings):
    output_dir: str = opt("outputs/zoc", "folder for results.json, results.md and plots")
    preset: Optional[str] = opt("mini", "name of the complete setting this run starts from (recipes/configs)")
    zoc: ZOCSettings = section(ZOCSettings, "ZOC")


@dataclass
class FinetuneSettings:
    """Fine-tuning the last blocks of the image encoder with CE on ID data (NPOS / NegLabel protocol), then
    post-hoc scores on the fine-tuned encoder."""

    trainable_blocks: int = opt(1, "last blocks of the image tower fine-tuned (with pooling and projection)")
    learn_classifier: bool = opt(False, "train the text classifier too (False: the frozen zero-shot one)")
    steps: int = opt(300, "optimisation steps")
    batch_size: int = opt(32, "ID training images per step")
    lr: float = opt(1e-4, "AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    scores: List[str] = opt(["msp", "max_logit", "energy", "gen", "knn", "vim", "mds"],
                            "post-hoc scores (clipood.posthoc) evaluated on the fine-tuned encoder")
    knn_k: int = opt(10, "KNN's k (OpenOOD: 50; the mini world's pool has 16 images a class)")
    vim_dim: int = opt(16, "ViM's principal dimension (OpenOOD: 256; below the feature width)")


@dataclass
class FinetuneRunSettings(RunSettings):
    output_dir: str = opt("outputs/finetune", "folder for results, the fine-tuned head and plots")
    preset: Optional[str] = opt("mini", "name of the complete setting this run starts from (recipes/configs)")
    finetune: FinetuneSettings = section(FinetuneSettings, "the fine-tuned encoder")
    train_data: Dict[str, Any] = opt({}, "dataset spec of the ID training images (real benchmarks)")


SEED_RECIPE_SETTINGS: dict[str, type] = {"clipn": CLIPNRunSettings, "zoc": ZOCRunSettings,
                                         "finetune": FinetuneRunSettings}


#: ``preset=<method>_mini`` of recipes/krnft.py (and ``clipood train``) → the recipe that runs it
#: (recipes/<recipe>.py with its own ``preset=mini``: recipes/configs/<recipe>_mini.yaml). Here, not in
#: seed_common: the training recipe looks it up first, and a config error must still exit before torch loads.
SEED_PRESETS = {"clipn_mini": "clipn", "zoc_mini": "zoc", "finetune_mini": "finetune"}


def seed_hand_over(argv) -> tuple[str, list[str]] | None:
    """``(recipe, argv for it)`` when the command line's preset (its last ``preset=``) is one of
    :data:`SEED_PRESETS`, else None (the training recipe's own presets, and its error for an unknown one). The
    recipe gets the rest of the command line in order, with its own ``preset=mini`` first."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("preset=")]
    if not given or given[-1] not in SEED_PRESETS:
        return None
    return SEED_PRESETS[given[-1]], ["preset=mini", *(a for a in argv if not a.startswith("preset="))]
