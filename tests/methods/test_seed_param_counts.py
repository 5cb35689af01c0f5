"""Trainable parameters of CLIPN, ZOC and the fine-tuned encoder at ViT-B/16 size (open_clip ViT-B-16, random
weights), counted from the modules their recipes train, against hand formulas of the architecture (the numbers
the efficiency suite, ``pytest --benchmark``, reports for them): a pre-norm transformer block of width W has
LN 2W + attention (3W² + 3W in, W² + W out) + LN 2W + MLP (4W² + 4W, 4W² + W) = 12W² + 13W parameters."""
import pytest
import torch

from clipood.efficiency.measure import count_parameters

VOCAB, CTX, TEXT_W, TEXT_LAYERS, EMBED = 49_408, 77, 512, 12, 512   # ViT-B/16's text tower (open_clip config)
VISION_W = 768                                                      # its image tower's width


def block(w: int) -> int:
    return 12 * w * w + 13 * w


@pytest.fixture(scope="module")
def vit_b_16():
    from clipood import load_clip

    torch.manual_seed(0)
    return load_clip("ViT-B-16", device="cpu")


def test_clipn_no_path(vit_b_16):
    from adapters.clipn import NoTextEncoder

    enc = NoTextEncoder(vit_b_16, num_prompts=16)
    hand = (VOCAB * TEXT_W + CTX * TEXT_W + TEXT_LAYERS * block(TEXT_W) + 2 * TEXT_W + TEXT_W * EMBED
            + 16 * CTX * TEXT_W)
    assert count_parameters(enc) == hand == 64_058_880
    # copies: the frozen CLIP's own tensors are not among them
    assert not {id(p) for p in enc.parameters()} & {id(p) for p in vit_b_16.model.parameters()}


@pytest.mark.parametrize("blocks", [1, 2])
def test_finetuned_last_blocks(vit_b_16, blocks):
    from clipood.training.finetune import FinetunedClassifier, split_image_tower

    split = split_image_tower(vit_b_16, blocks)
    text = torch.nn.functional.normalize(torch.randn(1000, EMBED), dim=-1)
    frozen = FinetunedClassifier(split.head, text, 100.0)
    hand = blocks * block(VISION_W) + 2 * VISION_W + VISION_W * EMBED
    assert count_parameters(frozen) == hand == {1: 7_482_624, 2: 14_570_496}[blocks]
    assert count_parameters(split.trunk) == 0                                  # the trunk stays frozen
    learned = FinetunedClassifier(split.head, text, 100.0, learn_classifier=True)
    assert count_parameters(learned) == hand + 1000 * EMBED                    # + the 1,000-class classifier


def test_zoc_trains_nothing():
    from adapters.zoc import RetrievalCandidates

    gen = RetrievalCandidates(["boat", "cloud", "moon"], torch.eye(3, EMBED), k=2, seen=["boat"])
    assert not isinstance(gen, torch.nn.Module) and not any(torch.is_tensor(v) and v.requires_grad
                                                            for v in vars(gen).values())
