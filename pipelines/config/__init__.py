"""`mlflow.yaml`: found in the project folder, parsed and validated once into frozen settings
(:mod:`.sections` the settings, :mod:`.tuning` the tuning section, :mod:`.checks` what
sections share, :mod:`.loader` finding, reading and checking the file)."""

from pipelines.config.loader import (
    CONFIG_ENV,
    CONFIG_NAME,
    TEMPLATE_NAME,
    ConfigNotFoundError,
    find_config,
    init_project,
    load_settings,
    resolve_tracking_uri,
    template_text,
)
from pipelines.config.sections import (
    DataConfig,
    JumpLimits,
    MonitoringConfig,
    PromotionPolicy,
    RegistryConfig,
    RuntimeConfig,
    ScheduleConfig,
    Settings,
    TrackingConfig,
)
from pipelines.config.tuning import SearchParam, TuningConfig

__all__ = [
    "CONFIG_ENV",
    "CONFIG_NAME",
    "TEMPLATE_NAME",
    "ConfigNotFoundError",
    "DataConfig",
    "JumpLimits",
    "MonitoringConfig",
    "PromotionPolicy",
    "RegistryConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "SearchParam",
    "Settings",
    "TrackingConfig",
    "TuningConfig",
    "find_config",
    "init_project",
    "load_settings",
    "resolve_tracking_uri",
    "template_text",
]
