import numpy as np
import pandas as pd
import pytest

from kdlib.data.generated import generate_items


@pytest.fixture(scope="session")
def generated_items():
    return generate_items(24, seed=3, split="train")


def accuracy_outcomes(per_condition: dict, seed=0, student="s") -> pd.DataFrame:
    """Outcome rows (analysis.OUTCOME_COLUMNS) of one student and seed: 0/1 accuracy per item."""
    frames = [
        pd.DataFrame(
            {
                "student": student,
                "condition": condition,
                "seed": seed,
                "transform": condition,
                "metric": "accuracy",
                "item_id": [f"i{k}" for k in range(len(values))],
                "value": np.asarray(values, dtype=float),
            }
        )
        for condition, values in per_condition.items()
    ]
    return pd.concat(frames, ignore_index=True)
