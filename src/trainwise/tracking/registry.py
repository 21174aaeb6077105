"""The model registry: registered models, versions and aliases (MLflow's stages are deprecated)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from trainwise.errors import TrackingError
from trainwise.tracking.runs import TAG_PROJECT, connect, filter_literal

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous-champion"


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    source: str  # the logged model's URI
    run_id: str | None
    tags: dict[str, str]
    aliases: list[str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    """Registered models, their versions and aliases on one tracking server."""

    def __init__(self, tracking_uri: str) -> None:
        self.client = connect(tracking_uri)
        self.tracking_uri = tracking_uri

    def register(self, model_uri: str, name: str, *, tags: Mapping[str, Any] | None = None) -> ModelVersionInfo:
        """A new version of `name` (created on first use) from a logged model's URI."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # another worker may have created it first
                self.client.create_registered_model(name, tags={TAG_PROJECT: name})
        version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
        return self.version(name, str(version.version))

    def versions_tagged(self, name: str, tags: Mapping[str, str]) -> list[ModelVersionInfo]:
        """The versions of `name` that carry all these tags, oldest first."""
        conditions = [f"name = {filter_literal(name)}", *(f"tags.`{key}` = {filter_literal(value)}" for key, value in tags.items())]
        found = self.client.search_model_versions(" AND ".join(conditions))
        return sorted((_version_info(v) for v in found), key=lambda v: int(v.version))

    def delete_version(self, name: str, version: str) -> None:
        self.client.delete_model_version(name, version)

    def version(self, name: str, version: str) -> ModelVersionInfo:
        return _version_info(self.client.get_model_version(name, version))

    def by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version `alias` points at, or None when the model or the alias does not exist."""
        try:
            return _version_info(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def pin(self, model_uri: str) -> str:
        """`models:/<name>@<alias>` as the version it points at now (`models:/<name>/<version>`);
        other URIs unchanged. An alias moves; what was read through it must not."""
        if not is_alias_uri(model_uri):
            return model_uri
        name, alias = model_uri.removeprefix("models:/").rsplit("@", 1)
        found = self.by_alias(name, alias)
        if found is None:
            raise TrackingError(
                f"{model_uri}: registered model {name!r} has no alias {alias!r} on {self.tracking_uri} "
                f"(see {self.url(name)}); name an existing version or alias"
            )
        return found.uri

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(name, alias)

    def set_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def url(self, name: str, version: str | None = None) -> str:
        base = f"{self.tracking_uri.rstrip('/')}/#/models/{name}"
        return f"{base}/versions/{version}" if version else base


def is_alias_uri(model_uri: str) -> bool:
    """`models:/<name>@<alias>`: a reference that moves when the alias does."""
    return model_uri.startswith("models:/") and "@" in model_uri


def _version_info(version: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=version.name,
        version=str(version.version),
        source=version.source,
        run_id=version.run_id,
        tags=dict(version.tags or {}),
        aliases=list(version.aliases or []),
    )

