import pandas as pd

from kdlib import io
from kdlib.results import findings_table, published_table, read_comparison


def test_published_numbers_are_read_from_a_comparison_that_also_quotes_findings(tmp_path):
    """reference_comparison.csv holds quoted findings and published numbers in one paper column, so it
    reads back as text; the published table still prints the numbers."""
    comparison = pd.DataFrame(
        {
            "kind": ["finding", "published"],
            "study": ["s", "s"],
            "claim": ["phi is low", "accuracy"],
            "conclusive": [True, False],
            "id": ["s.finding", "s.cf"],
            "student": ["smollm2-135m-instruct"] * 2,
            "scope": ["same setup"] * 2,
            "estimate": [0.07, 41.5],
            "ci_low": [-0.1, 36.0],
            "ci_high": [0.2, 47.0],
            "unit": ["", "%"],
            "paper": ["T5-base 62.1 vs 53.2", 53.17],
            "verdict": ["replicated", "not comparable"],
            "reason": ["", "other student"],
        }
    )
    io.write_csv(tmp_path / "reference_comparison.csv", comparison)
    read_back = read_comparison(tmp_path / "reference_comparison.csv")
    assert findings_table(read_back, "s")["ours (95 % CI)"].tolist() == ["0.07 [-0.10, 0.20]"]  # phi: no unit
    published = pd.DataFrame({"id": ["s.cf"], "study": ["s"], "dataset": ["babi"], "student": ["T5-base"]})
    table = published_table(read_back, published, "s", "babi")
    assert table["paper"].tolist() == ["53.17 % (T5-base)"]
    assert table["ours"].str.startswith("41.5").all()
