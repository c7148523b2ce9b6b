"""Wiring of ``mae``'s training step (issue 29).

One step of a 2-block ViT-Ti/16 on 64 x 64 images (16 patches) with a 1-block decoder, the method's randomness
fixed (the model seed, ``torch.manual_seed`` before the step for the patch shuffle, the numpy Generator given to
``views``). The test records the shuffle (``random_token_mask``'s output) and captures, with hooks, the tokens
entering the encoder's blocks, the encoder's normed output, the tokens entering the decoder's blocks and the
decoder's predictions; it checks each against its own computation from the step's inputs: the patch embedding as a
strided convolution, patchify by reshape, the 2D sine-cosine table of MAE's ``get_2d_sincos_pos_embed``, the masked
mean of the official ``forward_loss``.

Swaps ruled out, each injected alone into a scratch copy and seen to turn this module red:
- the mask's ratio not taken from the config (always 0.75)
- the CLS slot counted as maskable in the patch sequence (mask_class_token=False: patch 0 always kept, one too many)
- the encoder fed every patch (idx_keep not passed)
- the shuffle's halves swapped (the encoder fed the masked patches, the loss on the visible ones)
- the decoder places the visible tokens one slot off (idx_keep instead of idx_keep + 1: no unshuffle to their own
  positions)
- the decoder's mask tokens replaced by zeros
- the loss taken over the visible patches instead of the masked ones
- the loss taken over every patch
- the target not normalised per patch although norm_pix_loss is set
- the target normalised although norm_pix_loss is off
- the per-patch normalisation with the biased variance
- the encoder's output detached before the decoder (no gradient to the encoder)
- the encoder's position embedding left trainable (requires_grad_(True) after the sine-cosine table)
- mae_init ignored
- conf/method_budget/mae_paper.yaml's mae_init removed
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.backbones import build_backbone
from bench.registry import METHODS
from methods.base import StepInfo

SIZE, P, N, B = 64, 16, 16, 4  # image side, patch, patches per image, batch
SMALL = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
CONF = Path(__file__).resolve().parent.parent / "conf"


def _method(**over):
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny_2d", img_size=SIZE, depth=2)
    cls = METHODS.get("mae")
    return cls(bb, cls.make_config({**SMALL, **over}))


def _batch(m) -> dict:
    rng = np.random.default_rng(0)
    views = [m.views({"image": rng.random((1, 96, 96), dtype=np.float32), "roi": (SIZE, SIZE)}, rng) for _ in range(B)]
    return torch.utils.data.default_collate(views)


def _patchify(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches row-major, pixels (row, column, channel) inside (MAE's patchify)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // P, P, w // P, P).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // P) * (w // P), -1)


def _sincos(dim: int, grid: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed with a zero CLS row: the first half encodes the column, the second the row."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows = []
    for t in range(grid * grid):
        r, c = divmod(t, grid)
        rows.append(torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)]))
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.stack(rows)]).float()


@contextlib.contextmanager
def _spy(m, monkeypatch, edit_pred=None):
    """Record the shuffle and the routed tensors of one step; ``edit_pred(pred, idx_keep)`` may replace the
    decoder's output."""
    from lightly.models import utils

    seen: dict[str, torch.Tensor] = {}
    real = utils.random_token_mask

    def shuffle(*args, **kwargs):
        seen["keep"], seen["mask"] = real(*args, **kwargs)
        return seen["keep"], seen["mask"]

    def keep(name):
        return lambda _mod, args: seen.__setitem__(name, args[0].detach().clone())

    def pred(_mod, _args, out):
        seen["pred"] = out.detach().clone()
        return edit_pred(out, seen["keep"]) if edit_pred else None

    monkeypatch.setattr(utils, "random_token_mask", shuffle)
    net = m.backbone.net
    handles = [
        net.blocks.register_forward_pre_hook(keep("enc_in")),
        net.norm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("enc_out", out.detach().clone())),
        m.decoder.blocks.register_forward_pre_hook(keep("dec_in")),
        m.decoder.register_forward_hook(pred),
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()
        monkeypatch.setattr(utils, "random_token_mask", real)


