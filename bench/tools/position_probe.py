"""Position probe: can a frozen encoder tell where in the body a crop comes from?

    python -m bench.tools.position_probe --suite abdomen --exports runs/pretrain/random/<hash>/export.pt \\
        runs/pretrain/simmim3d/<hash>/export.pt

ASA claims to learn anatomy (each sub-volume's place in the body); a layout-blind method need not. The probe
asks that of any 3D export: from every labelled volume of the suite's first task (preprocessed as the runner
does), ``--crops`` crops of side ``--crop`` at random places (the same places for every export), the frozen
encoder's pooled features, and a ridge regression from the standardised features to the crop centre in
normalised (x, y, z) coordinates (array axes 0, 1, 2 of the RAS+ volumes the harness reads: left-right,
posterior-anterior, inferior-superior). The regression is fitted on the train and val subjects (the ridge penalty
chosen by leave-subjects-out cross-validation on them) and scored on the test subjects: R² per axis and the
mean absolute error in voxels. Predicting the training mean scores R² = 0; an encoder that keeps no position
information cannot beat it, one whose features locate the crop gets close to 1. The 95% CI resamples whole test
subjects (their crops are not independent), and every export after the first is compared with the first (put
``random`` first) by a paired bootstrap over the same resampled subjects.

On ``abdomen_shuffled`` (organs at a random layout per subject) a crop's content says little about where it
lies, so the probe's gap between encoders should shrink there: the negative control.

The fitting and scoring are pure functions (``crop_corners``, ``fit_ridge``, ``group_cv_ridge``, ``r2``,
``resampled_r2``), tested in tests/test_position_probe.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.stats import bootstrap_p, draw_counts

if TYPE_CHECKING:
    from bench.backbones import Backbone

LAMBDAS = tuple(10.0**k for k in range(-3, 5))


def crop_corners(shape: tuple[int, ...], crop: int, n: int, seed: int) -> np.ndarray:
    """``n`` random crop corners [n, 3] inside a volume of ``shape`` (uniform over the valid corners)."""
    if any(s < crop for s in shape):
        raise ValueError(f"volume {tuple(shape)} is smaller than the {crop}^3 crop")
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s - crop + 1, size=n) for s in shape], axis=1)


def centres(corners: np.ndarray, shape: tuple[int, ...], crop: int) -> np.ndarray:
    """Crop centres in normalised coordinates: 0 at the first voxel's centre, 1 at the last's."""
    return (corners + (crop - 1) / 2.0) / (np.asarray(shape, dtype=float) - 1.0)


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression on standardised features with an unpenalised intercept: (weights, bias, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / std
    ym = y.mean(0)
    # dual form when features outnumber samples: the same solution, a smaller system
    if z.shape[1] > z.shape[0]:
        w = z.T @ np.linalg.solve(z @ z.T + lam * np.eye(len(z)), y - ym)
    else:
        w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - ym))
    return w, ym, mean, std


def predict(model: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    w, b, mean, std = model
    return ((x - mean) / std) @ w + b


def r2(y: np.ndarray, pred: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column, against predicting ``reference`` (the training mean)."""
    return 1.0 - ((y - pred) ** 2).sum(0) / ((y - reference) ** 2).sum(0)


def group_cv_ridge(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 4, lambdas: tuple[float, ...] = LAMBDAS
) -> float:
    """The ridge penalty with the best mean R² over ``folds`` folds that keep each group (subject) whole."""
    ids = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(ids)}
    fold = np.array([fold_of[g] for g in groups])
    scores = []
    for lam in lambdas:
        per = []
        for k in range(min(folds, len(ids))):
            tr, te = fold != k, fold == k
            model = fit_ridge(x[tr], y[tr], lam)
            per.append(r2(y[te], predict(model, x[te]), y[tr].mean(0)).mean())
        scores.append(np.mean(per))
    return float(lambdas[int(np.argmax(scores))])


