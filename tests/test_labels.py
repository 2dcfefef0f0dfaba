import pytest

from ldm_jax import labels


def test_encode_names_and_indices():
    assert labels.encode_value("density", "c") == 2
    assert labels.encode_value("finding", "Calcification") == 2
    assert labels.encode_value("view", 1) == 1


@pytest.mark.parametrize("attr,value", [("density", "E"), ("view", 2), ("colour", "A")])
def test_encode_rejects_unknown(attr, value):
    with pytest.raises(ValueError, match=str(value) if attr != "colour" else "attribute"):
        labels.encode_value(attr, value)


def test_null_labels():
    assert labels.null_labels(3).tolist() == [[4, 3, 2, 2]] * 3


def test_condition_strings_round_trip():
    lab = labels.parse_condition("density=D, finding=mass")
    assert lab.tolist() == [3, 1, 2, 2]
    assert labels.format_condition(lab) == "density=D,finding=mass"
    assert labels.parse_condition("").tolist() == [4, 3, 2, 2]
    assert labels.format_condition(labels.parse_condition("")) == "unconditional"
    with pytest.raises(ValueError, match="'colour'"):
        labels.parse_condition("colour=red")
    with pytest.raises(ValueError, match="attribute=value"):
        labels.parse_condition("density")
