"""kdcore: the distillation library (pure PyTorch; imports neither prefect nor mlflow)."""

__version__ = "0.1.0"
