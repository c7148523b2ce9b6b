"""``saca``: SA-Swin, symmetry-aware cross-attention (SACA) and symmetry-aware head pre-training (MICCAI 2024).

Recipe (shared/METHODS.md §4; [V] official code ``bitMyron/sa-swin``: ``models/ssl_head.py::SymmetryEnhancedHead``,
``main_pretrain_patched.py``, ``losses/loss.py``, ``utils/ops.py``; [P] paper; [I] harness choice). The Swin UNETR
SSL ops (rotation, cutout, heads, NT-Xent) are shared with ``swinunetr_ssl`` (``methods/_swin_ssl.py``).

- Symmetric counterpart [V] (``views``, ``symmetric_crop``): a random ROI crop with ranges (X, Y, Z) of the
  preprocessed [C, X, Y, Z] volume (RAS+, X = left-right) and its counterpart with the X-range mirrored,
  [W - stop, W - start), same Y and Z, flipped along X so that both are in the same orientation. Voxel (p, y, z)
  of the crop and voxel (p, y, z) of the counterpart are mirror images about the volume's central sagittal plane
  (volume X index x <-> W - 1 - x). Inputs are assumed midway-registered ([P]: the mid-sagittal plane is the
  volume's central L-R plane); the harness does not register. A volume smaller than the ROI is padded
  symmetrically first (for an odd padding the plane moves by half a voxel).
- Per step [V]: x1, x~1 share one random k*90 rotation (plane of sample dims (2, 3), as Swin UNETR SSL), x2, x~2
  another; cutout/paste on x1 and x2 only (the counterparts stay clean); the encoder (shared weights) gives hs[4]
  tokens F1, F~1, F2, F~2 (B, N, D), N = h*w*d row-major.
- Symmetry-aware head (SAH) [V]: e = Linear(D, 512) on token 1 of the *pre-SACA* tokens of a pair; s = cos(e, e~);
  L_sym = L(pair of view 1) + L(pair of view 2), weight 0.5.
- SACA [V] (``SACABlock``): a post-LN BERT layer: A = LN(F + Drop(W_o MHSA(F))); C = LN(A + Drop(W_o'
  MHA(q = A, k = v = F~))); out = LN(C + Drop(W_2 GELU(W_1 C))), FFN 4x, dropout 0.1 (attention probabilities and
  hidden), LN eps 1e-12, no positional embedding, no mask; G = SACA(F, F~).
- Rotation Linear(D, 4) on token 0 of G (CE vs k), contrastive Linear(D, 512) on token 1 of G1, G2 (NT-Xent,
  tau 0.5), the "vae" decoder on G as a (D, h, w, d) map (L1 over the whole volume vs the rotated, un-cut-out x1,
  x2). Total = 1 L_rot + 1 L_con + 1 L_rec + 0.5 L_sym [V].
- Init [V]: trunc-normal std 0.02 for every Linear (bias 0), LayerNorm weight 1 / bias 0 - the code applies this to
  the whole model, the Swin encoder included (``init_encoder=True``).
- Optimiser [V] (conf/method/saca.yaml): AdamW lr 4e-4, weight decay 0.1, 500 / 100k warmup steps, cosine.

The symmetry target (``symmetry_target``):

- ``"auto"`` (default): ``"label"`` where the pretraining corpus has per-volume health labels (the dataset's
  ``volume_labels``; the brain suite's generator knows which subjects have a lesion), else ``"self"``. The runner
  settles it before training (``bind_volume_labels``), records it in the export's metadata (``objective``) and in
  each cell's ``metrics.json`` (``pretrain_objective``), and keys the pretraining cache with the labels' presence.
  Unbound (outside the runner) it is ``"self"``.
- ``"self"`` ([I], no labels needed): pairs of a clean crop and its clean counterpart are symmetric
  (target 1, a healthy-like pair); synthetic asymmetric pairs are the crop with one random local intensity blob
  and the clean counterpart (target 0): the pair differs from the symmetric pair only on the crop's side, inside
  the blob's box (``add_blob``: a Gaussian bump, sigma ``blob_sigma`` x ROI side per axis, amplitude
  ``blob_amplitude`` x the sample's intensity range, towards the far end of the range, clipped to that range,
  cut at 3 sigma). Of the 2N (view, crop) pairs exactly round(``negative_fraction`` * 2N) are asymmetric, chosen
  at random. The pairs use the rotated views x1, x2 *before* cutout (a cut-out crop is itself asymmetric to its
  counterpart), so self mode encodes 6N volumes per step instead of 4N (the anchors a1, a2 added to v1, v2, x~1, x~2);
  ``symmetry_views=1`` keeps only the view-1 term (5N encoded; round(negative_fraction * N) negatives).
- ``"label"`` (the official code [V]): the pairs are (cut-out v_r, clean x~_r) and the target is the volume's
  health label (1 healthy, 0 patient; the code's ``label_health = 1 - label``): ``views`` turns the sample's
  ``volume_label`` into the batch's ``health``. The run is refused on a corpus without volume labels. This is the
  official recipe, and it pretrains with a per-volume label: on brain the label is "has a lesion", which the side
  task's classes refine (none vs right/left), on disjoint subjects.

Symmetry loss variants (``symmetry_loss``) [V], s = cos(e, e~), h = target:

- ``cosine_nce`` (code default): BCE-with-logits(s, h), the raw cosine in [-1, 1] as the logit;
- ``siamese``: mean((1 - h) s + h (1 - s));
- ``cosine``: -log(sum_b h_b exp(s_b / tau) + 1e-6) + logsumexp_b(s_b / tau), tau = 0.07 (``symmetry_tau``).

Other choices [I]:

- SACA width = feature_dim (768 for swin_unetr_base as the code, 192 for swin_unetr_tiny); heads ``saca_heads``,
  0 = feature_dim // 64 (head dim 64: 12 at 768, 3 at 192, as BERT's 12 x 64).
- ``rotation_axis`` as in ``swinunetr_ssl`` ("x" = code; "z" = Swin UNETR paper's wording). With "z" the shared
  rotation no longer commutes with the L-R flip (the rotated counterpart is then mirrored along another axis).
- Export: the backbone (strict), as for every method, plus ``export_extras()``: the pre-trained SACA block's
  weights and shape (``{"saca": {"state_dict", "dim", "heads", "dropout"}}``), because the official classifier
  fine-tuning starts from the pre-trained block (a non-strict load of the whole checkpoint, METHODS.md §4.4).
  ``SACAClassifier.from_extras`` rebuilds the classifier with that block (strict). The symmetry-aware head and
  the SSL heads are pre-training only and are not exported (the official downstream heads do not use them).
- The code's README pre-training command is a different, symmetry-only model (patch size 4, A-P flip) that this
  method does not reproduce (METHODS.md §4.3).

- [0]: Ma et al., Symmetry Awareness Encoded Deep Learning Framework for Brain Imaging Analysis, MICCAI 2024,
  arXiv 2407.08948
- [1]: Devlin et al., BERT, NAACL 2019 (the post-LN layer with cross-attention)
- [2]: Tang et al., Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis, CVPR 2022
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import SwinUNETRBackbone
from bench.data import pad_to
from bench.registry import HEADS, METHODS
from methods._swin_ssl import (
    CutoutSpec,
    SSLHeads,
    aug_rand,
    check_roi,
    check_rotation,
    flatten_crops,
    nt_xent,
    rot_rand,
    step_rng,
    tokens,
)
from methods.base import PretrainMethod, StepInfo, StepOutput

SYMMETRY_LOSSES = ("cosine_nce", "siamese", "cosine")
SYMMETRY_TARGETS = ("auto", "self", "label")


# --- symmetric counterpart ------------------------------------------------------------------------------------------
def mirror_range(start: int, stop: int, width: int) -> tuple[int, int]:
    """The X-range of the counterpart of [start, stop) in a volume of ``width``: [W - stop, W - start)."""
    return width - stop, width - start


def symmetric_crop(image: np.ndarray, starts: Sequence[int], roi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop [C, X, Y, Z] at ``starts`` and its sagittal counterpart (X-range mirrored, then flipped along X)."""
    w = image.shape[1]
    sl = tuple(slice(s, s + r) for s, r in zip(starts, roi))
    m0, m1 = mirror_range(sl[0].start, sl[0].stop, w)
    crop = image[(slice(None),) + sl]
    counterpart = image[:, m0:m1, sl[1], sl[2]][:, ::-1]
    return crop, counterpart


