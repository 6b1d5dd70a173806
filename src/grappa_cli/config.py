"""The project's configuration: a typed schema for ``grappa.toml``, read and written.

Every field carries its default, a one-line explanation and, where the value comes from
the paper (or a paper it cites), that reference. ``grappa init`` writes the file with
those explanations as comments; loading checks unknown keys, types and impossible values
and names the file and the key in the error.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from grappa_cli.clustering import kvalues
from grappa_cli.errors import ConfigError

if TYPE_CHECKING:
    from tomlkit import TOMLDocument
    from tomlkit.items import InlineTable

    from grappa_cli import config_sections as sections_mod

CONFIG_NAME = "grappa.toml"

#: The paper's pseudo-granularities for the 133,339 MRT training images (section 4).
PAPER_K = [256, 1024, 4096, 8192, 16384, 32768, 65536, 131072]

#: A key's value as the schema allows it (see ``FieldSpec.kind``).
ConfigValue = str | int | float | bool | list[int] | list[str] | dict[str, object]


@dataclass(frozen=True)
class FieldSpec:
    """One key of a section: its type, default, documentation and validity check."""

    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "list[int]" | "list[str]" | "table" | "k" | "auto-list"
    default: ConfigValue
    doc: str
    paper: str = ""
    #: called with a value of ``kind`` (after the type check): the problem, or None
    check: Callable[..., str | None] | None = None
    choices: tuple[str, ...] = ()


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least_two(value: float) -> str | None:
    return None if value >= 2 else "must be >= 2"


def _probability(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _k_list(value: list[int] | Literal["auto"]) -> str | None:
    if value == "auto":
        return None
    if not value:
        return "must list at least one k (or be \"auto\")"
    for prev, cur in itertools.pairwise(value):
        if cur <= prev:
            return f"values must increase strictly (got {cur} after {prev})"
    if value[0] < 2:
        return f"every k must be >= 2 (got {value[0]})"
    return None


def _unit_interval(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _probability_open(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _layer_sizes(value: list[int]) -> str | None:
    if not value:
        return "must list at least one layer size"
    if any(v <= 0 for v in value):
        return "layer sizes must be > 0"
    return None


SCHEMA: dict[str, list[FieldSpec]] = {
    "backbone": [
        FieldSpec("name", "str", "vit_small_patch16_224.dino",
                  "timm model name of the frozen backbone M",
                  "DINO ViT-S/16, section 4 'Implementation details'"),
        FieldSpec("provider", "str", "auto",
                  "backbone plugin that builds it; \"auto\" picks the first plugin that supports the name"),
        FieldSpec("pretrained", "bool", True,
                  "load pretrained weights (from `weights`, else timm's hub); false = random weights"),
        FieldSpec("weights", "str", "",
                  "local weights file (.safetensors, or a torch checkpoint read with weights_only=True)"),
        FieldSpec("kwargs", "table", {},
                  "extra keyword arguments for timm.create_model (e.g. img_size, depth for tiny models)"),
        FieldSpec("input_size", "int", 0,
                  "side in pixels the images are preprocessed to; 0 = the model's own (CNNs only; for a ViT "
                  "set img_size in kwargs)", check=_non_negative),
    ],
    "data": [
        FieldSpec("train", "list[str]", ["mrt"],
                  "what forms the unlabeled training set D (labels dropped): names of [tasks.*] entries (their "
                  "train splits), \"mrt\" (the six MRT tasks configured under [tasks]) or image-folder paths",
                  "the union of the six MRT train splits, 133,339 images (section 4.1)"),
        FieldSpec("batch_size", "int", 256, "images per batch for feature extraction and evaluation",
                  check=_positive),
        FieldSpec("num_workers", "int", 4,
                  "DataLoader worker processes decoding images (at most the usable cores, the batches and "
                  "one per 1,000 images; smaller loaders decode in the main process)", check=_non_negative),
        FieldSpec("feature_dtype", "str", "float16", "dtype of stored features",
                  choices=("float16", "float32")),
        FieldSpec("chunk_size", "int", 4096,
                  "rows per stored chunk; the unit of resumption after an interruption", check=_positive),
        FieldSpec("update", "str", "incremental",
                  "when data.train grows (new entries after the old ones, old images unchanged): "
                  "\"incremental\" extracts only the new images and trains new adaptor sets on them, keeping "
                  "every existing set; \"full\" redoes everything on the union (like `grappa run --full`)",
                  choices=("incremental", "full")),
        FieldSpec("cache", "str", "auto",
                  "the decode-once image cache of the training set (`grappa cache`): \"auto\" lets training on "
                  "a GPU build it before it first reads the images, unless it would take more than a tenth of "
                  "the free disk space (on a CPU it did not make training faster); \"always\" builds it on any "
                  "device, whatever its size; \"never\" decodes the image files every epoch (`grappa cache "
                  "build` still makes one)",
                  choices=("auto", "always", "never")),
        FieldSpec("on_duplicates", "str", "warn",
                  "what evaluation does with test images that duplicate training images (byte copies and "
                  "near-duplicates, found by `grappa extract`): \"warn\" keeps them and says how many, "
                  "\"drop\" leaves them out of the queries and the gallery, \"error\" refuses to evaluate",
                  choices=("warn", "drop", "error")),
        FieldSpec("duplicate_threshold", "float", 0.95,
                  "cosine of backbone features at or above which a test image counts as a near-duplicate of "
                  "its nearest training image (measured: docs/benchmarks.md, \"Duplicate check\")",
                  check=_unit_interval),
    ],
    "runtime": [
        FieldSpec("device", "str", "auto", "\"auto\" (CUDA when available), \"cpu\", \"cuda\" or \"cuda:N\""),
        FieldSpec("seed", "int", 0, "random seed; runs on the CPU are repeatable for a given seed and number of "
                  "cores, however busy the machine is",
                  check=_non_negative),
        FieldSpec("amp", "bool", True, "bf16 autocast on CUDA (the CPU follows cpu_amp)"),
        FieldSpec("cpu_amp", "bool", False,
                  "bf16 autocast on the CPU too (extraction, training, fusion, evaluation, search): on CPUs "
                  "with bf16 instructions (AVX512-BF16, AMX) training at 224 px is about 1.6x faster and "
                  "inference 2.3x, at 96 px training is slower, and without them it is slower everywhere; "
                  "the numbers change, so turning it on makes the project's results stale (benchmarks page, "
                  "\"bf16 on the CPU\")"),
        FieldSpec("compile", "bool", False,
                  "run extraction and evaluation models through torch.compile (pays on GPUs, not on CPUs; "
                  "see the benchmarks page)"),
    ],
    "cluster": [
        FieldSpec("k", "k", "auto",
                  "numbers of clusters, one pseudo-label set P_i each, increasing; \"auto\" = a geometric "
                  "ladder from about n/512 (at least auto_min_k) to n/2 for n training images",
                  "256, 1024, 4096, 8192, 16384, 32768, 65536, 131072 on MRT (section 4)", check=_k_list),
        FieldSpec("auto_count", "int", 8,
                  "how many k values \"auto\" chooses (at most 4 below 20,000 training images)", "N = 8 (section 4)",
                  check=_positive),
        FieldSpec("auto_min_k", "int", kvalues.DEFAULT_MIN_K,
                  "the smallest k \"auto\" chooses (rounded up to a power of two, while n/2 allows it): "
                  "n/512 is k = 2 on a few hundred images, a split in two that says one bit about an image",
                  "the paper's coarsest set, k = 256, has about 40 clusters per domain", check=_at_least_two),
        FieldSpec("k_added", "k", "auto",
                  "numbers of clusters for images added by an incremental update (clustered on their own, "
                  "sets named like k16-coral for an added task coral); \"auto\" = the ladder of `k` for the added "
                  "images' count",
                  check=_k_list),
        FieldSpec("auto_count_added", "int", 2,
                  "how many k values \"auto\" chooses for the images of an incremental update (each is a set "
                  "to train and a candidate the fusion weighs on every image)", check=_positive),
        FieldSpec("backend", "str", "faiss", "clusterer plugin (see `grappa plugins`)"),
        FieldSpec("niter", "int", 25, "k-means (Lloyd) iterations", check=_positive),
        FieldSpec("seed", "int", 0, "k-means++ seeding seed", "k-means++ initialisation (section 3.3)",
                  check=_non_negative),
    ],
    "adapt": [
        FieldSpec("bottleneck", "int", 64,
                  "adaptor bottleneck width D' (< D); the paper does not state its value",
                  "D' < D (section 3.4)", check=_positive),
        FieldSpec("epochs", "int", 5, "training epochs per adaptor set (at least; see min_steps)", check=_positive),
        FieldSpec("batch_size", "int", 256,
                  "images per training batch; at most 1/16 of the training images (but at least 32) on small sets",
                  check=_positive),
        FieldSpec("min_steps", "int", 100,
                  "optimizer steps each set trains for at least: more epochs on small training sets, up to 3x "
                  "epochs (on MRT's 133k images an epoch alone is 520 steps)", check=_non_negative),
        FieldSpec("lr", "float", 0.001, "Adam learning rate", "0.001 (section 4)", check=_positive),
        FieldSpec("weight_decay", "float", 0.001, "Adam weight decay", "0.001 (section 4)",
                  check=_non_negative),
        FieldSpec("schedule", "str", "constant", "learning-rate schedule", choices=("constant", "cosine")),
        FieldSpec("scale", "float", 20.0, "norm-softmax scale gamma (eq. 2)",
                  "temperature 0.05 of ref. [69]", check=_positive),
        FieldSpec("grad_clip", "float", 0.0, "clip the gradient norm to this value (0 = off)",
                  check=_non_negative),
        FieldSpec("crop_scale", "float", 0.08,
                  "smallest area fraction kept by the training views' random resized crop (timm's default "
                  "0.08); larger values keep more of each image", check=_probability_open),
        FieldSpec("replay", "float", 1.0,
                  "an added domain's sets (incremental update) also learn this many images of the earlier "
                  "domains per added image, labelled by their own clustering nearest in k, so that they do not "
                  "fit the added images alone (0 = added images only)", check=_non_negative),
        FieldSpec("prototypes", "str", "centroids",
                  "start of the norm-softmax prototypes: the L2-normalised k-means centroids of the "
                  "pseudo-labels (the untrained model's embeddings are the clustered features, so training "
                  "starts at a sensible classifier) or random normal vectors; the paper does not say",
                  choices=("centroids", "random")),
    ],
    "fuse": [
        FieldSpec("strategies", "auto-list", "auto",
                  "fusion strategies `grappa run` builds (see `grappa plugins`; `route` adds Grappa-R); the "
                  "project's default model is the first of avg, neighbor, route, transform it has; \"auto\" = "
                  "avg and neighbor on a GPU, avg alone on a CPU, where training Grappa-N takes about as long as "
                  "all adaptor sets together and it was not better than Grappa-avg on validation (the "
                  "benchmarks page); `grappa fuse --strategy neighbor` adds it",
                  "Grappa-avg and Grappa-N (section 3.5)"),
        FieldSpec("epochs", "int", 5, "fusion training epochs (at least; see min_steps)", check=_positive),
        FieldSpec("batch_size", "int", 256,
                  "pairs per batch (Barlow Twins statistics need a large batch); at most 1/16 of the training "
                  "images (but at least 32) on small sets", check=_positive),
        FieldSpec("min_steps", "int", 100,
                  "optimizer steps the fusion trains for at least: more epochs on small training sets, up to "
                  "3x epochs",
                  check=_non_negative),
        FieldSpec("optimizer", "str", "adam",
                  "optimizer of the attention fusion (Q, K, logit scales): \"adam\" (no weight decay, rate "
                  "adam_lr) or \"lars\" (the paper's, with lr and weight_decay); under LARS the weight decay "
                  "outweighs the gradients of Q and K and the attention barely moves from its start",
                  "LARS (section 4)", choices=("adam", "lars")),
        FieldSpec("adam_lr", "float", 0.003, "Adam learning rate of Q and K (optimizer = \"adam\")",
                  check=_positive),
        FieldSpec("scale_lr", "float", 0.1,
                  "Adam learning rate of the per-layer logit scales (optimizer = \"adam\"): they start at 0 "
                  "(Grappa-avg) and a decisive attention needs scales of about 10, which a rate like Q's "
                  "would not reach in a run", check=_positive),
        FieldSpec("lr", "float", 0.5, "LARS learning rate", "0.5 (section 4)", check=_positive),
        FieldSpec("weight_decay", "float", 0.001, "LARS weight decay", "0.001 (section 4)",
                  check=_non_negative),
        FieldSpec("warmup_epochs", "float", 1.0, "linear warm-up before the cosine decay", check=_non_negative),
        FieldSpec("lambd", "float", 0.0051, "Barlow Twins off-diagonal weight (the paper's beta, eq. 4)",
                  "as in Barlow Twins [68], 0.0051", check=_positive),
        FieldSpec("loss_scale", "float", 0.024, "Barlow Twins loss scaling", "as in Barlow Twins [68], 0.024",
                  check=_positive),
        FieldSpec("projector", "list[int]", [1536, 1536, 1536],
                  "widths of the MLP projector g, discarded after training",
                  "three layers as in Barlow Twins [68] (4x the embedding width)", check=_layer_sizes),
        FieldSpec("neighbors", "int", 5, "k of the k-NN graph whose pairs Grappa-N trains on",
                  "x_j in N_k(x_i; D), section 3.5", check=_positive),
        FieldSpec("graph", "str", "model",
                  "features Grappa-N's k-NN graph is built from: \"model\" (the current fused model, rebuilt "
                  "every epoch) or \"backbone\" (the stored backbone features, built once: the paper's static "
                  "k-NN)", "the current model, every epoch (section 3.5)", choices=("model", "backbone")),
        FieldSpec("attention_init", "str", "uniform",
                  "start of attention fusion: \"uniform\" (a per-layer logit scale starting at 0, so M* "
                  "starts exactly at Grappa-avg) or \"linear\" (Q and K with nn.Linear's initialisation only, "
                  "the literal eq. 3); the paper does not say", choices=("uniform", "linear")),
        FieldSpec("balance", "float", 0.0,
                  "weight of the attention balance term added to the fusion loss: the KL divergence from "
                  "uniform to the batch-mean attention of each layer, so that no adaptor set is abandoned "
                  "(each image may still prefer its own); 0 = the paper's loss alone",
                  check=_non_negative),
        FieldSpec("strength", "float", 1.0,
                  "share of the fused adaptation the saved model applies: every layer adds strength x "
                  "sum_i alpha_i A_i to the backbone's output (1 = the paper's M*, 0 = the backbone M); in "
                  "between, the adaptors' up projections are interpolated towards zero, i.e. the model towards "
                  "the frozen backbone (weight-space ensembling as in WiSE-FT), which keeps more of what the "
                  "backbone knows on classes the pseudo-labels do not fit; the fusion trains at 1",
                  "1 (the whole adaptation)", check=_unit_interval),
        FieldSpec("warm_start", "bool", True,
                  "after an incremental update, start the fusion from the previous fused model's attention "
                  "(Q, K and logit scales do not depend on the number of sets) instead of from scratch"),
        FieldSpec("warm_steps", "float", 0.4,
                  "a warm-started fusion trains for this fraction of the epochs and min_steps of a fusion from "
                  "scratch (it starts from trained attention)", check=_probability_open),
        FieldSpec("warm_scale", "str", "reset",
                  "what a warm-started fusion keeps of the previous attention's per-layer logit scales: "
                  "\"reset\" starts them at 0 (Q and K kept; step 0 weighs every set equally, so the added sets "
                  "are weighed from Grappa-avg on, not from an attention that had settled on one old set per "
                  "layer) or \"keep\" (the previous attention exactly)", choices=("reset", "keep")),
        FieldSpec("pair_augment", "bool", False,
                  "augment both images of Grappa-N's k-NN pairs (random resized crop + flip); off, the "
                  "pairs are plain views, so the loss is attention propagation only, not transformation "
                  "consistency as well (TLDR uses no augmentation on neighbour pairs)"),
        FieldSpec("route_criterion", "str", "partition",
                  "label-free criterion of the `route` strategy that picks, per training source, the adaptor "
                  "set (or the frozen backbone) its images need: \"partition\" (k-means on the source alone "
                  "finds the set's pseudo-labels again: the granularity the source's images have), "
                  "\"silhouette\" (the set's pseudo-labels form separated clusters in the source), "
                  "\"stability\" (k-NN sets that survive a change of crop), \"view-match\" (a crop finds its own "
                  "other crop), \"rankme\" (effective rank of the embeddings) or \"uniformity\" (alignment and "
                  "uniformity of Wang and Isola); docs/benchmarks.md compares them", "beyond the paper",
                  choices=("partition", "silhouette", "stability", "view-match", "rankme", "uniformity")),
        FieldSpec("route_temperature", "float", 0.0,
                  "0: each source gets the one candidate its criterion scores highest; above 0: a softmax mix of "
                  "the candidates, the scores divided by temperature x their range within the source",
                  check=_non_negative),
        FieldSpec("route_images", "int", 1000,
                  "training images per source the `route` strategy scores the candidates on and fits its "
                  "router with", check=_positive),
    ],
    "eval": [
        FieldSpec("tasks", "list[str]", [],
                  "tasks to evaluate (empty = every configured task with a test split)",
                  "leave-one-out retrieval on each test split (section 4.1)"),
        FieldSpec("batch_size", "int", 256,
                  "images per batch when embedding test images (GPU: 512-1024 for ViT-S/16)", check=_positive),
        FieldSpec("recall_at", "list[int]", [1],
                  "k values of Recall@k reported besides MAP@R and R-Precision", check=_layer_sizes),
    ],
}

TASK_KEYS_DOC = (
    "one table per task: [tasks.NAME] with `root` (the dataset directory) and optionally `type` "
    "(the task plugin, default NAME) and the plugin's own options; `grappa task add NAME ROOT` writes one "
    "(with type = \"imagefolder\" when NAME is no task reader)"
)


class Section:
    """Values of one section, accessible as attributes (``config.adapt.lr``)."""

    _section: str
    values: dict[str, object]

    def __init__(self, section: str, values: dict[str, object]) -> None:
        self.__dict__["_section"] = section
        self.__dict__["values"] = values

    def __getattr__(self, key: str) -> object:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(f"[{self.__dict__['_section']}] has no key {key!r}") from None

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("configuration sections are read-only; edit grappa.toml")

    def __repr__(self) -> str:
        return f"Section({self._section!r}, {self.values!r})"


@dataclass
class TaskEntry:
    """A configured task: which plugin reads it, from where, with which options."""

    name: str
    type: str
    root: str
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class GrappaConfig:
    """The validated content of ``grappa.toml`` (missing keys take their defaults)."""

    sections: dict[str, Section]
    tasks: dict[str, TaskEntry]
    path: Path | None = None

    def __getattr__(self, key: str) -> Section:
        sections = self.__dict__.get("sections", {})
        if key in sections:
            return sections[key]
        raise AttributeError(key)

    # Typed access to each section: ``config.adapt.lr`` is a float to a type checker.
    @property
    def backbone(self) -> sections_mod.BackboneSection:
        return cast("sections_mod.BackboneSection", self.sections["backbone"])

    @property
    def data(self) -> sections_mod.DataSection:
        return cast("sections_mod.DataSection", self.sections["data"])

    @property
    def runtime(self) -> sections_mod.RuntimeSection:
        return cast("sections_mod.RuntimeSection", self.sections["runtime"])

    @property
    def cluster(self) -> sections_mod.ClusterSection:
        return cast("sections_mod.ClusterSection", self.sections["cluster"])

    @property
    def adapt(self) -> sections_mod.AdaptSection:
        return cast("sections_mod.AdaptSection", self.sections["adapt"])

    @property
    def fuse(self) -> sections_mod.FuseSection:
        return cast("sections_mod.FuseSection", self.sections["fuse"])

    @property
    def eval(self) -> sections_mod.EvalSection:
        return cast("sections_mod.EvalSection", self.sections["eval"])

    @classmethod
    def default(cls) -> GrappaConfig:
        return from_dict({})

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: dict(sec.values) for name, sec in self.sections.items()}
        data["tasks"] = {
            t.name: {"type": t.type, "root": t.root, **t.options} for t in self.tasks.values()
        }
        return data


def _type_ok(kind: str, value: object) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "table":
        return isinstance(value, dict)
    if kind == "list[int]":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "k":
        return value == "auto" or _type_ok("list[int]", value)
    if kind == "auto-list":
        return value == "auto" or _type_ok("list[str]", value)
    raise AssertionError(kind)


_KIND_WORDS = {
    "str": "a string", "bool": "true or false", "int": "an integer", "float": "a number",
    "table": "a table", "list[int]": "a list of integers", "list[str]": "a list of strings",
    "k": "a list of increasing integers or \"auto\"", "auto-list": "a list of strings or \"auto\"",
}


def from_dict(data: Mapping[str, object], path: Path | None = None) -> GrappaConfig:
    """Validate a parsed TOML document; every problem names the file and the key."""
    where = str(path) if path else CONFIG_NAME

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {problem}", hint=f"edit {where}")

    known = set(SCHEMA) | {"tasks"}
    for name in data:
        if name not in known:
            from grappa_cli.suggest import did_you_mean

            raise fail(f"[{name}]", f"unknown section{did_you_mean(name, known)}")
    sections: dict[str, Section] = {}
    for name, specs in SCHEMA.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise fail(name, "must be a table")
        by_name = {s.name: s for s in specs}
        for key in raw:
            if key not in by_name:
                from grappa_cli.suggest import did_you_mean

                raise fail(f"{name}.{key}", f"unknown key{did_you_mean(key, by_name)}")
        values: dict[str, object] = {}
        for spec in specs:
            value = raw.get(spec.name, spec.default)
            if not _type_ok(spec.kind, value):
                raise fail(f"{name}.{spec.name}", f"must be {_KIND_WORDS[spec.kind]} (got {value!r})")
            if spec.kind == "float":
                value = float(value)
            if spec.choices and value not in spec.choices:
                raise fail(f"{name}.{spec.name}", f"must be one of {', '.join(spec.choices)} (got {value!r})")
            if spec.check is not None and (problem := spec.check(value)):
                raise fail(f"{name}.{spec.name}", problem)
            values[spec.name] = value
        sections[name] = Section(name, values)
    tasks: dict[str, TaskEntry] = {}
    raw_tasks = data.get("tasks", {})
    if not isinstance(raw_tasks, dict):
        raise fail("tasks", "must be a table of tables ([tasks.NAME])")
    for task_name, entry in raw_tasks.items():
        if not isinstance(entry, dict):
            raise fail(f"tasks.{task_name}", "must be a table with at least `root`")
        entry = dict(entry)
        task_type = entry.pop("type", task_name)
        root = entry.pop("root", "")
        if not isinstance(task_type, str) or not isinstance(root, str):
            raise fail(f"tasks.{task_name}", "`type` and `root` must be strings")
        tasks[task_name] = TaskEntry(task_name, task_type, root, entry)
    return GrappaConfig(sections=sections, tasks=tasks, path=path)


def load(path: Path) -> GrappaConfig:
    """Read and validate ``grappa.toml``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", hint="run `grappa init` to create a project") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})", hint=f"fix the syntax in {path}") from None
    return from_dict(data, path)


