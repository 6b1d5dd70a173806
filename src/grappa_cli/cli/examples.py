"""The "Examples" section at the end of each built-in command's ``--help``.

Kept in one place so that the examples use one vocabulary: tasks with ``-t``, models with
``-m`` (``backbone``, ``adaptor:k256``, ``fused:neighbor``), adaptor sets with ``-k`` (``k256``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

#: command path (space separated) -> (command line, what it does)
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "demo": [("grappa demo", "the whole pipeline on bundled images, then the report"),
             ("grappa demo --dir /tmp/demo --force", "rebuild it elsewhere from scratch")],
    "init": [("grappa init myproj --task mydata=/data/my_images", "a project that trains on your image folder"),
             ("grappa init myproj --backbone efficientnet_lite0 --task cub=/data/CUB_200_2011",
              "a dataset reader by name, a backbone that needs no network")],
    "task add": [("grappa task add mydata /data/my_images --train", "an image folder, also trained on"),
                 ("grappa task add cub /data/CUB_200_2011", "a dataset with its own reader, evaluated only")],
    "task list": [("grappa task list", "split sizes and what each task is used for"),
                  ("grappa task list --json", "the same as JSON")],
    "extract": [("grappa extract", "features of the training images and every test split"),
                ("grappa extract --split test -t mydata", "only one task's test split")],
    "cache build": [("grappa cache build", "decode the training images once for faster training")],
    "cache info": [("grappa cache info", "what the cache holds and its size")],
    "cache clear": [("grappa cache clear --yes", "delete the cache without asking")],
    "cluster": [("grappa cluster --k auto", "a ladder of k values for the number of training images"),
                ("grappa cluster -k 256,1024 --backend sklearn", "chosen k values with another clusterer")],
    "adapt": [("grappa adapt", "one adaptor set per stored clustering"),
              ("grappa adapt -k k256 --epochs 2", "one set, fewer epochs")],
    "fuse": [("grappa fuse", "Grappa-avg (the default model) over every adaptor set"),
             ("grappa fuse --strategy neighbor", "Grappa-N: attention trained on k-NN pairs (section 3.5)"),
             ("grappa fuse --strategy route", "Grappa-R: each training source routed to the granularity a "
              "label-free criterion picks"),
             ("grappa fuse -s avg -k k256,k1024", "Grappa-avg over two sets"),
             ("grappa fuse -s route --inspect", "where a fused model routes each source and task")],
    "eval": [("grappa eval", "every model on every evaluated task"),
             ("grappa eval -m fused:neighbor,adaptor:k256 -t mydata", "chosen models on one task")],
    "report": [("grappa report", "Table 2 and the per-task figure"),
               ("grappa report --examples --paper", "with retrieval examples and the paper's numbers")],
    "run": [("grappa run", "every stage that is not complete, in order"),
            ("grappa run --until adapt", "stop after the adaptor sets")],
    "export": [("grappa export fused:neighbor model.safetensors", "Grappa-N as one self-contained file for load_model"),
               ("grappa export model.onnx", "the default model as an ONNX graph for onnxruntime"),
               ("grappa export adaptor:k256 k256.safetensors --no-backbone", "without the backbone's weights")],
    "embed": [("grappa embed /data/photos -o photos.parquet", "path and embedding per image, for pandas or DuckDB"),
              ("grappa embed mydata --split test -o test.npy -m backbone", "a task's test split with the backbone")],
    "index": [("grappa index /data/gallery", "embed a folder of images with the best fused model"),
              ("grappa index /data/gallery -m backbone --index hnsw", "another model, an approximate index")],
    "search": [("grappa search query.jpg", "the 10 most similar gallery images"),
               ("grappa search a.jpg b.jpg --top 5 --json", "5 per query, as JSON"),
               ("grappa search query.jpg --html results.html", "the results as a page of thumbnails")],
    "status": [("grappa status", "what exists, what is stale and what to run next"),
               ("grappa -C myproj status --json", "another project, as JSON")],
    "plugins": [("grappa plugins --all", "every backbone, clusterer, fusion strategy, task reader and metric")],
}


def epilog(path: str) -> str | None:
    """The Rich-markup Examples section of one command, or None when it has none."""
    examples = EXAMPLES.get(path)
    if not examples:
        return None
    lines = [f"  [bold]{command}[/bold]  [dim]# {what}[/dim]" for command, what in examples]
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(lines)


def add_examples(app: typer.Typer) -> None:
    """Give every registered built-in command (and sub-command) its Examples section."""

    def visit(typer_app: typer.Typer, prefix: str) -> None:
        for info in typer_app.registered_commands:
            name = info.name or (info.callback.__name__ if info.callback else "")
            text = epilog(f"{prefix}{name}")
            if text and not info.epilog:
                info.epilog = text
        for group in typer_app.registered_groups:
            if group.typer_instance is not None and group.name:
                visit(group.typer_instance, f"{prefix}{group.name} ")

    visit(app, "")
