"""``external``: released weights in their published layouts, fully matched or refused."""

from __future__ import annotations

import re

import pytest
import torch

from bench.backbones import build_backbone
from bench.export import load_export, save_export
from bench.registry import METHODS
from methods.external import External, MissingCheckpointError, load_external

ENC = "net.swinViT."


def _make(feature_size: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("swin_unetr_tiny", feature_size=feature_size)


def swinvit_layout(bb) -> dict:
    """model_swinvit.pt: {"state_dict": {"module.<swinViT key, mlp.fc1/fc2>": ...}} (METHODS.md §0.4)."""
    sd = {}
    for k, v in bb.state_dict().items():
        if k.startswith(ENC):
            key = k[len(ENC) :].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
            sd["module." + key] = v.clone()
    return {"state_dict": sd}


def asa_layout(bb) -> dict:
    """ASA teacher: {"teacher": {"module.model.<SwinUNETR key>", "module.head.*", "module.mlp.*", ...}}."""
    t = {"module.model." + k[len("net.") :]: v.clone() for k, v in bb.state_dict().items()}
    t["module.model.out.conv.conv.weight"] = torch.zeros(14, bb.feature_size, 1, 1, 1)
    t["module.model.out.conv.conv.bias"] = torch.zeros(14)
    t["module.head.0.weight"] = torch.zeros(3, 8)
    t["module.mlp.0.weight"] = torch.zeros(16, 8)
    t["module.mlp_local.0.weight"] = torch.zeros(16, 8)
    return {"teacher": t, "student": {}, "epoch": 3}


def _encoder_equal(bb, src) -> bool:
    a, b = bb.state_dict(), src.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(ENC))


def test_swinunetr_ssl_layout_loads_the_whole_encoder(tmp_path, capsys):
    src, dst = _make(seed=0), _make(seed=1)
    dec_before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith(ENC)}
    torch.save(swinvit_layout(src), tmp_path / "model_swinvit.pt")
    report = load_external(dst, tmp_path / "model_swinvit.pt", "swinunetr_ssl")
    assert _encoder_equal(dst, src)
    n_enc = sum(k.startswith(ENC) for k in dst.state_dict())
    assert len(report["matched"]) == n_enc and not report["missing"] and not report["unexpected"]
    assert len(report["not_provided"]) == len(dec_before)  # the decoder is not in the file
    for k, v in dst.state_dict().items():
        if not k.startswith(ENC):
            assert torch.equal(v, dec_before[k])  # and keeps its initialisation
    line = capsys.readouterr().out.strip()
    assert re.match(rf"external: matched {n_enc}, missing 0, unexpected 0, decoder not provided", line)
    assert "model_swinvit.pt" in line


def test_ssl_training_checkpoint_with_heads_is_read_too(tmp_path):
    src, dst = _make(seed=0), _make(seed=1)
    doc = swinvit_layout(src)
    sd = {"module.swinViT." + k[len("module.") :]: v for k, v in doc["state_dict"].items()}
    sd["module.rotation_head.weight"] = torch.zeros(4, 192)
    sd["module.contrastive_head.weight"] = torch.zeros(512, 192)
    sd["module.conv.0.weight"] = torch.zeros(96, 192, 3, 3, 3)
    torch.save({"state_dict": sd}, tmp_path / "model_bestValRMSE.pt")
    report = load_external(dst, tmp_path / "model_bestValRMSE.pt", "swinunetr_ssl")
    assert _encoder_equal(dst, src) and len(report["dropped"]) == 3 and not report["unexpected"]


def test_matches_monai_load_from_at_feature_size_48(tmp_path):
    """Independent reference: MONAI's own SwinUNETR.load_from on the same model_swinvit-layout dict."""
    src, dst = _make(48, seed=0), _make(48, seed=1)
    doc = swinvit_layout(src)
    del src
    torch.save(doc, tmp_path / "model_swinvit.pt")
    load_external(dst, tmp_path / "model_swinvit.pt", "swinunetr_ssl")
    ours = {k: v.clone() for k, v in dst.net.swinViT.state_dict().items()}
    with torch.no_grad():
        for p in dst.net.swinViT.parameters():
            p.zero_()
    dst.net.load_from(doc)  # MONAI's loader, same model class
    theirs = dst.net.swinViT.state_dict()
    assert ours.keys() == theirs.keys() and len(ours) == 126
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_a_dropped_encoder_key_fails_naming_the_file(tmp_path):
    doc = swinvit_layout(_make())
    del doc["state_dict"]["module.layers2.0.blocks.1.mlp.fc2.weight"]
    torch.save(doc, tmp_path / "w.pt")
    with pytest.raises(
        ValueError,
        match=r"w\.pt.*1 encoder key\(s\) missing: net\.swinViT\.layers2\.0\.blocks\.1\.mlp"
        r"\.linear2\.weight",
    ):
        load_external(_make(seed=1), tmp_path / "w.pt", "swinunetr_ssl")