def _step(m, monkeypatch, batch, edit_pred=None, grad=False):
    torch.manual_seed(1)
    with _spy(m, monkeypatch, edit_pred) as seen, torch.set_grad_enabled(grad):
        out = m.training_step(batch, StepInfo(0, 10))
    return out, seen


def _masked_mse(pred, target, idx_mask):
    """models_mae.forward_loss: per-patch mean squared error, averaged over the removed patches (mask 1)."""
    mask = torch.zeros(pred.shape[:2])
    mask.scatter_(1, idx_mask, 1.0)
    return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


@pytest.mark.parametrize("ratio,kept", [(0.75, 4), (0.6, 6)])  # int(16 * (1 - ratio)), as MAE's random_masking
def test_visible_set_is_a_per_sample_shuffle_of_the_configured_size(monkeypatch, ratio, kept):
    m = _method(mask_ratio=ratio)
    out, seen = _step(m, monkeypatch, _batch(m))
    keep, mask = seen["keep"], seen["mask"]
    assert keep.shape == (B, kept) and mask.shape == (B, N - kept)
    for k, r in zip(keep.tolist(), mask.tolist()):
        assert sorted(k + r) == list(range(N))  # every patch once: the CLS token is not in this sequence
    assert len({tuple(sorted(k)) for k in keep.tolist()}) == B  # drawn per sample
    assert out.logs["masked_fraction"] == pytest.approx((N - kept) / N)


def test_encoder_sees_the_cls_token_and_the_visible_patches_only(monkeypatch):
    m = _method()
    batch = _batch(m)
    _, seen = _step(m, monkeypatch, batch)
    net, x = m.backbone.net, batch["image"]
    with torch.no_grad():
        patches = F.conv2d(x, net.patch_embed.proj.weight, net.patch_embed.proj.bias, stride=P).flatten(2).mT
        patches = patches + net.pos_embed[:, 1:]
        cls = (net.cls_token + net.pos_embed[:, :1]).expand(B, -1, -1)
    visible = torch.stack([patches[b, seen["keep"][b]] for b in range(B)])
    assert seen["enc_in"].shape == (B, 1 + 4, net.embed_dim)
    assert torch.allclose(seen["enc_in"], torch.cat([cls, visible], 1), atol=1e-5)


def test_decoder_puts_each_visible_token_back_at_its_patch_and_mask_tokens_elsewhere(monkeypatch):
    m = _method()
    _, seen = _step(m, monkeypatch, _batch(m))
    dec = m.decoder
    with torch.no_grad():
        emb = dec.embed(seen["enc_out"])  # [B, 1 + K, D']: CLS first, then the visible patches in shuffle order
    pos = _sincos(dec.dim, int(math.isqrt(N)))
    want = torch.empty(B, N + 1, dec.dim)
    for b in range(B):
        want[b, 0] = emb[b, 0] + pos[0]
        for j, t in enumerate(seen["keep"][b].tolist()):
            want[b, 1 + t] = emb[b, 1 + j] + pos[1 + t]
        for t in seen["mask"][b].tolist():
            want[b, 1 + t] = dec.mask_token.detach()[0, 0] + pos[1 + t]
    assert torch.allclose(seen["dec_in"], want, atol=1e-5)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_is_mse_on_the_masked_patches_against_the_configured_target(monkeypatch, norm_pix):
    m = _method(norm_pix_loss=norm_pix)
    batch = _batch(m)
    out, seen = _step(m, monkeypatch, batch)
    raw = _patchify(batch["image"])
    normed = (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, keepdim=True) + 1e-6).sqrt()  # unbiased, as torch.var
    target, other = (normed, raw) if norm_pix else (raw, normed)
    assert seen["pred"].shape == raw.shape == (B, N, P * P)
    assert torch.isclose(out.loss, _masked_mse(seen["pred"], target, seen["mask"]), rtol=1e-5)
    assert not torch.isclose(out.loss, _masked_mse(seen["pred"], other, seen["mask"]), rtol=1e-2)


