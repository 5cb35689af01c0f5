"""The CLIPN recipe's pieces on clipood-tiny: a few training steps of the 'no' encoder through Accelerate whose
losses equal a hand computation of the release's formulas (step 1) and a hand-rolled AdamW step (step 2); the saved
'no' encoder reloads to the same features; a wrong checkpoint file is a one-line error; caption folders read."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from adapters.clipn import NoTextEncoder
from clipood.clip.backbone import load_clip
from clipood.errors import ClipoodError
from clipood_recipes.clipn import (check_checkpoint_file, load_no_encoder_state, load_pairs, save_no_encoder,
                                   train_no_encoder)

CAPTIONS = ["a red circle", "a blue square on a dotted background", "a sketch of a star", "two green triangles",
            "a photo of a yellow heart", "a striped texture"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def pairs(tiny):
    g = torch.Generator().manual_seed(3)
    size = tiny.image_size
    images = torch.randn(len(CAPTIONS), 3, size, size, generator=g)
    with torch.no_grad():
        v = tiny.encode_images(images)
        tokens = tiny.tokenize(CAPTIONS)
        t = F.normalize(tiny.model.encode_text(tokens).float(), dim=-1)
    return v, t, tokens


def _hand_loss(v, t, t_no, s):
    """0.5·(L_bin_yes + L_bin_no + L_tso) written out pair by pair (float64)."""
    v, t, t_no = v.double(), t.double(), t_no.double()
    b = v.shape[0]
    yes = no = 0.0
    for i in range(b):
        for j in range(b):
            a, c = s * float(v[i] @ t[j]), s * float(v[i] @ t_no[j])
            q = math.exp(a) / (math.exp(a) + math.exp(c))
            if i == j:
                yes -= math.log(q) / b
            else:
                no -= math.log(1 - q) / (b * b - b)
    tso = sum(2 - math.sqrt(2 - 2 * float(t[i] @ t_no[i]) + 1e-4) for i in range(b)) / b
    return 0.5 * (yes + no + tso)


def _draw(gen, n, batch, num_prompts):
    return torch.randperm(n, generator=gen)[:batch], torch.randint(0, num_prompts + 1, (batch,), generator=gen)


def test_training_steps_match_a_hand_computation(tiny, pairs):
    from accelerate import Accelerator

    v, t, tokens = pairs
    enc = NoTextEncoder(tiny, num_prompts=3)
    with torch.no_grad():  # not at the zero-prompt start, so the prompt index matters
        enc.prompt_no.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(enc)
    scale, lr, wd = 10.0, 1e-2, 0.2
    trained, log = train_no_encoder(Accelerator(cpu=True), enc, v, t, tokens, steps=2, batch_size=4, lr=lr,
                                    weight_decay=wd, logit_scale=scale, seed=5)
    assert [r["step"] for r in log] == [1, 2]
    gen = torch.Generator().manual_seed(5)
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.98), eps=1e-6)
    for step in range(2):
        idx, prompt = _draw(gen, len(CAPTIONS), 4, 3)
        ref.train()
        t_no = F.normalize(ref(tokens[idx], prompt).float(), dim=-1)
        assert log[step]["total"] == pytest.approx(_hand_loss(v[idx], t[idx], t_no.detach(), scale), abs=1e-5)
        hand = 0.5 * (-F.log_softmax(torch.stack([scale * v[idx] @ t[idx].T, scale * v[idx] @ t_no.T], -1), -1)[
            ..., 0].diagonal().mean() - F.log_softmax(torch.stack([scale * v[idx] @ t[idx].T,
                                                                   scale * v[idx] @ t_no.T], -1), -1)[..., 1][
            ~torch.eye(4, dtype=torch.bool)].mean() + (2 - torch.sqrt(2 - 2 * (t[idx] * t_no).sum(-1) + 1e-4)).mean())
        opt.zero_grad()
        hand.backward()
        opt.step()
    # (step 2's loss above is the check on the update: parameters are not compared one by one, since Adam turns
    # float32 summation-order noise in near-zero gradients into ±lr steps)
    assert not torch.equal(trained.prompt_no, NoTextEncoder(tiny, num_prompts=3).prompt_no)


def test_backbone_text_tower_is_untouched(tiny, pairs):
    from accelerate import Accelerator

    v, t, tokens = pairs
    before = {k: x.clone() for k, x in tiny.model.state_dict().items()}
    train_no_encoder(Accelerator(cpu=True), NoTextEncoder(tiny, num_prompts=2), v, t, tokens, steps=2,
                     batch_size=3, lr=1e-2, weight_decay=0.0)
    assert all(torch.equal(before[k], x) for k, x in tiny.model.state_dict().items())


def test_saved_no_encoder_reloads_to_the_same_features(tiny, pairs, tmp_path):
    _, _, tokens = pairs
    enc = NoTextEncoder(tiny, num_prompts=2)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    save_no_encoder(enc, tmp_path / "no.safetensors")
    state = load_no_encoder_state(tmp_path / "no.safetensors")
    assert "transformer_no.resblocks.0.attn.in_proj_weight" in state and "prompt_no" in state  # release names
    torch.save({"state_dict": {f"module.{k}": x for k, x in state.items()}}, tmp_path / "release.pt")
    for f in ("no.safetensors", "release.pt"):
        other = NoTextEncoder(tiny, num_prompts=2)
        other.load_release_state(load_no_encoder_state(tmp_path / f))
        assert torch.allclose(other.eval()(tokens), enc.eval()(tokens), atol=1e-6)


def test_a_wrong_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    (tmp_path / "weights.txt").write_text("x")
    torch.save({"a": 1}, tmp_path / "dict.pt")
    cases = {tmp_path / "missing.pt": "no such file", tmp_path / "weights.txt": "not a checkpoint file",
             tmp_path / "notes.pt": "not a readable torch checkpoint", tmp_path / "dict.pt": "no state dict"}
    for path, words in cases.items():
        with pytest.raises(ClipoodError, match=words) as e:
            load_no_encoder_state(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ClipoodError, match="missing.pt"):
        check_checkpoint_file(tmp_path / "missing.pt")


def test_caption_folder_pairs(tiny, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (40, 40), (50 * i, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "captions.tsv").write_text("im0.png\ta dark square\nim1.png\ta red square\n")
    images, texts = load_pairs({"kind": "folder", "path": str(tmp_path)}, tiny.image_size, tiny.preprocess)
    assert images.shape == (2, 3, tiny.image_size, tiny.image_size) and texts == ["a dark square", "a red square"]
    (tmp_path / "captions.tsv").write_text("im0.png a dark square\n")
    with pytest.raises(ClipoodError, match="line 1"):
        load_pairs({"kind": "folder", "path": str(tmp_path)}, tiny.image_size, tiny.preprocess)


def test_score_rows_read_back_score_and_prediction():
    """What the evaluation's max_logit score makes of scored_method's matrix: the score and the class given."""
    from clipood.evaluation.protocol import score_cosines
    from clipood_recipes.seed_common import score_matrix

    score = torch.tensor([0.25, 0.999, -3.5, 12.0])
    pred = torch.tensor([2, 0, 1, 2])
    s, p = score_cosines(score_matrix(score, pred, 3, 100.0), 3, "max_logit", 100.0)
    assert torch.allclose(s, score.double(), atol=1e-5) and torch.equal(p, pred)
