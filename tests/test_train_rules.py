"""Per-method training rules the official recipes differ on: which parameters are exempt from weight decay
(``train.no_decay`` in each method's YAML), and stochastic depth set on a method's training copy only."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from timm.layers import DropPath

from bench.backbones import build_backbone
from bench.engine import TrainConfig
from bench.registry import METHODS
from methods.base import PretrainMethod


def _tiny():
    torch.manual_seed(0)
    return build_backbone("swin_unetr_tiny", depths=(1, 1, 1, 1))


def _rule(method: str) -> tuple[str, ...]:
    train = OmegaConf.to_container(OmegaConf.load(f"conf/method/{method}.yaml"))["train"]
    return TrainConfig.from_dict({k: v for k, v in train.items() if k in TrainConfig.__dataclass_fields__}).no_decay


def _groups(method: PretrainMethod, rule):
    decay, exempt = method.param_groups(0.1, rule)
    ids = {id(p): n for n, p in method.named_parameters()}
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    return {ids[id(p)] for p in decay["params"]}, {ids[id(p)] for p in exempt["params"]}


def test_official_swin_unetr_ssl_and_sa_swin_decay_every_parameter():
    for name in ("swinunetr_ssl", "saca"):
        assert _rule(name) == ()
        m = METHODS.get(name)(_tiny(), METHODS.get(name).make_config({}))
        decay, exempt = _groups(m, _rule(name))
        assert not exempt
        assert any(n.endswith(".bias") for n in decay) and any("norm" in n for n in decay)


def test_simmim_exempts_norms_biases_mask_token_and_relative_position_tables_only():
    m = METHODS.get("simmim3d")(_tiny(), METHODS.get("simmim3d").make_config({}))
    decay, exempt = _groups(m, _rule("simmim3d"))
    assert "mask_token" in exempt
    tables = {n for n in exempt if n.endswith("relative_position_bias_table")}
    assert tables and not any(n.endswith("relative_position_bias_table") for n in decay)
    params = dict(m.named_parameters())
    assert all(params[n].ndim <= 1 for n in exempt - tables - {"mask_token"})
    assert all(params[n].ndim > 1 for n in decay)


def test_default_rule_is_the_harness_rule_and_a_rule_string_is_refused():
    assert TrainConfig().no_decay == ("1d", "token", "tokens")
    m = METHODS.get("simmim3d")(_tiny(), METHODS.get("simmim3d").make_config({}))
    decay, exempt = _groups(m, TrainConfig().no_decay)
    assert "mask_token" in exempt and any(n.endswith("relative_position_bias_table") for n in decay)
    with pytest.raises(ValueError, match="no_decay must be a list"):
        TrainConfig.from_dict({"no_decay": "1d"})


def _drop_rates(module: torch.nn.Module) -> list[float]:
    return [m.drop_prob for m in module.modules() if isinstance(m, DropPath)]


def test_drop_path_is_linear_in_depth_and_changes_no_weight_or_build_kwarg():
    bb = _tiny()
    keys, kwargs = list(bb.state_dict()), bb.build_kwargs()
    bb.set_drop_path(0.1)
    assert _drop_rates(bb) == pytest.approx([0.0 + 0.1 * i / 3 for i in range(1, 4)])  # block 0 at rate 0: Identity
    assert list(bb.state_dict()) == keys and bb.build_kwargs() == kwargs
    x = torch.randn(2, 1, 64, 64, 64)
    bb.eval()
    with torch.no_grad():
        eval_a = bb.encode(x)[-1]
    bb.train()
    torch.manual_seed(1)
    with torch.no_grad():
        train_a = bb.encode(x)[-1]
    bb.set_drop_path(0.0)
    assert _drop_rates(bb) == []
    with torch.no_grad():
        train_b = bb.encode(x)[-1]
        bb.eval()
        eval_b = bb.encode(x)[-1]
    assert torch.equal(eval_a, eval_b)  # inference never drops a path
    assert not torch.allclose(train_a, train_b)  # training did
    with pytest.raises(ValueError, match="drop_path_rate"):
        bb.set_drop_path(1.0)


def test_drop_path_on_a_timm_vit_sets_both_slots_of_each_block():
    bb = build_backbone("vit_tiny_2d", img_size=64, depth=3)
    bb.set_drop_path(0.2)
    rates = _drop_rates(bb)
    assert rates == pytest.approx([0.1, 0.1, 0.2, 0.2])