def test_predictions_at_visible_patches_do_not_count(monkeypatch):
    m = _method()
    batch = _batch(m)
    out, _ = _step(m, monkeypatch, batch)

    def shift_visible(pred, keep):
        bump = torch.zeros_like(pred)
        bump.scatter_(1, keep[..., None].expand(-1, -1, pred.shape[-1]), 100.0)
        return pred + bump

    edited, _ = _step(m, monkeypatch, batch, edit_pred=shift_visible)
    assert torch.isclose(edited.loss, out.loss, rtol=1e-6)


def test_gradients_reach_encoder_decoder_and_mask_token_but_not_the_fixed_position_table(monkeypatch):
    m = _method()
    m.train()
    out, _ = _step(m, monkeypatch, _batch(m), grad=True)
    out.loss.backward()
    params = dict(m.named_parameters())
    pe = params.pop("backbone.net.pos_embed")
    assert all(p.grad is not None for p in params.values()), [n for n, p in params.items() if p.grad is None]
    for name in (
        "backbone.net.cls_token",
        "backbone.net.patch_embed.proj.weight",
        "backbone.net.blocks.0.attn.qkv.weight",
        "backbone.net.blocks.1.mlp.fc2.weight",
        "decoder.mask_token",
        "decoder.embed.weight",
        "decoder.pred.weight",
    ):
        assert params[name].grad.abs().sum() > 0, name
    # MAE's pos_embed: the 2D sine-cosine table (CLS row zero), requires_grad=False, so never optimised
    assert torch.allclose(pe, _sincos(pe.shape[-1], int(math.isqrt(N)))[None], atol=1e-6)
    assert not pe.requires_grad and pe.grad is None
    assert id(pe) not in {id(p) for g in m.param_groups(0.05, ("1d",)) for p in g["params"]}


def test_mae_init_is_models_mae_initialize_weights():
    def xavier_bound(w):
        fan_out, fan_in = w.shape[0], w[0].numel()
        return math.sqrt(6 / (fan_in + fan_out))

    ours, timm_init = _method(mae_init=True), _method()
    linears = [n for n, mod in ours.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert any(n.startswith("decoder.") for n in linears) and any(n.startswith("backbone.") for n in linears)
    for n in linears:
        w, b = ours.get_submodule(n).weight, ours.get_submodule(n).bias
        bound = xavier_bound(w)
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound, n  # U(-bound, bound), and not narrower
        assert b is None or not b.any(), n
    proj = ours.backbone.net.patch_embed.proj.weight
    assert proj.abs().max() <= xavier_bound(proj) and proj.abs().max() > 0.9 * xavier_bound(proj)
    for mod in ours.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            assert bool((mod.weight == 1).all() and (mod.bias == 0).all())
    for token in (ours.backbone.net.cls_token, ours.decoder.mask_token):
        assert 0.015 < float(token.detach().std()) < 0.025
    assert float(timm_init.backbone.net.cls_token.detach().std()) < 1e-4  # what the flag replaces: timm's N(0, 1e-6)
    # the sine-cosine position embedding is not a Linear: both keep the same table
    assert torch.equal(ours.backbone.net.pos_embed, timm_init.backbone.net.pos_embed)


def test_paper_budget_restores_mae_init():
    from hydra import compose, initialize_config_dir

    def config(budget: str) -> dict:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["method=mae", f"budget={budget}"])
        return OmegaConf.to_container(cfg.method.config)

    paper, quick = config("paper"), config("quick")
    assert paper.pop("mae_init") is True and quick.pop("mae_init") is False
    assert paper == quick
