import pytest

from kdlib.runner import select_notebooks


def test_select_notebooks():
    assert select_notebooks() == [
        "01_teacher_traces",
        "02_decomposition",
        "03_sft",
        "04_evaluation",
        "05_correlation",
    ]
    assert select_notebooks(only="3") == ["03_sft"]
    assert select_notebooks(only="03_sft") == ["03_sft"]
    assert select_notebooks(start_from="04") == ["04_evaluation", "05_correlation"]
    assert select_notebooks(stop_after="2") == ["01_teacher_traces", "02_decomposition"]
    assert select_notebooks(start_from="02", stop_after="03") == ["02_decomposition", "03_sft"]
    with pytest.raises(ValueError, match="unknown notebook '07'"):
        select_notebooks(only="07")
    with pytest.raises(ValueError, match="comes after"):
        select_notebooks(start_from="04", stop_after="02")
    with pytest.raises(ValueError, match="either --only"):
        select_notebooks(only="01", stop_after="02")
