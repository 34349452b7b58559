"""``edgefleet models``: list the zoo, build, verify, inspect and benchmark bundles."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet.protocol import signing
from edgefleet.protocol.bundle import pack_bundle, read_manifest, unpack_bundle, verify_bundle
from edgefleet.protocol.manifest import BundleManifest

app = typer.Typer(
    help="Model zoo: build, verify, inspect and benchmark bundles.",
    no_args_is_help=True,
    add_completion=False,
)

STAGES = {
    "data": "generating data",
    "train": "training",
    "convert": "converting",
    "parity": "checking parity",
    "sign": "signing",
}


@contextlib.contextmanager
def _opened(bundle: Path) -> Iterator[Path]:
    """A bundle directory for ``bundle``: itself, or a temporary unpacking of a .tar.gz."""
    if bundle.is_dir():
        yield bundle
        return
    with tempfile.TemporaryDirectory(prefix="edgefleet-bundle-") as tmp:
        yield unpack_bundle(bundle, Path(tmp))


@app.command("list")
def list_models() -> None:
    """List the reference models of the zoo."""
    from edgefleet.models.zoo import ZOO

    table = Table("name", "task", "labels", "default epochs", "summary")
    for name in sorted(ZOO):
        spec = ZOO[name]()
        table.add_row(
            name, spec.task, ", ".join(spec.labels) or "-", str(spec.default_epochs), spec.summary
        )
    Console().print(table)


@app.command()
def build(  # noqa: PLR0917 - typer maps each parameter to an option
    name: Annotated[str, typer.Argument(help="Zoo model to build (see `models list`).")],
    out: Annotated[
        Path,
        typer.Option("--out", help="New or empty directory for the bundle.", resolve_path=True),
    ],
    key: Annotated[
        Path, typer.Option("--key", help="Ed25519 private key that signs it.", resolve_path=True)
    ],
    runtime: Annotated[str, typer.Option(help="litert or onnx.")] = "litert",
    quantize: Annotated[str, typer.Option(help="int8, float16, dynamic or none.")] = "int8",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (model default).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of data, initialisation and shuffling.")] = 0,
    version: Annotated[str, typer.Option(help="Semantic version of the bundle.")] = "1.0.0",
    parent: Annotated[str | None, typer.Option(help="name@version it derives from.")] = None,
    small: Annotated[bool, typer.Option(help="Tiny dataset, for quick trials.")] = False,
    pack: Annotated[bool, typer.Option(help="Also write OUT.tar.gz.")] = False,
) -> None:
    """Train a zoo model, convert and quantize it, check parity, and write a signed bundle."""
    from edgefleet.models.bundler import build_bundle
    from edgefleet.models.convert import MODEL_FILES, QUANTIZE_CHOICES, RuntimeName
    from edgefleet.models.errors import UnsupportedVariant

    if runtime not in MODEL_FILES:
        raise UnsupportedVariant(f"--runtime must be one of {', '.join(MODEL_FILES)}")
    if quantize not in QUANTIZE_CHOICES:
        raise UnsupportedVariant(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}")
    private = signing.load_private_key(key)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(STAGES.get(stage, stage), total=max(total, 1))
            progress.update(tasks[stage], completed=done if total else 1, total=max(total, 1))

        bundle = build_bundle(
            name,
            out,
            private,
            runtime=cast("RuntimeName", runtime),
            quantize=quantize,
            epochs=epochs,
            seed=seed,
            small=small,
            version=version,
            parent=parent,
            report=report,
        )
    console = Console(soft_wrap=True)
    console.print(f"built {bundle.manifest.ref} ({runtime}, {quantize}) in {bundle.path}")
    console.print(f"signed by key {bundle.key_id}")
    for k, v in sorted(bundle.manifest.metrics.items()):
        if k.startswith(("parity_", "accuracy", "roc_auc")):
            console.print(f"  {k}: {v:.4f}")
    if pack:
        archive = out.with_name(out.name + ".tar.gz")
        digest = pack_bundle(out, archive)
        console.print(f"packed {archive} (sha256 {digest})")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz.")],
    pubkey: Annotated[
        list[Path], typer.Option("--pubkey", help="Trusted public key(s).", resolve_path=True)
    ],
    golden: Annotated[bool, typer.Option(help="Also run the golden vectors.")] = True,
) -> None:
    """Check a bundle's signature and file hashes (and that it reproduces its golden vectors)."""
    keys = [signing.load_public_key(p) for p in pubkey]
    with _opened(bundle) as directory:
        verified = verify_bundle(directory, keys)
        line = f"OK {verified.manifest.ref}: signed by {verified.key_id}, "
        line += f"{len(verified.manifest.files)} files match"
        if golden and verified.manifest.golden is not None:
            from edgefleet.models.bundler import check_golden

            line += f", {check_golden(verified)} golden vectors reproduce"
    Console(soft_wrap=True).print(line)


