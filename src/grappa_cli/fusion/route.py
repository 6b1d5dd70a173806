"""The ``route`` fusion strategy: each training source's granularity, and a router that applies it.

See :mod:`grappa_cli.fusion.routing` for the method. This module runs it inside ``grappa
fuse``: score the candidates (every adaptor set and the backbone) per source with the
configured criterion, choose, and fit the router of every layer with the earlier layers
already routed (teacher forcing). Nothing here uses class labels: only which part of
``data.train`` each training image came from.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from grappa_cli.fusion import routing
from grappa_cli.fusion.base import FusionContext, FusionOptions, FusionOutcome

if TYPE_CHECKING:  # torch is imported where it runs: `grappa --help` loads the strategies without it
    import torch

    from grappa_cli.runtime import Precision


class RouteFusion:
    name = "route"
    description = ("Grappa-R: each training source routed to the adaptor set (or the backbone) a label-free "
                   "criterion picks; a per-layer router learns the sources")
    uses_labels = False
    trains_adaptors = False

    def params(self, config: Any, options: FusionOptions) -> dict[str, Any]:
        f = config.fuse
        return {"fusion": "router", "criterion": f.route_criterion, "temperature": float(f.route_temperature),
                "images_per_source": int(f.route_images), "strength": float(f.strength),
                "seed": config.runtime.seed if options.seed is None else options.seed}

    def train(self, context: FusionContext) -> FusionOutcome:
        from grappa_cli.data.images import decode_min_side
        from grappa_cli.errors import TrainingError
        from grappa_cli.runtime import Precision, resolve_device

        start = time.perf_counter()
        p = context.params
        paths = list(context.train_paths)
        names, source_of = routing.training_sources(context.config, paths)
        if (source_of < 0).any():
            raise TrainingError(f"{int((source_of < 0).sum())} training images belong to no part of data.train",
                                hint="run `grappa extract` again so the features match data.train")
        device = resolve_device(context.device())
        context.backbone.to(device)
        rows = routing.sample_rows(source_of, int(p["images_per_source"]), context.seed)
        min_side = decode_min_side(context.backbone.data_config)
        batch = int(context.config.data.batch_size)
        amp = Precision.of(context.config.runtime)
        context.reporter.log(f"route: scoring {len(context.adaptor_sets)} sets and the backbone on "
                             f"{len(rows)} images of {len(names)} source(s) ({p['criterion']})")
        scores = self._scores(context, paths, rows, source_of, len(names), device, batch, amp, min_side)
        table = routing.choose(scores, float(p["temperature"]))
        plan = routing.RoutingPlan(names, [*context.set_names, "backbone"], scores, table,
                                   [int((source_of[rows] == s).sum()) for s in range(len(names))])
        model = context.model("router").to(device)
        accuracy = fit_router(model, [paths[r] for r in rows], source_of[rows], table,
                              data_config=context.backbone.data_config, seed=context.seed, batch_size=batch,
                              num_workers=context.num_workers(), device=device, amp=amp, min_side=min_side,
                              strength=float(p["strength"]))
        for s, name in enumerate(names):
            picked = ", ".join(f"{c} {w:.2f}" for c, w in zip(plan.candidates, table[s], strict=True) if w >= 0.01)
            context.reporter.log(f"route: {name} -> {picked}")
        info = {"routing": plan.to_dict(), "router_accuracy": accuracy}
        return FusionOutcome(model, [], time.perf_counter() - start, 0.0, False, info)

    def _scores(self, context: FusionContext, paths: list[str], rows: np.ndarray, source_of: np.ndarray,
                num_sources: int, device: Any, batch: int, amp: bool | Precision, min_side: int | None) -> np.ndarray:
        criterion = str(context.params["criterion"])
        if criterion in routing.LABEL_CRITERIA:
            from grappa_cli.clustering.labels import training_labels

            store = context.store
            valid = store.read("features/train/valid").astype(bool)
            features = store.read("features/train/embeddings")[valid].astype(np.float32)
            # by training row, -1 where a clustering made before the set grew, or of added images, has none
            labels = [training_labels(store, name)[0][valid] for name in context.set_names]
            score = routing.partition_scores if criterion == "partition" else routing.silhouette_scores
            return score(features[rows], [lab[rows] for lab in labels], source_of[rows], num_sources,
                         seed=context.seed)
        models = [m.to(device) for m in routing.candidate_models(context.backbone, context.adaptor_sets)]
        views = routing.crop_views(models, [paths[r] for r in rows], context.backbone.data_config,
                                   seed=context.seed, batch_size=batch, num_workers=context.num_workers(),
                                   device=device, amp=amp, min_side=min_side)
        return routing.embedding_scores(criterion, views, source_of[rows], num_sources)


def forced_queries(model: Any, images: torch.Tensor, alpha: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's router input ``pool(h_bar) [B, D_l]`` when every layer applies ``alpha [B, N]``
    (at the model's strength)."""
    from grappa_cli.model.layer import token_mean

    backbone = model.backbone
    x = backbone.stem(images)
    out = []
    for index, layer in enumerate(model.layers):
        base, branch = backbone.layer_parts(index, x)
        out.append(token_mean(base + branch).float())
        x, _ = layer(base, branch, alpha=alpha)
    return out