def render(config: GrappaConfig | None = None, *, overrides: dict[str, dict[str, object]] | None = None) -> str:
    """The TOML text of a config, every key preceded by its documentation."""
    import tomlkit

    config = config or GrappaConfig.default()
    values = config.to_dict()
    for section, changes in (overrides or {}).items():
        values.setdefault(section, {}).update(changes)
    doc = tomlkit.document()
    doc.add(tomlkit.comment("grappa project configuration. Each key is documented with its default and,"))
    doc.add(tomlkit.comment("where it has one, the value the paper (Almazan et al., ECCV 2022) uses."))
    for name, specs in SCHEMA.items():
        doc.add(tomlkit.nl())
        table = tomlkit.table()
        for spec in specs:
            note = f"{spec.doc}. Default: {_toml_literal(spec.default)}."
            if spec.paper:
                note += f" Paper: {spec.paper}."
            if spec.choices:
                note += f" One of: {', '.join(spec.choices)}."
            table.add(tomlkit.comment(note))
            value = values[name][spec.name]
            table.add(spec.name, _inline(value) if spec.kind == "table" else value)
        doc.add(name, table)
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment(TASK_KEYS_DOC + "."))
    doc.add(tomlkit.comment("Example: [tasks.cub]  root = \"/data/CUB_200_2011\""))
    tasks = tomlkit.table(is_super_table=True)
    for task_name, entry in values.get("tasks", {}).items():
        t = tomlkit.table()
        for key, val in entry.items():
            t.add(key, _inline(val) if isinstance(val, dict) else val)
        tasks.add(task_name, t)
    doc.add("tasks", tasks)
    return tomlkit.dumps(doc)


def _inline(value: dict[str, object]) -> InlineTable:
    import tomlkit

    table = tomlkit.inline_table()
    table.update(value)
    return table


def _toml_literal(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}" if not value else json.dumps(value)
    return json.dumps(value)


def update_file(path: Path, changes: Callable[[TOMLDocument], None]) -> GrappaConfig:
    """Edit ``grappa.toml`` in place, keeping the user's comments, then re-validate.

    ``changes`` receives the tomlkit document. The file is only replaced when the edited
    document validates, so a bad edit never leaves a broken config behind.
    """
    import tomlkit

    from grappa_cli.storage.fsutil import atomic_write_text

    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    changes(doc)
    text = tomlkit.dumps(doc)
    config = from_dict(tomllib.loads(text), path)
    atomic_write_text(path, text)
    return config
