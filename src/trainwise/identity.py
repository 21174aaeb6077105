"""A step's identity: its cache key, built from named parts, each logged so "why did it rerun?" has an answer.

The parts (DVC's stage hashes are the model: one hash per declared input):
- `config`: the config sections the step reads, less the keys of them it declares it never reads
  (`StepSpec.ignores`: a setting used only after training must not rerun the sample);
- `upstream.<step>`: the keys of the steps whose outputs it reads;
- `source`: the data source's fingerprint (steps that read the source itself);
- `user_code`: the content of a user's own model file (`path/to/file.py:Class`, or the source file
  of `package.module:Class`), of `model.init` weights given as a file, and of the pretrained
  weights `model.weights` loads (their canonical name and the sha256 of the file read);
- `gate`: whether the pipeline checks were skipped (`--skip-checks`), for the gated steps;
- `code`: trainwise's own source; `dry_run`.
A FINISHED run with the same key is reused. Each part's hash is a tag `trainwise.key.<part>`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainwise.config import ProjectConfig
from trainwise.data.content import HashCache, sha256_file
from trainwise.paths import trainwise_home
from trainwise.provenance import code_version, short_hash

TAG_KEY_PART = "trainwise.key."  # + part name
# Settings of the config part that `user_code` holds by content instead: where the weights file lies
# is no input (the same file elsewhere is the same start), and whether it may be downloaded changes no result.
KEYED_BY_CONTENT = ("model.weights_file", "model.download_weights")
GATED_UPSTREAM = "check"  # steps reading this upstream are gated by its verdict


def key_parts(
    spec_name: str,
    sections: tuple[str, ...],
    upstream: Mapping[str, str],
    cfg: ProjectConfig,
    *,
    source: str | None,
    skip_checks: bool = False,
    ignores: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The named inputs of one step's identity (values, not yet hashed); `ignores`: dotted keys it never reads."""
    parts: dict[str, Any] = {
        "step": spec_name,
        "config": {name: _without(cfg.section(name), name, (*ignores, *KEYED_BY_CONTENT)) for name in sections},
        **{f"upstream.{name}": key for name, key in upstream.items()},
        "source": source,
        "code": code_version(),
        "dry_run": cfg.dry_run,
    }
    if "model" in sections:
        parts["user_code"] = user_content(cfg)
    if GATED_UPSTREAM in upstream:
        parts["gate"] = "skipped" if skip_checks else "checked"
    return parts


def _without(section: Any, name: str, ignores: tuple[str, ...]) -> Any:
    """A section's values less the keys (`section.key`) the step does not read: changing those must not rerun it."""
    dropped = {key.split(".", 1)[1] for key in ignores if key.startswith(f"{name}.")}
    if not dropped or not isinstance(section, dict):
        return section
    return {key: value for key, value in section.items() if key not in dropped}


def key_of(parts: Mapping[str, Any]) -> str:
    return short_hash(dict(parts), 20)


def part_tags(parts: Mapping[str, Any]) -> dict[str, str]:
    """One tag per part: the hash of that part alone, so two runs' tags show which input changed."""
    return {f"{TAG_KEY_PART}{name}": short_hash(value, 12) for name, value in parts.items() if name != "step"}


def user_content(cfg: ProjectConfig) -> dict[str, str | None]:
    """sha256 of the user's own model source file, of `model.init` weights given as a file, and of the
    pretrained weights' file (`model.weights`, with their canonical name: DEFAULT resolved).

    Keyed by content, not path: editing the model file must rerun check, train and tune, and the
    same file in another folder is the same input. A pretrained file not yet downloaded hashes as
    None; the runner fetches it before it keys a step that builds the model (runner.fetch_weights).
    """
    found: dict[str, str | None] = {}
    source = model_source_file(cfg.model.name)
    if source is not None:
        found["model_file"] = sha256_file(source) if source.is_file() else None
    init = cfg.model.init
    if init is not None and not init.startswith(("models:/", "runs:/")):  # aliases are pinned by the runner
        found["init_file"] = sha256_file(Path(init)) if Path(init).is_file() else None
    if cfg.model.weights is not None:
        from trainwise.models.pretrained import resolve_weights  # torchvision: imported only for projects that use its weights

        weights = resolve_weights(cfg.model.name, cfg.model.weights, cfg.model.weights_file)
        found["weights"] = weights.name
        hashes = weights_hashes()
        found["weights_file"] = hashes.sha256(weights.file)
        hashes.save()
    return found


def weights_hashes() -> HashCache:
    """sha256 of pretrained weight files, reused while a file's stat is unchanged (they are 10-500 MB)."""
    return HashCache(trainwise_home() / "cache" / "hashes" / "weights.json")


def model_source_file(ref: str) -> Path | None:
    """The source file of a user model reference, or None for registered and torchvision models."""
    if ref.startswith("torchvision:") or ":" not in ref:
        return None
    location = ref.rpartition(":")[0]
    if location.endswith(".py"):
        return Path(location)
    try:
        spec = importlib.util.find_spec(location)
    except (ImportError, ValueError):
        return None  # not importable: building the model names the problem
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None
