"""The model card: a markdown page written into every bundle."""

from __future__ import annotations

from edgefleet.models.base import ReferenceModel
from edgefleet.protocol.manifest import BundleManifest, TensorSpec

CARD_FILE = "MODEL_CARD.md"


def _tensor(t: TensorSpec) -> str:
    q = ""
    if t.quantization is not None:
        q = f", scale {t.quantization.scale[0]:.6g}, zero point {t.quantization.zero_point[0]}"
    return f"`{t.name}` {t.dtype} {t.shape}{q}"


def render_card(spec: ReferenceModel, manifest: BundleManifest) -> str:
    """Markdown describing the model, its data, its metrics and its parity with Keras."""
    m = manifest
    lines = [
        f"# {m.name} {m.version}",
        "",
        spec.summary,
        "",
        "| | |",
        "|---|---|",
        f"| runtime | {m.runtime} (`{m.model_file}`) |",
        f"| quantization | {m.quantization} |",
        f"| inputs | {'; '.join(_tensor(t) for t in m.inputs)} |",
        f"| outputs | {'; '.join(_tensor(t) for t in m.outputs)} |",
        f"| preprocessing | {m.preprocessing.kind}, window {m.preprocessing.window}, "
        f"hop {m.preprocessing.hop}, channels {', '.join(m.preprocessing.channels) or '-'} |",
        f"| postprocessing | {m.postprocessing.kind}, threshold {m.postprocessing.threshold} |",
        f"| labels | {', '.join(m.labels) or '-'} |",
        f"| parent | {m.lineage.parent or '-'} |",
        f"| trained by | {m.lineage.trained_by}; data: {m.lineage.dataset or '-'} |",
        "",
        "## About this model",
        "",
        spec.card_notes(),
        "",
        "## Metrics (held-out set)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(m.metrics.items())],
        "",
        "## Parity with Keras",
        "",
        "Every conversion is checked against the Keras model on the held-out set: top-1 "
        "agreement >= 0.99 for classifiers, Spearman rank correlation of the anomaly score "
        ">= 0.98 for the autoencoder. The `parity_*` metrics above are this bundle's figures.",
        "",
        "## Tools",
        "",
        *[f"- {k} {v}" for k, v in sorted(m.lineage.tools.items())],
        "",
    ]
    return "\n".join(lines)
