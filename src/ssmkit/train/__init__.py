"""Training loop, checkpoints, metrics, schedules, recipes and run comparison."""
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_config_file
from .plots import compare_table, plot_metrics, plot_runs, read_metrics, run_summary
from .schedule import LRSchedule
from .trainer import build_model, evaluate, evaluate_dataset, fit, load_model, make_optimizer, validation_split
