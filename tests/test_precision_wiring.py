"""Simulated low precision is wired into every matmul of every model, not only "somewhere".

The check is structural, on the traced graph of a whole model's forward pass: every operand of
every matmul-like op (Einsum, MatMul, BatchMatMul*) must come from a cast *back from* a float8
format (the rounding ``scmm.formats.quantise`` performs), through nothing but value-preserving
layout ops (reshape, slice, transpose, pad, concat, identities, casts between float dtypes)
and multiplications by constants (the unit-scaled ops fold a static scale into a weight after
rounding it). A matmul whose operand was not rounded (a new layer that bypassed the op sets,
or an op set that forgot a hook) fails with the op and operand named. Loop bodies (the RNN's
``tf.scan``) are functions in the graph's library and are checked the same way.
"""

import dataclasses
from typing import Any, Iterator, Optional

import pytest
import tensorflow as tf
from conftest import MODEL_VARIANTS, model_settings, unit_scaled

from scmm.models import CharLM, ResidualSettings
from scmm.ops.plain import PlainOps
from scmm.precision_settings import PrecisionSettings

MATMULS = {"Einsum", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"}
# Ops whose output holds the values of their data inputs (up to layout or a constant factor).
LAYOUT = {
    "Identity",
    "Reshape",
    "Transpose",
    "StridedSlice",
    "Slice",
    "ExpandDims",
    "Squeeze",
    "BroadcastTo",
    "Pad",
    "PadV2",
    "ConcatV2",
    "Cast",
    "ReadVariableOp",
}
SCALE = {"Mul", "RealDiv"}
FLOAT8 = {
    tf.dtypes.experimental.float8_e4m3fn.as_datatype_enum,
    tf.dtypes.experimental.float8_e5m2.as_datatype_enum,
}
ALL_ROUNDED = PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2", head=True)


class Graph:
    """Nodes of one graph or library function, by name."""

    def __init__(self, nodes: Any, constants: set[str]):
        self.nodes = {node.name: node for node in nodes}
        self.constants = constants

    def producer(self, reference: str) -> tuple[Optional[Any], int]:
        """(node, output index) of an input reference; (None, 0) for a function argument."""
        name, _, rest = reference.lstrip("^").partition(":")
        index = int(rest.rsplit(":", 1)[-1]) if rest and rest.rsplit(":", 1)[-1].isdigit() else 0
        return self.nodes.get(name), index

    def is_constant(self, reference: str) -> bool:
        node, _ = self.producer(reference)
        return node is not None and node.op == "Const"

    def rounded(self, reference: str, depth: int = 0) -> bool:
        """Whether the tensor ``reference`` is a float8 round trip (through layout/scales)."""
        node, index = self.producer(reference)
        if node is None or depth > 64:
            return False
        if node.op == "Cast" and node.attr["SrcT"].type in FLOAT8:
            return True
        values = self.values_of(node, index)
        return bool(values) and all(self.rounded(i, depth + 1) for i in values)

    def values_of(self, node: Any, index: int) -> list[str]:
        """The inputs whose values a pass-through node's output ``index`` carries ([] if the
        node is not a pass-through: its output is not a rounded tensor)."""
        data = [i for i in node.input if not i.startswith("^")]
        if node.op == "IdentityN":  # tf.custom_gradient's wrapper: output i is input i
            return [data[index]]
        if node.op == "ConcatV2":
            return data[:-1]  # the last input is the axis
        if node.op in LAYOUT:
            return data[:1]
        if node.op in SCALE:
            others = [i for i in data if not self.is_constant(i)]
            return others if len(others) == 1 else []
        return []


def graphs(model: CharLM, tokens: tf.Tensor) -> Iterator[tuple[str, Graph]]:
    """The traced forward pass and every function in its library."""
    concrete = tf.function(lambda t: model(t)["loss"]).get_concrete_function(tokens)
    definition = concrete.graph.as_graph_def()
    yield "forward", Graph(definition.node, set())
    for function in definition.library.function:
        yield function.signature.name, Graph(function.node_def, set())


def unrounded_operands(model: CharLM, tokens: tf.Tensor) -> tuple[int, list[str]]:
    """(matmuls found, "graph/op input i" for every operand that is not rounded)."""
    count, bad = 0, []
    for name, graph in graphs(model, tokens):
        for node in graph.nodes.values():
            if node.op not in MATMULS:
                continue
            count += 1
            data = [i for i in node.input if not i.startswith("^")]
            for position, reference in enumerate(data):
                if not graph.rounded(reference):
                    bad.append(f"{name}/{node.name} ({node.op}) input {position}: {reference}")
    return count, bad


def fp8_model(kind: str, norm: str, scheme: str) -> CharLM:
    settings = dataclasses.replace(
        model_settings(kind, norm=norm, seed=4),
        residual=ResidualSettings(norm=norm, weighting="mean"),  # type: ignore[arg-type]
        precision=ALL_ROUNDED,
    )
    return CharLM(unit_scaled(settings) if scheme == "unit" else settings)


# Matmuls per model: attention 2 layers x (qkv, positional, out, 2 chunks x 3, FFN 2) + head;
# conv 2 layers x (5 taps + FFN 2) + head; RNN 2 x (input, FFN 2) + head outside, the scan's
# recurrent matmul inside its loop body.
MIN_MATMULS = {"attention": 15, "conv": 15, "rnn": 8}


@pytest.mark.parametrize("scheme", ["regular", "unit"])
@pytest.mark.parametrize("kind,norm", MODEL_VARIANTS)
def test_every_matmul_operand_is_rounded(kind: str, norm: str, scheme: str) -> None:
    model = fp8_model(kind, norm, scheme)
    tokens = tf.zeros((2, 24), tf.int32)
    count, bad = unrounded_operands(model, tokens)
    assert count >= MIN_MATMULS[kind]
    assert not bad, "\n".join(bad)


def test_the_check_finds_an_unrounded_matmul() -> None:
    """Without simulated formats nothing is rounded, and the check says so for every matmul."""
    settings = dataclasses.replace(model_settings("conv"), precision=PrecisionSettings())
    count, bad = unrounded_operands(CharLM(settings), tf.zeros((2, 24), tf.int32))
    assert count >= MIN_MATMULS["conv"] and len(bad) == 2 * count
    # The head alone is left in the compute dtype by default (precision.head=false).
    default = dataclasses.replace(settings, precision=dataclasses.replace(ALL_ROUNDED, head=False))
    _, bad = unrounded_operands(CharLM(default), tf.zeros((2, 24), tf.int32))
    assert bad and all("head" in line for line in bad), bad


def test_the_check_finds_one_forgotten_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """An op set whose positional-key matmul skips the rounding is caught, and only there."""

    def unrounded_keys(self: Any, embedding: Any, weight: Any, batch: int, dtype: Any) -> Any:
        del self, batch
        return tf.einsum("rf,fna->nra", tf.constant(embedding, dtype), tf.cast(weight, dtype))

    monkeypatch.setattr(PlainOps, "positional_keys", unrounded_keys)
    _, bad = unrounded_operands(
        fp8_model("attention", "pre", "regular"), tf.zeros((2, 24), tf.int32)
    )
    # Both operands of the one positional einsum in each of the 2 layers.
    assert len(bad) == 4 and all("positional" in line or "einsum" in line for line in bad), bad