def test_unrenamed_fc_keys_fail_instead_of_loading_nothing(tmp_path):
    """The BTCV --use_ssl_pretrained pitfall: keys that do not map are never silently skipped."""
    doc = swinvit_layout(_make())
    torch.save(
        {"state_dict": {"swin_vit." + k[len("module.") :]: v for k, v in doc["state_dict"].items()}}, tmp_path / "w.pt"
    )
    load_external(_make(seed=1), tmp_path / "w.pt", "swinunetr_ssl")  # swin_vit. is a known alias
    torch.save({"state_dict": {"encoder." + k: v for k, v in doc["state_dict"].items()}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="encoder key\\(s\\) missing"):
        load_external(_make(seed=1), tmp_path / "bad.pt", "swinunetr_ssl")


def test_a_shape_mismatch_fails_with_a_backbone_hint(tmp_path):
    torch.save(swinvit_layout(_make(24)), tmp_path / "w24.pt")
    with pytest.raises(ValueError, match=r"w24\.pt.*shape mismatch.*feature_size 24"):
        load_external(_make(12), tmp_path / "w24.pt", "swinunetr_ssl")
    doc = swinvit_layout(_make())
    doc["state_dict"]["module.layers1.0.blocks.0.attn.proj.weight"] = torch.zeros(12, 13)
    torch.save(doc, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"1 shape mismatch\(es\): net\.swinViT\.layers1\.0\.blocks\.0\.attn\.proj"):
        load_external(_make(seed=1), tmp_path / "w.pt", "swinunetr_ssl")


def test_asa_teacher_layout_loads_encoder_and_decoder(tmp_path):
    src, dst = _make(seed=0), _make(seed=1)
    torch.save(asa_layout(src), tmp_path / "asa.pth")
    report = load_external(dst, tmp_path / "asa.pth", "asa")
    for (k, a), (_, b) in zip(dst.state_dict().items(), src.state_dict().items()):
        assert torch.equal(a, b), k
    assert len(report["dropped"]) == 5 and not report["missing"] and not report["unexpected"]
    doc = asa_layout(src)
    del doc["teacher"]["module.model.decoder1.transp_conv.conv.weight"]
    torch.save(doc, tmp_path / "asa_bad.pth")
    with pytest.raises(ValueError, match="decoder key\\(s\\) missing: net.decoder1"):
        load_external(dst, tmp_path / "asa_bad.pth", "asa")
    with pytest.raises(ValueError, match="expected a dict with 'teacher'"):
        torch.save(swinvit_layout(src), tmp_path / "other.pt")
        load_external(dst, tmp_path / "other.pt", "asa")


def test_bench_export_layout_is_strict(tmp_path):
    src, dst = _make(seed=0), _make(seed=1)
    save_export(src, tmp_path / "export.pt", {"method": "x"})
    load_external(dst, tmp_path / "export.pt", "bench")
    for (k, a), (_, b) in zip(dst.state_dict().items(), src.state_dict().items()):
        assert torch.equal(a, b), k
    doc = torch.load(tmp_path / "export.pt", weights_only=True)
    doc["state_dict"]["net.extra.weight"] = torch.zeros(1)
    torch.save(doc, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="1 unexpected key"):
        load_external(dst, tmp_path / "extra.pt", "bench")


def test_method_loads_exports_and_round_trips(tmp_path):
    src = _make(seed=0)
    torch.save(swinvit_layout(src), tmp_path / "model_swinvit.pt")
    cls = METHODS.get("external")
    assert cls.pretrains is False
    m = cls(_make(seed=1), cls.make_config({"checkpoint": str(tmp_path / "model_swinvit.pt")}))
    enc = m.export_encoder()
    assert _encoder_equal(enc, src)
    save_export(enc, tmp_path / "e.pt", {"method": "external"})
    bb, _ = load_export(tmp_path / "e.pt")
    assert _encoder_equal(bb, src)


def test_without_checkpoint_it_constructs_but_refuses_to_export():
    cls = METHODS.get("external")
    m = cls(_make(), cls.make_config({}))
    with pytest.raises(MissingCheckpointError, match="method.config.checkpoint=PATH"):
        m.export_encoder()
    b = cls(_make(seed=1), cls.make_config({}))
    b.load_state_dict(m.state_dict(), strict=True)


def test_unknown_format_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'timm'.*swinunetr_ssl"):
        External(_make(), External.Config(checkpoint=None, format="timm"))
    with pytest.raises(ValueError, match="does not exist"):
        External(_make(), External.Config(checkpoint=str(tmp_path / "nope.pt")))


def test_saswin_layout_keeps_the_encoder_only(tmp_path):
    src, dst = _make(seed=0), _make(seed=1)
    sd = {"swinViT." + k[len(ENC) :]: v.clone() for k, v in src.state_dict().items() if k.startswith(ENC)}
    sd["symmetryAwareTX.attention.self.query.weight"] = torch.zeros(192, 192)
    sd["aaw_head.weight"] = torch.zeros(512, 192)
    torch.save({"state_dict": sd}, tmp_path / "sa.pt")
    report = load_external(dst, tmp_path / "sa.pt", "saswin")
    assert _encoder_equal(dst, src) and len(report["dropped"]) == 2


def test_cache_identity_is_the_files_content_hash(tmp_path):
    """Independent reference: hashlib over the bytes on disk; a replaced file at the same path changes it."""
    import hashlib

    path = tmp_path / "model_swinvit.pt"
    torch.save(swinvit_layout(_make(seed=0)), path)
    cfg = External.Config(checkpoint=str(path))
    first = External.cache_identity(cfg)
    assert first == {"checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": "swinunetr_ssl"}
    assert External(_make(seed=1), cfg).report["sha256"] == first["checkpoint_sha256"]
    torch.save(swinvit_layout(_make(seed=2)), path)
    assert External.cache_identity(cfg)["checkpoint_sha256"] != first["checkpoint_sha256"]
    assert External.cache_identity(External.Config()) == {}
    with pytest.raises(ValueError, match="nope.pt does not exist"):
        External.cache_identity(External.Config(checkpoint=str(tmp_path / "nope.pt")))
    for name in METHODS.names():  # the default for every other method: nothing beyond its config
        if name != "external":
            cls = METHODS.get(name)
            assert cls.cache_identity(cls.make_config({})) == {}
