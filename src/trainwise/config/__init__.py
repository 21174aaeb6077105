"""The typed project configuration: `projects/<name>/project.yaml` plus `--set key=value` overrides.

Every section has defaults that serve a new user, so a project.yaml names only what is particular
to its problem. `load_config` is the way in; the models live in the modules beside this one.
"""

from trainwise.config.loading import (
    CONFIG_FILENAME,
    DRY_RUN_OVERRIDES,
    apply_overrides,
    find_project_file,
    load_config,
    parse_overrides,
    with_overrides,
)
from trainwise.config.project import ProjectConfig, flatten
from trainwise.config.sections import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    AugmentConfig,
    ChecksConfig,
    ImageConfig,
    ModelConfig,
    RegistryConfig,
    SampleConfig,
    SplitConfig,
    SubmissionConfig,
    TaskConfig,
    TrainConfig,
)
from trainwise.config.sources import (
    IMAGE_EXTENSIONS,
    IMAGE_SOURCE_KINDS,
    SOURCE_KINDS,
    DataConfig,
    DigitsSource,
    ImageCsvSource,
    ImageFolderSource,
    TabularSource,
    TorchvisionSource,
)
from trainwise.config.tune import CategoricalParam, FloatParam, IntParam, TuneConfig

__all__ = [
    "CLASSIFICATION_METRICS", "CONFIG_FILENAME", "DRY_RUN_OVERRIDES", "IMAGE_EXTENSIONS", "IMAGE_SOURCE_KINDS",
    "REGRESSION_METRICS", "SOURCE_KINDS", "AugmentConfig", "CategoricalParam", "ChecksConfig", "DataConfig",
    "DigitsSource", "FloatParam", "ImageConfig", "ImageCsvSource", "ImageFolderSource", "IntParam", "ModelConfig",
    "ProjectConfig", "RegistryConfig", "SampleConfig", "SplitConfig", "SubmissionConfig", "TabularSource",
    "TaskConfig", "TorchvisionSource", "TrainConfig", "TuneConfig", "apply_overrides", "find_project_file",
    "flatten", "load_config", "parse_overrides", "with_overrides",
]  # fmt: skip
