"""The one place that talks to MLflow: runs, nesting, the step cache, logging, models, the registry.

`runs` drives runs through MlflowClient with explicit run ids (no fluent "active run"), so nesting
is explicit and thread-safe and joining `mlflow run`'s run is a matter of using its id. `registry`
holds registered models, versions and aliases.
"""

from trainwise.tracking.models import load_pyfunc as load_pyfunc  # re-exported
from trainwise.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, ModelVersionInfo, Registry, is_alias_uri
from trainwise.tracking.runs import (
    EXPERIMENT_KIND,
    JOIN_RUN_ENV,
    TAG_CACHE_KEY,
    TAG_CONFIG_HASH,
    TAG_DRY_RUN,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_NOTE,
    TAG_PARENT,
    TAG_PROJECT,
    TAG_STEP,
    TAG_UPSTREAM,
    TAG_VERSIONS,
    Run,
    StepRun,
    Tracker,
    connect,
    experiment_url,
    run_url,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EXPERIMENT_KIND",
    "JOIN_RUN_ENV",
    "PREVIOUS_CHAMPION",
    "TAG_CACHE_KEY",
    "TAG_CONFIG_HASH",
    "TAG_DRY_RUN",
    "TAG_ERROR",
    "TAG_GIT_COMMIT",
    "TAG_NOTE",
    "TAG_PARENT",
    "TAG_PROJECT",
    "TAG_STEP",
    "TAG_UPSTREAM",
    "TAG_VERSIONS",
    "ModelVersionInfo",
    "Registry",
    "Run",
    "StepRun",
    "Tracker",
    "connect",
    "experiment_url",
    "is_alias_uri",
    "run_url",
]
