"""Training loop, checkpoints, metrics."""
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, load_config_file
from .trainer import build_model, evaluate, fit, load_model, make_optimizer, plot_metrics
