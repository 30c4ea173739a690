"""The demo's two frontends ("sides"), each with its recipe, systems and output folders."""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

# stage-1 system name (the recipe's main system and its `compare` entries) -> label
SYSTEM_LABELS = {
    "lap_astp": "LAP + ASTP",
    "superb_astp": "SUPERB + ASTP",
    "last_astp": "last layer + ASTP",
    "layer_astp": "best single layer + ASTP",
}


@dataclasses.dataclass(frozen=True)
class Side:
    """One frozen frontend of the demo and what is trained and reported on it.

    Attributes:
        name: the ``--frontend`` value.
        title: how the report names it.
        recipe: the packaged stage-1 recipe (``lapsv/recipes/``).
        folder: where its runs go inside the demo folder ("" = the top, as before).
        layer_names: the hidden states, in order, for plots and tables.
        systems: the stage-1 systems trained on the same batches (``layer_astp`` uses the
            layer the training-free profile finds best on the validation speakers).
        builtin: a built-in model evaluated beside them (GE2E's own embedding), or None.
        builtin_label: how the report names it.
        stage2_minutes: measured cost of the joint fine-tuning on 2 CPU cores.
        evaluation_minutes: measured cost of embedding the test and cohort audio.
    """

    name: str
    title: str
    recipe: str
    folder: str
    layer_names: tuple[str, ...]
    systems: tuple[str, ...]
    builtin: str | None
    builtin_label: str
    stage2_minutes: float
    evaluation_minutes: float

    def recipe_path(self) -> Path:
        return Path(str(importlib.resources.files("lapsv") / "recipes" / self.recipe))

    def directory(self, out: Path) -> Path:
        return out / self.folder if self.folder else out

    def labels(self, *, best_layer: int | None = None) -> dict[str, str]:
        """System name -> report label; the best single layer's label names the layer."""
        labels = {name: SYSTEM_LABELS[name] for name in self.systems}
        if "layer_astp" in labels and best_layer is not None:
            labels["layer_astp"] = f"best single layer ({self.layer_names[best_layer]}) + ASTP"
        return labels


SIDES: dict[str, Side] = {
    "ge2e": Side(
        name="ge2e",
        title="GE2E (3 LSTM layers, resemblyzer's weights)",
        recipe="demo.yaml",
        folder="",
        layer_names=("LSTM 1", "LSTM 2", "LSTM 3"),
        systems=("lap_astp", "superb_astp", "last_astp"),
        builtin="ge2e",
        builtin_label="GE2E's own embedding",
        stage2_minutes=5.0,  # about 2 min per epoch of joint fine-tuning
        evaluation_minutes=1.0,
    ),
    "whisper-base": Side(
        name="whisper-base",
        title="Whisper-base encoder (embedding output + 6 Transformer layers, OpenAI's weights)",
        recipe="demo_whisper.yaml",
        folder="whisper-base",
        layer_names=("emb", "L1", "L2", "L3", "L4", "L5", "L6"),
        systems=("lap_astp", "superb_astp", "last_astp", "layer_astp"),
        builtin=None,
        builtin_label="",
        stage2_minutes=25.0,  # forward + backward of a 20M-parameter Transformer per crop
        evaluation_minutes=2.5,
    ),
}