def fit_router(model: Any, paths: list[str], source_of: np.ndarray, table: np.ndarray, *,
               data_config: dict[str, Any], seed: int, batch_size: int, num_workers: int, device: Any,
               amp: bool | Precision, min_side: int | None, strength: float, l2: float = 1e-3) -> list[float]:
    """Set every router layer's table and fit its source classifier; returns the training accuracy per layer.

    The classifier of each layer sees that layer's input over two views of every image (the
    evaluation view and a random crop), with the earlier layers applying the image's own
    source's row of the table. With one source there is nothing to classify.
    """
    import torch

    from grappa_cli.data.images import ImageDataset, make_loader
    from grappa_cli.data.transforms import eval_transform, train_transform
    from grappa_cli.runtime import autocast

    layers = model.fusion_layers()
    model.set_strength(strength)  # the router sees the layer inputs of the model as it is saved
    for layer in layers:
        layer.set_table(torch.as_tensor(table, dtype=torch.float32))
    if table.shape[0] == 1:
        return [1.0] * len(layers)
    n_sets = model.num_sets
    targets = torch.as_tensor(table[:, :n_sets], dtype=torch.float32)
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    labels: list[torch.Tensor] = []
    model.eval()
    for view, transform in enumerate((eval_transform(data_config), train_transform(data_config, crop_scale=0.25))):
        routing.seed_crops(seed * 1000 + 7 + view)
        loader = make_loader(ImageDataset(paths, transform, min_side=min_side), batch_size=batch_size,
                             num_workers=num_workers, device=device)
        with torch.inference_mode():
            for batch in loader:
                if not len(batch.indices):
                    continue
                sources = torch.as_tensor(source_of[batch.indices.numpy()])
                with autocast(device, amp):
                    queries = forced_queries(model, batch.images.to(device), targets[sources].to(device))
                for store, q in zip(per_layer, queries, strict=True):
                    store.append(q.float().cpu())
                labels.append(sources)
    y = torch.cat(labels)
    accuracy = []
    for layer, chunks in zip(layers, per_layer, strict=True):
        weight, bias = fit_linear(torch.cat(chunks), y, table.shape[0], l2=l2, seed=seed)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
            accuracy.append(float((layer.source_probabilities(torch.cat(chunks)).argmax(1) == y).float().mean()))
    return accuracy


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, *, l2: float, seed: int,
               max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``softmax(W x + b)``, classes weighed equally; W, b on raw ``x``.

    Fitted with L-BFGS on standardised features (``l2`` on the standardised weights), then
    folded back so that the layer applies it to its input as is.
    """
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    counts = torch.bincount(y, minlength=classes).double()
    weights = torch.where(counts > 0, len(y) / (classes * counts.clamp_min(1)), torch.zeros_like(counts))
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.t() + b, y, weight=weights) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std
        bias = b - weight @ mean
    return weight.float(), bias.float()