def probe(train: tuple[np.ndarray, np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Fit on ``train`` = (features, centres, subject ids), score on ``test`` = (features, centres)."""
    x, y, groups = train
    lam = group_cv_ridge(x, y, groups)
    model = fit_ridge(x, y, lam)
    pred = predict(model, test[0])
    per_axis = r2(test[1], pred, y.mean(0))
    return {
        "r2": float(per_axis.mean()),
        "r2_xyz": [float(v) for v in per_axis],
        "lambda": lam,
        "pred": pred,
        "reference": y.mean(0),
    }


def subject_resamples(n_subjects: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_subjects] test-subject indices drawn with replacement; one draw for every export, so
    the exports' resampled R² are paired."""
    return np.random.default_rng(seed).integers(0, n_subjects, size=(n_resamples, n_subjects))


def resampled_r2(
    y: np.ndarray, pred: np.ndarray, reference: np.ndarray, groups: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """Mean-over-axes R² on each resample ``idx`` [B, S] of whole test subjects: [B].

    Crops of one subject are not independent, so the subject is the resampled unit. A subject drawn k times
    contributes k times its sums of squares, the same as scoring the drawn subjects' crops put together.
    """
    n = int(groups.max()) + 1
    sse, sst = np.zeros((n, y.shape[1])), np.zeros((n, y.shape[1]))
    np.add.at(sse, groups, (y - pred) ** 2)
    np.add.at(sst, groups, (y - reference) ** 2)
    drawn = draw_counts(idx, n)
    return (1.0 - (drawn @ sse) / (drawn @ sst)).mean(1)


def _volumes(suite_name: str, data_dir: str | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    import datasets  # noqa: F401  (registers the datasets and suites)
    from bench.data import Preprocess, preprocess
    from bench.registry import DATASETS, SUITES

    suite = SUITES.get(suite_name)
    # only the images are read, so any task's labelled 3D volumes will do (brain's are a classification task's)
    task = next((t for t in suite.tasks if DATASETS.get(t.dataset).info.spatial_dims == 3), None)
    if task is None:
        raise SystemExit(f"error: suite {suite_name!r} has no 3D task; the position probe needs 3D volumes")
    ds = DATASETS.get(task.dataset)(root=None, cache_dir=data_dir)
    ds.prepare(progress=True)
    pp = Preprocess.from_config(suite.preprocessing)
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split in ("train", "val", "test"):
        out[split] = [(r.id, preprocess(ds.load(r) | {"label": None}, pp)["image"]) for r in ds.records(split)]
    return out


@torch.no_grad()
def features(
    backbone: Backbone, vols: list[tuple[str, np.ndarray]], crop: int, n: int, seed: int, batch: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features [N, F], normalised centres [N, 3] and subject index [N] of ``n`` crops per volume."""
    backbone.eval()
    feats, ys, groups = [], [], []
    for i, (_, v) in enumerate(vols):
        img = np.asarray(v, dtype=np.float32)
        img = img[None] if img.ndim == 3 else img
        shape = img.shape[1:]
        corners = crop_corners(shape, crop, n, seed + i)
        crops = np.stack([img[:, x : x + crop, y : y + crop, z : z + crop] for x, y, z in corners])
        for j in range(0, n, batch):
            feats.append(backbone.pooled(torch.from_numpy(crops[j : j + batch])).float().numpy())
        ys.append(centres(corners, shape, crop))
        groups.append(np.full(n, i))
    return np.concatenate(feats).astype(np.float64), np.concatenate(ys), np.concatenate(groups)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tools.position_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="abdomen")
    ap.add_argument("--exports", nargs="+", type=Path, required=True, help="export.pt files (runs/pretrain/...)")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--crops", type=int, default=16, help="crops per volume")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the test subjects")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.exports if not p.is_file()]
    if missing:
        print(f"error: no such export: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.export import load_export

    vols = _volumes(args.suite, args.data_dir)
    fit_vols = vols["train"] + vols["val"]
    rows, boots = [], []
    idx = subject_resamples(len(vols["test"]), args.resamples, args.seed)
    for path in args.exports:
        t0 = time.time()
        backbone, meta = load_export(path)
        if getattr(backbone, "spatial_dims", 3) != 3:
            print(f"error: {path}: a {backbone.spatial_dims}D encoder; the probe is 3D", file=sys.stderr)
            return 2
        train = features(backbone, fit_vols, args.crop, args.crops, args.seed)
        tx, ty, tg = features(backbone, vols["test"], args.crop, args.crops, args.seed + 10_000)
        res = probe(train, (tx, ty))
        pred = res.pop("pred")
        boots.append(resampled_r2(ty, pred, res.pop("reference"), tg, idx))
        err = np.abs(pred - ty) * (np.asarray(vols["test"][0][1].shape[-3:]) - 1)
        ci = np.quantile(boots[-1], [0.025, 0.975])
        rows.append(
            {
                "export": str(path),
                "method": meta.get("method", "?"),
                "pretrain_steps": meta.get("pretrain_steps"),
                **res,
                "r2_ci": [float(v) for v in ci],
                "mae_voxels": float(err.mean()),
                "seconds": round(time.time() - t0, 1),
            }
        )
        if len(rows) > 1:
            # paired over the same resampled subjects: what the test subjects share cancels in the difference
            d = boots[-1] - boots[0]
            rows[-1]["vs_first"] = {
                "delta": rows[-1]["r2"] - rows[0]["r2"],
                "ci": [float(v) for v in np.quantile(d, [0.025, 0.975])],
                "p": bootstrap_p(d),
            }
    print(
        f"position probe on {args.suite}: {len(fit_vols)} fitting and {len(vols['test'])} test subjects, "
        f"{args.crops} crops of {args.crop}^3 each; R^2 against predicting the fitting mean (0 = no position "
        f"information); 95% CIs and the paired test against the first export ({rows[0]['method']}) from "
        f"{args.resamples} bootstrap resamples of the test subjects\n"
    )
    print(
        "| method | export | pretrain steps | R² (mean) | 95% CI | Δ vs first [95% CI] | p | R² x / y / z | "
        "MAE [voxels] | ridge λ |"
    )
    print("|---|---|---:|---:|---|---|---:|---|---:|---:|")
    for r in rows:
        xyz = " / ".join(f"{v:.3f}" for v in r["r2_xyz"])
        v = r.get("vs_first")
        vs = f"{v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | {v['p']:.4f}" if v else "— | —"
        print(
            f"| {r['method']} | `{r['export']}` | {r['pretrain_steps']} | {r['r2']:.3f} | "
            f"[{r['r2_ci'][0]:.3f}, {r['r2_ci'][1]:.3f}] | {vs} | {xyz} | {r['mae_voxels']:.2f} | {r['lambda']:g} |"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"suite": args.suite, "crop": args.crop, "crops": args.crops, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
