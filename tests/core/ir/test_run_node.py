"""run_node's numpy fast paths give what onnx's reference evaluator gives."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from pruning_core.ir import graph

X = np.arange(2 * 3 * 4 * 5, dtype=np.int64).reshape(2, 3, 4, 5)
I64 = np.int64


def _reference(node, inputs, opset):
    # the fast table bypassed: the same node through the reference evaluator
    saved = graph._FAST.pop(node.op_type)
    try:
        return graph.run_node(node, inputs, opset)
    finally:
        graph._FAST[node.op_type] = saved


CASES = [
    ("Reshape", {}, [X, np.array([0, -1, 5], I64)], 18),
    ("Reshape", {}, [X, np.array([2, 12, 5], I64)], 13),
    ("Reshape", {"allowzero": 1}, [X, np.array([6, 4, 5], I64)], 18),
    ("Unsqueeze", {}, [X, np.array([0, -1], I64)], 13),
    ("Unsqueeze", {"axes": [1, 3]}, [X], 11),
    ("Squeeze", {}, [X[:, :1, :, :1], np.array([1, -1], I64)], 13),
    ("Squeeze", {}, [X[:1, :, :1]], 13),
    ("Squeeze", {"axes": [0]}, [X[:1]], 11),
    ("Flatten", {}, [X], 13),
    ("Flatten", {"axis": 0}, [X], 13),
    ("Flatten", {"axis": -1}, [X], 13),
    ("Flatten", {"axis": 4}, [X], 13),
    ("Identity", {}, [X], 13),
    ("Transpose", {"perm": [0, 2, 3, 1]}, [X], 13),
    ("Transpose", {}, [X], 13),
    ("Gather", {"axis": 1}, [X, np.array([[2, 0], [-1, 1]], I64)], 13),
    ("Gather", {}, [X, np.array(1, I64)], 13),
    ("GatherElements", {"axis": 2}, [X, np.random.default_rng(0).integers(-4, 4, (2, 3, 2, 5))], 13),
    ("Concat", {"axis": 1}, [X, X[:, :2]], 13),
    ("Concat", {"axis": -1}, [X, X[..., :1], X], 13),
]


@pytest.mark.parametrize("op, attrs, inputs, opset", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fast_path_matches_reference(op: str, attrs: dict, inputs: list, opset: int) -> None:
    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], **attrs)
    got = graph.run_node(node, inputs, opset)
    want = _reference(node, inputs, opset)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
