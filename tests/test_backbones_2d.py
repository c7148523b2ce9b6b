"""2D timm backbones behind the Backbone protocol: shapes, timm as the reference, hooks, strict export round trip."""

from __future__ import annotations

import pytest
import torch

from bench.backbones import build_backbone
from bench.export import load_export, save_export
from bench.registry import BACKBONES

# the registered widths with fewer blocks: the same modules and wiring at a fraction of the CPU cost
SMALL = {
    "vit_tiny_2d": dict(depth=1),
    "vit_small_2d": dict(depth=1),
    "vit_base_2d": dict(depth=1),
    "swin_base_2d": dict(depths=(1, 1, 1, 1)),
    "convnext_tiny_2d": dict(depths=(1, 1, 1, 1)),
}
WIDTH = {"vit_tiny_2d": 192, "vit_small_2d": 384, "vit_base_2d": 768, "swin_base_2d": 1024, "convnext_tiny_2d": 768}


def _build(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_backbone(name, img_size=64, **SMALL[name], **kw).eval()


def test_all_2d_backbones_registered_and_tagged():
    assert set(BACKBONES.names(tag="2d")) >= set(SMALL)
    assert not set(SMALL) & set(BACKBONES.names(tag="3d"))


@pytest.mark.parametrize("name", list(SMALL))
def test_shapes_and_interface(name):
    bb = _build(name)
    assert bb.spatial_dims == 2 and bb.in_channels == 1 and bb.feature_dim == WIDTH[name]
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        maps = bb.encode(x)
        pooled = bb.pooled(x)
    assert all(m.ndim == 4 and m.shape[0] == 2 for m in maps)
    assert maps[-1].shape == (2, bb.feature_dim, 64 // bb.token_stride, 64 // bb.token_stride)
    assert pooled.shape == (2, bb.feature_dim)
    if name.startswith("vit"):
        assert len(maps) == 1 and bb.token_stride == 16
    else:
        assert len(maps) == 4 and bb.token_stride == 32
        assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]


@pytest.mark.parametrize("name", list(SMALL))
def test_last_map_and_pooled_equal_timm(name):
    """timm's own forward_features / forward_head are the reference for the final map and the pooled vector."""
    bb = _build(name)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ref = bb.net.forward_features(x)
        last = bb.encode(x)[-1]
        if name.startswith("vit"):
            ref_map = ref[:, 1:].transpose(1, 2).reshape(last.shape)  # row-major patch grid
            cls, tok = bb.tokens(x)
            assert torch.allclose(cls, ref[:, 0], atol=1e-5)
            assert torch.allclose(tok, ref[:, 1:], atol=1e-5)
        elif name.startswith("swin"):
            ref_map = ref.permute(0, 3, 1, 2)
        else:
            ref_map = ref
        assert torch.allclose(last, ref_map, atol=1e-5)
        assert torch.allclose(bb.pooled(x), bb.net.forward_head(ref, pre_logits=True), atol=1e-5)


@pytest.mark.parametrize("size", [32, 48, 80])
def test_vit_accepts_other_sizes(size):
    bb = _build("vit_tiny_2d")  # built for 64 px
    with torch.no_grad():
        (m,) = bb.encode(torch.rand(1, 1, size, size))
        assert m.shape[-2:] == (size // 16, size // 16)
        (m,) = bb.encode(torch.rand(1, 1, size, 2 * size))
        assert m.shape[-2:] == (size // 16, 2 * size // 16)


def test_vit_rejects_a_size_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        _build("vit_tiny_2d").encode(torch.rand(1, 1, 40, 40))


@pytest.mark.parametrize("name", ["vit_tiny_2d", "swin_base_2d", "convnext_tiny_2d"])
def test_patch_hook(name):
    bb = _build(name)
    x = torch.rand(2, 1, 64, 64)
    seen = []

    def identity(t):
        seen.append(t.shape)
        return t

    with torch.no_grad():
        plain = bb.encode(x)[-1]
        same = bb.encode(x, patch_hook=identity)[-1]
        zeroed = bb.encode(x, patch_hook=torch.zeros_like)[-1]
        # the hook replaces the patch embedding: zeroing it must equal running the same net on a zero embedding
        ref = bb.encode(torch.zeros_like(x), patch_hook=torch.zeros_like)[-1]
    grid = {"vit_tiny_2d": 4, "swin_base_2d": 16, "convnext_tiny_2d": 16}[name]
    assert seen and seen[0][:2] == (2, grid * grid)
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, zeroed)
    assert torch.allclose(zeroed, ref, atol=1e-6)
    with pytest.raises(ValueError, match="patch_hook must keep the token shape"):
        bb.encode(x, patch_hook=lambda t: t[:, 1:])


def test_vit_idx_keep_drops_patches_after_position_embedding():
    bb = _build("vit_tiny_2d")
    x = torch.rand(2, 1, 64, 64)
    keep = torch.tensor([[0, 5, 9], [3, 4, 15]])
    with torch.no_grad():
        cls, tok = bb.tokens(x, idx_keep=keep)
        # reference: the same path by hand, with the position embedding added before the gather
        vit = bb.net
        t = vit._pos_embed(vit.patch_embed(x))
        sel = torch.stack([t[b, 1 + keep[b]] for b in range(2)])
        ref = vit.norm(vit.blocks(torch.cat([t[:, :1], sel], 1)))
    assert tok.shape == (2, 3, 192)
    assert torch.allclose(tok, ref[:, 1:], atol=1e-5) and torch.allclose(cls, ref[:, 0], atol=1e-5)


@pytest.mark.parametrize("name", list(SMALL))
def test_export_roundtrip_strict(name, tmp_path):
    bb = _build(name, seed=0)
    save_export(bb, tmp_path / "e.pt", {"method": "test"})
    back, meta = load_export(tmp_path / "e.pt")
    assert meta["backbone"] == name and meta["spatial_dims"] == 2 and meta["feature_dim"] == bb.feature_dim
    assert type(back) is type(bb) and back.build_kwargs() == bb.build_kwargs()
    sd, sd2 = bb.state_dict(), back.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    other = _build(name, seed=1)  # pretrained=False: a different seed is a different (random) network
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in sd.items())
    x = torch.rand(1, 1, 64, 64)
    back.eval()
    with torch.no_grad():
        assert torch.allclose(bb.pooled(x), back.pooled(x))


def test_in_channels_configurable():
    bb = build_backbone("vit_tiny_2d", in_channels=3, depth=1)
    assert bb.in_channels == 3 and bb.net.patch_embed.proj.in_channels == 3
    assert bb.pooled(torch.rand(1, 3, 32, 32)).shape == (1, 192)
