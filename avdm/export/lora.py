"""A LoRA student's adapter alone, as diffusers' own LoRA weights file, and the model card's section on
loading it onto the teacher's pipeline (``pipe.load_lora_weights``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avdm.models.lora import AdapterDenoiser, adapter_config, adapter_state_dict

LORA_FOLDER = "lora"


def write_lora_weights(out: Path, denoiser: AdapterDenoiser, pipeline: Any, component: str) -> dict[str, Any]:
    """Write a LoRA student's adapter to ``out/lora/pytorch_lora_weights.safetensors`` with the writer of the
    family's diffusers ``pipeline`` class for its ``component`` (``unet``, ``transformer``), its
    ``LoraConfig`` in the file's metadata (so ``lora_alpha != r`` loads right), for
    ``pipe.load_lora_weights(out / "lora")`` on a pipeline of the teacher. Returns the ``lora`` entry of
    ``avdm_export.json``."""
    state = adapter_state_dict(denoiser.model, denoiser.adapter)
    config = adapter_config(denoiser.model, denoiser.adapter)
    pipeline.save_lora_weights(
        out / LORA_FOLDER,
        **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": config},
    )
    return {
        "folder": LORA_FOLDER,
        "rank": config["r"],
        "alpha": config["lora_alpha"],
        "adapted_modules": len(config["target_modules"]),
        "base": "the teacher (teacher_sources)",
    }


def lora_card_section(out: Path, load_code: Callable[[dict[str, Any]], str]) -> str:
    """The model card's section on loading the adapter onto the teacher (empty for a full student).
    ``load_code(info)`` gives the family's loading lines from the ``avdm_export.json`` written in ``out``,
    whose ``teacher_sources`` are the portable ones."""
    info = json.loads((out / "avdm_export.json").read_text())
    if "lora" not in info:
        return ""
    base = info["teacher_sources"].get("teacher", "TEACHER")
    where = ""
    if base.startswith("avdm-asset:"):
        where = f"`{base}` is the folder `avdm/assets/{base.split(':', 1)[1]}` of the avdm package. "
    return f"""
## As LoRA weights on the teacher

The student is the teacher plus a rank-{info["lora"]["rank"]} LoRA (alpha {info["lora"]["alpha"]}); the
weights above have it merged, `{LORA_FOLDER}/` holds it alone:

```python
{load_code(info)}
```
{where}Sample with this folder's scheduler and ladder, as above.
"""
