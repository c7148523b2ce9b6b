"""Wiring of ``simmim3d``'s training step (issue 29).

One step on a tiny 2-channel input (two channels, so that SimMIM's per-channel normalisation is pinned too), with the
method's randomness fixed (the model seed, the numpy Generator given to ``views``). The test captures the tensors at
module boundaries with hooks (the patch embedding's input and output, ``pos_drop``'s input: the tokens after the
mask-token hook, the conv stem ``encoder1``'s input, the reconstruction head's output) and checks each against its
own computation from the step's inputs; the block-to-token and block-to-voxel upsampling is recomputed by index
arithmetic, not with the method's helper.

Swaps ruled out, each injected alone into a scratch copy and seen to turn this module red:
- block_mask draws floor(ratio * n) blocks instead of ceil(ratio * n)
- views ignores the configured mask_ratio (draws at 0.5)
- the mask-token hook's weight inverted (the mask token replaces the *visible* tokens)
- the mask-token hook returns the tokens unchanged (no mask token)
- the token mask taken from the blocks with two spatial axes swapped (the wrong tokens replaced)
- the reconstruction target is the masked input x*(1-M) instead of the original x
- the L1 is not restricted to the masked voxels
- the loss not divided by the channels, or taken as the mean over all voxels
- the conv stem encoder1 receives the unmasked x by default (ASA's port's leak without the flag)
- the transformer path receives the unmasked x (the stem alone masked)
- leak_stem ignored (the stem receives x*(1-M) even with leak_stem=True)
- the mask token detached (no gradient reaches it)
- "mask_token" dropped from train.no_decay in conf/method/simmim3d.yaml
- conf/method_budget/simmim3d_paper.yaml's min_lr removed
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.backbones import build_backbone
from bench.engine import TrainConfig
from bench.registry import METHODS
from methods.base import StepInfo
from methods.simmim3d import block_mask

ROI = (64, 32, 32)  # the smallest Swin UNETR input whose deepest map has more than one voxel (InstanceNorm)
C = 2
BLOCK = 16  # the default mask_patch: a 4 x 2 x 2 grid of blocks, 8 masked at ratio 0.5
CONF = Path(__file__).resolve().parent.parent / "conf"


def _method(**over):
    torch.manual_seed(0)
    bb = build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1), in_channels=C)
    cls = METHODS.get("simmim3d")
    return cls(bb, cls.make_config(over))


def _batch(m, n: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # strictly positive intensities: the masked input (0 there) and the original differ on every masked voxel
    vol = 0.5 + rng.random((C, 70, 40, 36), dtype=np.float32)
    return torch.utils.data.default_collate([m.views({"image": vol, "roi": ROI}, rng) for _ in range(n)])


def _up(blocks: torch.Tensor, f: int) -> torch.Tensor:
    """[B, *grid] -> [B, 1, *grid*f]: fine cell (i, j, k) belongs to block (i // f, j // f, k // f)."""
    i, j, k = (torch.arange(g * f) // f for g in blocks.shape[1:])
    return blocks[:, i][:, :, j][:, :, :, k][:, None]


@contextlib.contextmanager
def _spy(m, edit_recon=None):
    """Capture the routed tensors of one step; ``edit_recon(recon)`` may replace the head's output."""
    seen: dict[str, torch.Tensor] = {}
    net = m.backbone.net

    def keep(name):
        return lambda _mod, args: seen.__setitem__(name, args[0].detach().clone())

    def head(_mod, _args, out):
        seen["recon"] = out.detach().clone()
        return edit_recon(out) if edit_recon else None

    handles = [
        net.swinViT.patch_embed.register_forward_pre_hook(keep("embed_in")),
        net.swinViT.patch_embed.register_forward_hook(lambda _m, _a, out: seen.__setitem__("tokens", out.detach())),
        net.swinViT.pos_drop.register_forward_pre_hook(keep("hooked")),
        net.encoder1.register_forward_pre_hook(keep("stem_in")),
        m.head.register_forward_hook(head),
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def step():
    """One default step with backward: the method, its batch, its loss and the captured tensors."""
    m = _method()
    m.train()
    batch = _batch(m)
    with _spy(m) as seen:
        loss = m.training_step(batch, StepInfo(0, 10)).loss
    loss.backward()
    return m, batch, loss.detach(), seen


def test_views_mask_exactly_ceil_ratio_blocks_independently_per_sample():
    rng = np.random.default_rng(0)
    for ratio, want in [(0.5, 12), (0.3, 8), (0.8, 20), (0.01, 1)]:  # of 4 * 2 * 3 = 24 blocks: ceil(ratio * 24)
        mask = block_mask((64, 32, 48), 16, ratio, rng)
        assert mask.shape == (4, 2, 3) and mask.dtype == torch.bool and int(mask.sum()) == want, ratio
    m = _method(mask_ratio=0.3)
    b = _batch(m, n=6)
    assert b["mask"].shape == (6, 4, 2, 2)
    assert b["mask"].flatten(1).sum(1).tolist() == [5] * 6  # ceil(0.3 * 16) = ceil(4.8), the configured ratio
    assert len({tuple(s.flatten().tolist()) for s in b["mask"]}) > 1  # drawn per sample, not once per batch
    assert torch.equal(_batch(m, n=6)["mask"], b["mask"])  # the Generator alone decides the masks


def test_mask_token_replaces_exactly_the_masked_tokens(step):
    m, batch, _, seen = step
    before, after = seen["tokens"], seen["hooked"]
    tok = _up(batch["mask"], BLOCK // 2).expand_as(after)  # Swin UNETR: one token per 2^3 voxels
    assert after.shape == (2, m.backbone.stage_channels[0], 32, 16, 16)
    assert tok[:, 0].float().mean() == 0.5  # the configured ratio, at token level
    token = m.mask_token.detach().reshape(1, -1, 1, 1, 1).expand_as(after)
    assert torch.equal(after[tok], token[tok])
    assert torch.equal(after[~tok], before[~tok])


def test_every_path_sees_the_masked_image(step):
    _, batch, _, seen = step
    x = batch["image"]
    masked = x * (1 - _up(batch["mask"], BLOCK).float())
    assert torch.equal(seen["stem_in"], masked)  # the full-resolution conv skip: no leak
    assert torch.equal(seen["embed_in"], masked)  # the transformer path
    assert not torch.equal(masked, x)


def test_masked_voxels_cannot_reach_the_reconstruction():
    """Rewriting the masked voxels of the input leaves the reconstruction as it was (no path can copy them)."""
    m = _method()
    batch = _batch(m)
    vox = _up(batch["mask"], BLOCK).float()
    recons = []
    for image in (batch["image"], batch["image"] + 3.0 * vox):
        with _spy(m) as seen, torch.no_grad():
            m.training_step({**batch, "image": image}, StepInfo(0, 10))
        recons.append(seen["recon"])
    assert torch.allclose(recons[0], recons[1], rtol=0, atol=1e-6)


def test_leak_stem_feeds_the_unmasked_image_as_asas_port():
    m = _method(leak_stem=True)
    batch = _batch(m)
    with _spy(m) as seen, torch.no_grad():
        loss = m.training_step(batch, StepInfo(0, 10)).loss
    x, vox = batch["image"], _up(batch["mask"], BLOCK).float()
    assert torch.equal(seen["stem_in"], x) and torch.equal(seen["embed_in"], x)
    # the transformer path still replaces the masked tokens, and the loss is the same masked L1 against x
    tok = _up(batch["mask"], BLOCK // 2).expand_as(seen["hooked"])
    assert torch.equal(seen["hooked"][tok], m.mask_token.reshape(1, -1, 1, 1, 1).expand_as(tok)[tok])
    want = ((seen["recon"] - x).abs() * vox).sum() / (vox.sum() + 1e-5) / C
    assert torch.isclose(loss, want, rtol=1e-6)


def test_loss_is_l1_on_masked_voxels_against_the_original_image(step):
    _, batch, loss, seen = step
    x, recon = batch["image"], seen["recon"]
    vox = _up(batch["mask"], BLOCK).float()  # [B, 1, *ROI]: positions; the channels broadcast
    assert recon.shape == x.shape == (2, C, *ROI)
    want = ((recon - x).abs() * vox).sum() / (vox.sum() + 1e-5) / C  # SimMIM: sum / (n_masked + 1e-5) / in_chans
    assert torch.isclose(loss, want, rtol=1e-6)
    # the test tells the targets apart: against the masked input the same recon scores differently
    masked_target = ((recon - x * (1 - vox)).abs() * vox).sum() / (vox.sum() + 1e-5) / C
    assert not torch.isclose(loss, masked_target, rtol=1e-2)


def test_unmasked_voxels_of_the_reconstruction_do_not_count(step):
    m, batch, loss, _ = step
    vox = _up(batch["mask"], BLOCK).float()
    with _spy(m, edit_recon=lambda r: r + 100.0 * (1 - vox)), torch.no_grad():
        edited = m.training_step(batch, StepInfo(0, 10)).loss
    assert torch.isclose(edited, loss, rtol=1e-6)


def test_gradients_reach_the_mask_token_the_backbone_and_the_head(step):
    m, *_ = step
    params = dict(m.named_parameters())
    assert all(p.grad is not None for n, p in params.items()), [n for n, p in params.items() if p.grad is None]
    for name in (
        "mask_token",
        "head.weight",
        "backbone.net.swinViT.patch_embed.proj.weight",
        "backbone.net.swinViT.layers4.0.blocks.0.mlp.linear2.weight",
        "backbone.net.encoder1.layer.conv1.conv.weight",
        "backbone.net.decoder1.transp_conv.conv.weight",
    ):
        assert params[name].grad.abs().sum() > 0, name


def test_weight_decay_rule_is_simmims():
    """SimMIM's get_pretrain_param_groups, re-stated: no decay for 1-D parameters, names ending ".bias", the skip list
    (the mask token; Swin UNETR has no absolute position embedding) and names holding relative_position_bias_table."""
    train = OmegaConf.to_container(OmegaConf.load(CONF / "method" / "simmim3d.yaml"))["train"]
    rule = TrainConfig.from_dict({k: v for k, v in train.items() if k in TrainConfig.__dataclass_fields__}).no_decay
    m = _method()
    decay, exempt = m.param_groups(0.05, rule)
    names = {id(p): n for n, p in m.named_parameters()}
    official = {
        n
        for n, p in m.named_parameters()
        if p.ndim == 1 or n.endswith(".bias") or n == "mask_token" or "relative_position_bias_table" in n
    }
    assert {names[id(p)] for p in exempt["params"]} == official
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - official
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0


def test_paper_budget_ends_the_cosine_at_five_percent():
    from hydra import compose, initialize_config_dir

    from bench.engine import lr_factor, schedule_config

    def train(budget: str) -> dict:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["method=simmim3d", f"budget={budget}"])
        return OmegaConf.to_container(cfg.method.train)

    paper, quick = schedule_config(train("paper"), 1000, 2), schedule_config(train("quick"), 1000, 2)
    assert paper.min_lr == pytest.approx(0.05 * paper.lr) and quick.min_lr == 0.0
    assert lr_factor(999, paper) == pytest.approx(0.05, abs=1e-5) and lr_factor(999, quick) < 1e-5
    assert math.isclose(paper.lr, quick.lr)
