import numpy as np
import pytest

from ldm_jax import attributes


def test_encode_names_and_indices():
    assert attributes.encode_value("density", "c") == 2
    assert attributes.encode_value("finding", "Calcification") == 2
    assert attributes.encode_value("view", 1) == 1


@pytest.mark.parametrize("attr,value", [("density", "E"), ("view", 2), ("colour", "A")])
def test_encode_rejects_unknown(attr, value):
    with pytest.raises(ValueError, match=str(value) if attr != "colour" else "attribute"):
        attributes.encode_value(attr, value)


def test_null_labels():
    assert attributes.null_labels(3).tolist() == [[4, 3, 2, 2]] * 3


def test_condition_strings_round_trip():
    lab = attributes.parse_condition("density=D, finding=mass")
    assert lab.tolist() == [3, 1, 2, 2]
    assert attributes.format_condition(lab) == "density=D,finding=mass"
    assert attributes.parse_condition("").tolist() == [4, 3, 2, 2]
    assert attributes.format_condition(attributes.parse_condition("")) == "unconditional"
    with pytest.raises(ValueError, match="'colour'"):
        attributes.parse_condition("colour=red")
    with pytest.raises(ValueError, match="attribute=value"):
        attributes.parse_condition("density")


def test_without_nulls_one_attribute_and_keeps_the_rest_and_the_dtype():
    labels = np.array([[1, 2, 0, 1], [3, 0, 1, 0]], np.int32)
    out = attributes.without(labels, "finding")
    np.testing.assert_array_equal(out, [[1, 3, 0, 1], [3, 3, 1, 0]])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(attributes.without(labels, "density")[:, 0], [4, 4])