def _manifest_table(m: BundleManifest) -> Table:
    table = Table("field", "value", title=f"{m.ref}", show_lines=False)
    pre, post = m.preprocessing, m.postprocessing
    rows = [
        ("runtime", m.runtime),
        ("model file", m.model_file),
        ("quantization", m.quantization),
        *[(f"input {t.name}", f"{t.dtype} {t.shape} {t.quantization or ''}") for t in m.inputs],
        *[(f"output {t.name}", f"{t.dtype} {t.shape} {t.quantization or ''}") for t in m.outputs],
        (
            "preprocessing",
            f"{pre.kind} window={pre.window} hop={pre.hop} "
            f"channels={pre.channels} rate={pre.sample_rate_hz}",
        ),
        ("postprocessing", f"{post.kind} threshold={post.threshold}"),
        ("labels", ", ".join(m.labels) or "-"),
        *[(f"metric {k}", f"{v:.6g}") for k, v in sorted(m.metrics.items())],
        (
            "lineage",
            f"parent={m.lineage.parent} by={m.lineage.trained_by} data={m.lineage.dataset}",
        ),
        ("tools", ", ".join(f"{k} {v}" for k, v in sorted(m.lineage.tools.items()))),
        (
            "golden",
            f"{m.golden.file} match={m.golden.match} atol={m.golden.atol:.3g}" if m.golden else "-",
        ),
        *[(f"file {f.path}", f"{f.role} {f.size} B {f.sha256[:16]}") for f in m.files],
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    return table


@app.command()
def inspect(bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz.")]) -> None:
    """Show a bundle's manifest (nothing is verified: use `verify` for that)."""
    with _opened(bundle) as directory:
        Console().print(_manifest_table(read_manifest(directory)))


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or .tar.gz.")],
    runs: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 300,
    batch: Annotated[list[int] | None, typer.Option(help="Batch size(s).")] = None,
    threads: Annotated[int, typer.Option(help="Runtime threads.")] = 1,
) -> None:
    """Latency p50/p95 and size of a bundle's model with its device runtime."""
    from edgefleet.models.benchmark import measure, sample_batch
    from edgefleet.models.runner import load_runner

    with _opened(bundle) as directory:
        m = read_manifest(directory)
        runner = load_runner(m.runtime, directory / m.model_file, threads=threads)
        model_bytes = (directory / m.model_file).stat().st_size
        bundle_bytes = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        table = Table(
            "batch",
            "p50 µs",
            "p95 µs",
            "µs/sample",
            title=f"{m.ref} ({m.runtime}, {m.quantization})",
        )
        for b in batch or [1]:
            lat = measure(runner, sample_batch(m.inputs[0].shape, b), runs=runs)
            table.add_row(
                str(b), f"{lat.p50_us:.1f}", f"{lat.p95_us:.1f}", f"{lat.per_sample_us:.2f}"
            )
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"size: model {model_bytes} B, bundle {bundle_bytes} B")
