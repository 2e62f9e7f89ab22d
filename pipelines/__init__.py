"""Ray Data pipelines: scoring (`piqa score`), filtering, resharding and reports.

`pipelines.score_dataset(ds, ...)` scores a Ray Dataset of images inside a pipeline of your own.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazily: read tasks import `pipelines.readers` and must not pay for torch and the model.
    if name == "score_dataset":
        from pipelines.score import score_dataset

        return score_dataset
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