def symmetric_views(
    image: np.ndarray, roi: Sequence[int], rng: np.random.Generator, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` random symmetric crop pairs: tensors [C, *roi] (k = 1) or [k, C, *roi]."""
    image = pad_to(image, roi)
    crops, counterparts = [], []
    for _ in range(k):
        starts = [int(rng.integers(0, s - r + 1)) for s, r in zip(image.shape[1:], roi)]
        c, m = symmetric_crop(image, starts, roi)
        crops.append(c)
        counterparts.append(m)

    def t(a: list[np.ndarray]) -> torch.Tensor:
        out = torch.from_numpy(np.ascontiguousarray(np.stack(a), dtype=np.float32))
        return out[0] if k == 1 else out

    return t(crops), t(counterparts)


# --- synthetic asymmetry (self-supervised symmetry target) -----------------------------------------------------------
def add_blob(
    x: torch.Tensor,
    rng: np.random.Generator,
    sigma: Sequence[float] = (0.04, 0.12),
    amplitude: Sequence[float] = (0.2, 0.5),
) -> tuple[slice, ...]:
    """In place on one sample [C, *S]: add a Gaussian intensity bump; returns its box (the only voxels changed).

    Centre uniform over the volume; sigma_d = u * S_d, u ~ U(sigma); peak a * (max - min) of the sample with
    a ~ U(amplitude), signed towards the far end of the intensity range from the centre voxel, clipped to [min, max];
    the bump is cut at 3 sigma.
    """
    spatial = x.shape[1:]
    centre = [int(rng.integers(0, s)) for s in spatial]
    u = rng.uniform(*sigma)
    sig = [max(u * s, 0.5) for s in spatial]
    lo_v, hi_v = x.min(), x.max()
    span = (hi_v - lo_v).clamp_min(1e-6)
    mid = (lo_v + hi_v) / 2
    sign = 1.0 if float(x[(slice(None), *centre)].mean()) < float(mid) else -1.0
    amp = sign * rng.uniform(*amplitude) * span
    box = tuple(
        slice(max(0, c - int(np.ceil(3 * s))), min(n, c + int(np.ceil(3 * s)) + 1))
        for c, s, n in zip(centre, sig, spatial)
    )
    axes = [
        ((torch.arange(b.start, b.stop, device=x.device, dtype=torch.float32) - c) / s) ** 2
        for b, c, s in zip(box, centre, sig)
    ]
    g = torch.exp(-0.5 * (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]))
    sl = (slice(None),) + box
    x[sl] = torch.minimum(torch.maximum(x[sl] + (amp * g).to(x.dtype), lo_v), hi_v)
    return box


def asymmetric_anchors(
    views: Sequence[torch.Tensor],
    rng: np.random.Generator,
    negative_fraction: float,
    sigma: Sequence[float],
    amplitude: Sequence[float],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Crop-side members of the self-supervised symmetry pairs, one batch per view.

    Returns anchors (copies of the clean rotated crops, e.g. x1 and x2, with a blob in the chosen negatives) and
    targets (1 symmetric, 0 asymmetric). Of the V*N pairs exactly round(negative_fraction * V*N) are negatives.
    """
    n = views[0].shape[0]
    total = n * len(views)
    neg = np.zeros(total, dtype=bool)
    neg[rng.permutation(total)[: int(round(negative_fraction * total))]] = True
    anchors = torch.cat(list(views)).detach().clone()
    for i in np.flatnonzero(neg):
        add_blob(anchors[i], rng, sigma, amplitude)
    target = torch.as_tensor(~neg, dtype=torch.float32, device=anchors.device)
    return list(anchors.split(n)), list(target.split(n))


def symmetry_loss(
    e: torch.Tensor, e_mirror: torch.Tensor, target: torch.Tensor, kind: str = "cosine_nce", tau: float = 0.07
) -> torch.Tensor:
    """The SAH loss on a batch of pairs (``Loss_AA``); ``target`` 1 = symmetric (healthy), 0 = asymmetric."""
    s = F.cosine_similarity(e.float(), e_mirror.float(), dim=1)
    h = target.float()
    if kind == "cosine_nce":
        return F.binary_cross_entropy_with_logits(s, h)
    if kind == "siamese":
        return ((1 - h) * s + h * (1 - s)).mean()
    if kind == "cosine":
        z = s / tau
        return -torch.log((torch.exp(z) * h).sum() + 1e-6) + torch.logsumexp(z, dim=0)
    raise ValueError(f"symmetry_loss must be one of {', '.join(SYMMETRY_LOSSES)}; got {kind!r}")


# --- SACA block -------------------------------------------------------------------------------------------------------
class _PostLNAttention(nn.Module):
    """BERT attention + output: LN(x + Drop(W_o Attn(q = x, k = v = context)))."""

    def __init__(self, dim: int, heads: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dense = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(x.shape)
        return self.norm(x + self.drop(self.dense(a)))


class SACABlock(nn.Module):
    """Symmetry-aware cross-attention: one post-LN BERT layer with cross-attention to the mirrored tokens."""

    def __init__(self, dim: int, heads: int = 0, dropout: float = 0.1, mlp_ratio: int = 4, eps: float = 1e-12) -> None:
        super().__init__()
        heads = heads or max(1, dim // 64)
        if dim % heads:
            raise ValueError(f"SACA: width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.attention = _PostLNAttention(dim, heads, dropout, eps)
        self.crossattention = _PostLNAttention(dim, heads, dropout, eps)
        self.intermediate = nn.Linear(dim, mlp_ratio * dim)
        self.output = nn.Linear(mlp_ratio * dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, x_mirror: torch.Tensor) -> torch.Tensor:
        """x, x_mirror: [B, N, D] tokens of a volume and of its counterpart -> [B, N, D]."""
        a = self.attention(x, x)
        c = self.crossattention(a, x_mirror)
        return self.norm(c + self.drop(self.output(F.gelu(self.intermediate(c)))))


def init_trunc_normal(module: nn.Module) -> None:
    """SA-Swin's ``_init_weights``: Linear trunc-normal(0.02) / bias 0, LayerNorm 1 / 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --- pretraining method -----------------------------------------------------------------------------------------------
@METHODS.register("saca", tags=("3d",))
class SACA(PretrainMethod):
    @dataclass
    class Config:
        symmetry_target: str = "auto"  # auto: label where the corpus has volume labels, else self | self | label (code)
        symmetry_loss: str = "cosine_nce"  # cosine_nce (code default) | siamese | cosine
        symmetry_tau: float = 0.07  # `cosine` variant only
        negative_fraction: float = 0.5  # self: share of asymmetric pairs
        symmetry_views: int = 2  # self: views with a symmetry term (code: 2); 1 encodes N fewer crops
        blob_sigma: tuple[float, float] = (0.04, 0.12)  # self: blob sigma / ROI side
        blob_amplitude: tuple[float, float] = (0.2, 0.5)  # self: blob peak / intensity range
        saca_heads: int = 0  # 0: feature_dim // 64 (12 at 768, 3 at 192)
        saca_dropout: float = 0.1
        init_encoder: bool = True  # code: trunc-normal init covers the Swin encoder too
        rotation_axis: str = "x"  # code; "z": Swin UNETR paper's wording
        tau: float = 0.5  # NT-Xent temperature
        proj_dim: int = 512
        max_drop: float = 0.3
        max_block: float = 0.25
        tolerance: float = 0.05
        w_rot: float = 1.0
        w_con: float = 1.0
        w_rec: float = 1.0
        w_sym: float = 0.5
        crops_per_volume: int = 1  # code: sw_batch_size = 2 (budget=paper: 2)

    capabilities: ClassVar[frozenset[str]] = frozenset({"3d"})
    wants_volume_labels: ClassVar[bool] = True  # the official symmetry target is the volume's health label

    def __init__(self, backbone: SwinUNETRBackbone, cfg: Config | None = None) -> None:
        super().__init__(backbone, cfg)
        cfg = self.cfg
        if cfg.symmetry_target not in SYMMETRY_TARGETS:
            raise ValueError(
                f"saca: symmetry_target must be one of {', '.join(SYMMETRY_TARGETS)}; got {cfg.symmetry_target!r}"
            )
        if cfg.symmetry_loss not in SYMMETRY_LOSSES:
            raise ValueError(
                f"saca: symmetry_loss must be one of {', '.join(SYMMETRY_LOSSES)}; got {cfg.symmetry_loss!r}"
            )
        if not 0.0 <= cfg.negative_fraction <= 1.0:
            raise ValueError(f"saca: negative_fraction must be in [0, 1]; got {cfg.negative_fraction}")
        if cfg.crops_per_volume < 1:
            raise ValueError(f"saca: crops_per_volume must be >= 1; got {cfg.crops_per_volume}")
        if cfg.symmetry_views not in (1, 2):
            raise ValueError(f"saca: symmetry_views must be 1 or 2; got {cfg.symmetry_views}")
        check_rotation(cfg.rotation_axis, (1, 1, 1))
        # the target in use: auto stays self until the runner says the corpus has volume labels
        self.symmetry_target = "label" if cfg.symmetry_target == "label" else "self"
        dim = backbone.feature_dim
        self.heads = SSLHeads(dim, backbone.in_channels, cfg.proj_dim)
        self.aaw_head = nn.Linear(dim, cfg.proj_dim)  # the symmetry-aware head
        self.saca = SACABlock(dim, cfg.saca_heads, cfg.saca_dropout)
        init_trunc_normal(self.heads)
        init_trunc_normal(self.aaw_head)
        init_trunc_normal(self.saca)
        if cfg.init_encoder:
            init_trunc_normal(backbone.encoder)

    def bind_volume_labels(self, available: bool) -> dict[str, Any]:
        """Settle ``auto`` (label where the corpus has volume labels); ``label`` without them is an error."""
        want = self.cfg.symmetry_target
        if want == "label" and not available and self.cfg.w_sym != 0:
            raise ValueError(
                "saca: symmetry_target=label (the official target) needs per-volume health labels, which this "
                "pretraining corpus does not have (brain has them); use method.config.symmetry_target=auto or self"
            )
        self.symmetry_target = "label" if want == "label" or (want == "auto" and available) else "self"
        return {"symmetry_target": self.symmetry_target}

    def export_extras(self) -> dict[str, Any]:
        """The pre-trained SACA block for downstream use (``SACAClassifier.from_extras``); plain tensors and
        numbers only, so the export still loads with ``torch.load(weights_only=True)``."""
        state = {k: v.detach().cpu().clone() for k, v in self.saca.state_dict().items()}
        return {
            "saca": {
                "state_dict": state,
                "dim": self.backbone.feature_dim,
                "heads": self.saca.heads,
                "dropout": float(self.cfg.saca_dropout),
            }
        }

    def views(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        k = self.cfg.crops_per_volume
        crop, counterpart = symmetric_views(sample["image"], tuple(sample["roi"]), rng, k)
        out: dict[str, Any] = {"image": crop, "image_sym": counterpart}
        if sample.get("volume_label") is not None:  # 1 healthy, 0 patient (the runner's, where the corpus has it)
            h = torch.tensor(float(sample["volume_label"]))
            out["health"] = h if k == 1 else h.repeat(k)
        return out

    def _health(self, batch: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        if "health" not in batch:
            raise ValueError(
                "saca: symmetry_target='label' needs a per-sample 'health' tensor in the batch "
                "(1 = healthy, 0 = patient; views() makes it from the sample's 'volume_label'), which this "
                "pretraining corpus does not provide; use method.config.symmetry_target=self (no labels)"
            )
        h = batch["health"].reshape(-1).float()
        if h.numel() != n:
            raise ValueError(f"saca: 'health' has {h.numel()} entries for {n} crops")
        if not torch.all((h == 0) | (h == 1)):
            raise ValueError("saca: 'health' must be 0 (patient) or 1 (healthy)")
        return h

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> StepOutput:
        cfg = self.cfg
        x, xs = flatten_crops(batch["image"]), flatten_crops(batch["image_sym"])
        check_roi(x.shape[2:], "saca")
        n = x.shape[0]
        use_sym = cfg.w_sym != 0
        label_mode = self.symmetry_target == "label"
        health = self._health(batch, n) if use_sym and label_mode else None
        rng = step_rng()
        spec = CutoutSpec(cfg.max_drop, cfg.max_block, cfg.tolerance)
        (x1, xs1), k1 = rot_rand([x, xs], rng, cfg.rotation_axis)
        (x2, xs2), k2 = rot_rand([x, xs], rng, cfg.rotation_axis)
        v1, _ = aug_rand(x1, rng, spec)
        v2, _ = aug_rand(x2, rng, spec)
        inputs = [v1, v2, xs1, xs2]
        if use_sym and not label_mode:
            anchors, targets = asymmetric_anchors(
                [x1, x2][: cfg.symmetry_views], rng, cfg.negative_fraction, cfg.blob_sigma, cfg.blob_amplitude
            )
            inputs += anchors
        hs4 = self.backbone.encode(torch.cat(inputs))[4]
        grid = hs4.shape[2:]
        tok = tokens(hs4).split(n)
        f1, f2, fs1, fs2 = tok[:4]
        zero = hs4.new_zeros((), dtype=torch.float32)
        loss_rot = loss_con = loss_rec = loss_sym = zero
        logs: dict[str, Any] = {}
        if use_sym:
            if label_mode:
                pairs = [(f1, fs1, health), (f2, fs2, health)]
                logs["sym_healthy"] = health.mean().detach()  # the batch's share of healthy volumes
            else:
                pairs = list(zip(tok[4:], [fs1, fs2], targets))
            cos, tgt = [], []
            for fa, fb, t in pairs:
                ea, eb = self.aaw_head(fa[:, 1]), self.aaw_head(fb[:, 1])
                loss_sym = loss_sym + symmetry_loss(ea, eb, t, cfg.symmetry_loss, cfg.symmetry_tau)
                cos.append(F.cosine_similarity(ea.float(), eb.float(), dim=1).detach())
                tgt.append(t)
            cos_all, tgt_all = torch.cat(cos), torch.cat(tgt)
            if (tgt_all == 1).any():
                logs["sym_cos_pos"] = cos_all[tgt_all == 1].mean()
            if (tgt_all == 0).any():
                logs["sym_cos_neg"] = cos_all[tgt_all == 0].mean()
        g = self.saca(torch.cat([f1, f2]), torch.cat([fs1, fs2]))
        if cfg.w_rot:
            logits = self.heads.rotation(g).float()
            target = torch.cat([k1, k2])
            loss_rot = F.cross_entropy(logits, target)
            logs["rot_acc"] = (logits.argmax(1) == target).float().mean().detach()
        if cfg.w_con:
            z = self.heads.contrastive(g)
            loss_con = nt_xent(z[:n], z[n:], cfg.tau)
        if cfg.w_rec:
            rec = self.heads.reconstruct(g, grid).float()
            loss_rec = F.l1_loss(rec, torch.cat([x1, x2]).float())
        loss = cfg.w_rot * loss_rot + cfg.w_con * loss_con + cfg.w_rec * loss_rec + cfg.w_sym * loss_sym
        logs.update(
            loss_rot=loss_rot.detach(),
            loss_con=loss_con.detach(),
            loss_rec=loss_rec.detach(),
            loss_sym=loss_sym.detach(),
        )
        return StepOutput(loss, logs)


# --- downstream classifier --------------------------------------------------------------------------------------------
class SACAClassifier(nn.Module):
    """SA-Swin's ``SACAClassifierHead``: Swin encoder on x and on its L-R mirror, SACA, token 0 -> Linear.

    ``forward(x, x_mirror=None)``: x [B, C, X, Y, Z] (RAS+); ``x_mirror`` defaults to x flipped along X (the
    whole-volume counterpart of a midway-registered volume). The code's ill-formed self-attention mask is omitted
    (METHODS.md §4.4). ``saca_state`` loads a pre-trained SACA block (``SACA(...).saca.state_dict()``).
    """

    def __init__(
        self,
        backbone: SwinUNETRBackbone,
        n_classes: int,
        heads: int = 0,
        dropout: float = 0.1,
        saca_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.feature_dim
        self.saca = SACABlock(dim, heads, dropout)
        init_trunc_normal(self.saca)
        if saca_state is not None:
            self.saca.load_state_dict(saca_state, strict=True)
        self.head = nn.Linear(dim, n_classes)

    @classmethod
    def from_extras(cls, backbone: SwinUNETRBackbone, n_classes: int, extras: dict[str, Any]) -> SACAClassifier:
        """The classifier with the pre-trained SACA block of a ``saca`` export (``SACA.export_extras()``)."""
        block = extras.get("saca") if isinstance(extras, dict) else None
        if not isinstance(block, dict) or "state_dict" not in block:
            found = sorted(extras) if isinstance(extras, dict) else type(extras).__name__
            raise ValueError(
                f"SACAClassifier: the export has no pre-trained SACA block (extras['saca']); found "
                f"{found}. Pretrain with method=saca, or build SACAClassifier(...) to start it fresh"
            )
        if block["dim"] != backbone.feature_dim:
            raise ValueError(
                f"SACAClassifier: the SACA block has width {block['dim']} but the backbone's "
                f"feature_dim is {backbone.feature_dim}"
            )
        return cls(
            backbone,
            n_classes,
            heads=int(block["heads"]),
            dropout=float(block["dropout"]),
            saca_state=block["state_dict"],
        )

    def forward(self, x: torch.Tensor, x_mirror: torch.Tensor | None = None) -> torch.Tensor:
        if x_mirror is None:
            x_mirror = x.flip(2)
        n = x.shape[0]
        tok = tokens(self.backbone.encode(torch.cat([x, x_mirror]))[4])
        g = self.saca(tok[:n], tok[n:])
        return self.head(g[:, 0])


@HEADS.register("saca")
def saca_head(backbone: SwinUNETRBackbone, n_classes: int, extras: dict[str, Any] | None = None) -> SACAClassifier:
    """The classification protocols' ``head=saca``: SA-Swin's head for every method alike. A ``saca`` export
    brings its pre-trained block (as the official fine-tuning does); any other encoder starts the block fresh."""
    if extras and "saca" in extras:
        return SACAClassifier.from_extras(backbone, n_classes, extras)
    return SACAClassifier(backbone, n_classes)
