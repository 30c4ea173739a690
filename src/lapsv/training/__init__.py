"""Training: recipes, the Accelerate training loop, validation on held-out speakers."""

from lapsv.training.config import TrainConfig, load_recipe
from lapsv.training.loop import TrainingError, train

__all__ = ["TrainConfig", "TrainingError", "load_recipe", "train"]
