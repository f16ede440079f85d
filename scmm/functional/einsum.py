"""Unit-scaled two-operand einsums: ``U.einsum`` (two activations) and ``U.weight_einsum``
(an activation and a unit-initialised kernel, the arithmetic of ``uu.EinsumDense``).

The scales come from the equation alone, for unit iid operands and a unit output gradient:

- output: each output entry sums one product per combination of the *summed* labels (those
  absent from the output), so its ideal scale is (product of the summed dims)^-1/2;
- an operand's gradient: each of its entries receives one term per combination of the labels
  that are in the output but not in that operand (they belong to the other operand), so its
  ideal scale is (product of those dims)^-1/2.

``matmul`` is the special case ``...mk,...kn->...mn``: output k^-1/2, grads n^-1/2 and m^-1/2
(``scmm.uscale.matmul``). Sizes that are None at trace time (a Keras batch or sequence dim)
become scalar tensors from ``tf.shape``.
"""

import dataclasses
import math
from typing import Optional, Union

import tensorflow as tf

from .. import precision
from ..uscale.batch_split import global_rows
from ..uscale.ops import weight_contraction
from ..uscale.scaling import CONSTRAINTS, Constraint, constrain, scaling

Factor = Union[float, tf.Tensor]
ELLIPSIS = "..."


@dataclasses.dataclass(frozen=True)
class Equation:
    """A parsed explicit two-operand equation ``"<a>,<b>-><out>"`` (one ``...`` per term).

    Each term is the tuple of its labels; ``...`` stands for one label covering all the
    operand's ellipsis dims (a batch group: it must also be in the output).
    """

    text: str
    left: tuple[str, ...]
    right: tuple[str, ...]
    output: tuple[str, ...]

    @property
    def summed(self) -> tuple[str, ...]:
        """Labels of either operand that the output sums over (contracted)."""
        seen = [label for label in (*self.left, *self.right) if label not in self.output]
        return tuple(dict.fromkeys(seen))

    def only_in_output_and(self, term: tuple[str, ...], other: tuple[str, ...]) -> tuple[str, ...]:
        """Labels of ``other`` that are in the output but not in ``term``."""
        return tuple(label for label in other if label in self.output and label not in term)


def _parse_term(term: str, equation: str) -> tuple[str, ...]:
    if term.count(ELLIPSIS) > 1 or term.replace(ELLIPSIS, "").count(".") > 0:
        raise ValueError(f"einsum {equation!r}: bad term {term!r} (at most one '...')")
    labels: list[str] = []
    rest = term
    while rest:
        if rest.startswith(ELLIPSIS):
            labels.append(ELLIPSIS)
            rest = rest[len(ELLIPSIS) :]
            continue
        if not rest[0].isalpha():
            raise ValueError(f"einsum {equation!r}: label {rest[0]!r} is not a letter")
        labels.append(rest[0])
        rest = rest[1:]
    if len(set(labels)) != len(labels):
        raise ValueError(f"einsum {equation!r}: repeated label in {term!r} (traces unsupported)")
    return tuple(labels)


def parse_equation(subscripts: str) -> Equation:
    """Parse and validate ``subscripts`` (explicit output, exactly two operands)."""
    if not isinstance(subscripts, str) or "->" not in subscripts:
        raise ValueError(
            f"einsum subscripts must be an explicit 'a,b->out' string, got {subscripts!r}"
        )
    inputs, output = subscripts.replace(" ", "").split("->", 1)
    terms = inputs.split(",")
    if len(terms) != 2:
        raise ValueError(f"einsum {subscripts!r}: expected two operands, got {len(terms)}")
    left, right = (_parse_term(t, subscripts) for t in terms)
    out = _parse_term(output, subscripts)
    for label in out:
        if label not in left and label not in right:
            raise ValueError(f"einsum {subscripts!r}: output label {label!r} is in no operand")
    if ELLIPSIS in (*left, *right) and ELLIPSIS not in out:
        raise ValueError(f"einsum {subscripts!r}: '...' must also appear in the output")
    return Equation(subscripts, left, right, out)


def label_sizes(term: tuple[str, ...], x: tf.Tensor, equation: str) -> dict[str, Factor]:
    """``{label: size}`` for one operand: an int when static, else a scalar int32 tensor."""
    rank = len(x.shape)
    named = len(term) - (1 if ELLIPSIS in term else 0)
    if rank < named or (ELLIPSIS not in term and rank != named):
        raise ValueError(f"einsum {equation!r}: term {''.join(term)!r} does not fit {x.shape}")
    dims: list[Union[int, tf.Tensor]] = [
        int(d) if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape)
    ]
    sizes: dict[str, Factor] = {}
    position = 0
    for label in term:
        if label == ELLIPSIS:
            width = rank - named
            sizes[label] = product(dims[position : position + width])
            position += width
        else:
            sizes[label] = dims[position]
            position += 1
    return sizes


def product(values: list) -> Factor:
    """Product of ints and scalar tensors: an int when all are static."""
    static = math.prod(v for v in values if isinstance(v, int))
    dynamic = [v for v in values if not isinstance(v, int)]
    if not dynamic:
        return static
    total = tf.cast(static, tf.float32)
    for value in dynamic:
        total = total * tf.cast(value, tf.float32)
    return total


def inverse_sqrt(size: Factor) -> Factor:
    """size^-1/2 as a Python float (static) or a float32 scalar tensor."""
    if isinstance(size, (int, float)):
        return float(size) ** -0.5
    return tf.math.rsqrt(tf.cast(size, tf.float32))


def _tie_three(scales: tuple[Factor, Factor, Factor], constraint: str) -> tuple:
    """(output, grad left, grad right) tied as ``scmm.uscale.matmul`` ties them."""
    out, left, right = scales
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINTS}")
    if constraint == "separate":
        return scales
    if constraint == "forward":
        return (out,) * 3
    static = all(isinstance(s, float) for s in scales)
    if constraint == "backward":
        tied = math.sqrt(left * right) if static else tf.sqrt(left * right)
    else:  # gmean
        tied = (out * left * right) ** (1 / 3) if static else tf.pow(out * left * right, 1 / 3)
    return (tied,) * 3


def einsum(
    subscripts: str, x: tf.Tensor, y: tf.Tensor, constraint: Constraint = "gmean"
) -> tf.Tensor:
    """Unit-scaled ``keras.ops.einsum(subscripts, x, y)`` of two activations (non-cut edges).

    Ideal scales: output (prod summed dims)^-1/2; x-gradient (prod of y's dims in the output
    but not in x)^-1/2; y-gradient likewise. ``constraint`` ties the three like
    ``scmm.uscale.matmul``: gmean (geometric mean of all three), forward (the output scale),
    backward (geometric mean of the two gradient scales), separate (untied: only where both
    inputs are cut edges). Both operands go through ``scmm.precision`` as activations.
    """
    equation = parse_equation(subscripts)
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    if x.dtype != y.dtype:
        y = tf.cast(y, x.dtype)
    sizes = {
        **label_sizes(equation.right, y, subscripts),
        **label_sizes(equation.left, x, subscripts),
    }
    ideal = (
        inverse_sqrt(product([sizes[label] for label in equation.summed])),
        inverse_sqrt(
            product(
                [
                    sizes[label]
                    for label in equation.only_in_output_and(equation.left, equation.right)
                ]
            )
        ),
        inverse_sqrt(
            product(
                [
                    sizes[label]
                    for label in equation.only_in_output_and(equation.right, equation.left)
                ]
            )
        ),
    )
    out_scale, x_scale, y_scale = _tie_three(ideal, constraint)
    x, y = precision.operand(x, "activation"), precision.operand(y, "activation")
    product_ = tf.einsum(subscripts, scaling(x, backward=x_scale), scaling(y, backward=y_scale))
    return scaling(precision.output(product_), forward=out_scale)


def kernel_fan_in(subscripts: str, kernel_shape: tuple) -> int:
    """Fan-in of an EinsumDense kernel: the product of its dims contracted with the input."""
    equation = parse_equation(subscripts)
    if ELLIPSIS in equation.right:
        raise ValueError(f"einsum {subscripts!r}: the kernel term cannot hold '...'")
    contracted = [
        int(kernel_shape[i])
        for i, label in enumerate(equation.right)
        if label in equation.left and label not in equation.output
    ]
    return math.prod(contracted)


def weight_einsum(
    subscripts: str,
    x: tf.Tensor,
    kernel: tf.Tensor,
    constraint: Optional[Constraint] = "gmean",
    readout: bool = False,
) -> tf.Tensor:
    """Unit-scaled ``einsum(subscripts, x, kernel)`` for a unit-initialised kernel (a cut edge).

    Ideal output scale (prod summed dims)^-1/2 (the fan-in: the kernel dims contracted with
    x, times any dims of x summed alone); ideal x-gradient (prod of the kernel's dims in the
    output)^-1/2; tied by ``constraint`` (``scmm.uscale.constrain``). ``readout=True`` is
    u-muP's readout: output 1/fan-in, and ``constraint=None`` leaves it untied from the
    x-gradient scale. Kernel gradient rows^-1/2, rows = product of x's dims whose labels are
    not in the kernel (each kernel entry's gradient sums that many products); a scalar tensor
    when a dim is None. Operands go through ``scmm.precision`` (``weight_contraction``).
    """
    equation = parse_equation(subscripts)
    if ELLIPSIS in equation.right:
        raise ValueError(f"weight_einsum {subscripts!r}: the kernel term cannot hold '...'")
    x = tf.convert_to_tensor(x)
    kernel_sizes = label_sizes(equation.right, kernel, subscripts)
    x_sizes = label_sizes(equation.left, x, subscripts)
    if any(not isinstance(v, int) for v in kernel_sizes.values()):
        raise ValueError(f"weight_einsum {subscripts!r}: kernel shape must be static")
    for label, size in kernel_sizes.items():
        if label in x_sizes and isinstance(x_sizes[label], int) and x_sizes[label] != size:
            raise ValueError(
                f"weight_einsum {subscripts!r}: label {label!r} is {x_sizes[label]} in x"
                f" {x.shape} but {size} in the kernel {kernel.shape}"
            )
    sizes = {**x_sizes, **kernel_sizes}
    summed = product([sizes[label] for label in equation.summed])
    if not isinstance(summed, int):
        raise ValueError(f"weight_einsum {subscripts!r}: summed dims of {x.shape} must be static")
    x_grad = product(
        [sizes[label] for label in equation.only_in_output_and(equation.left, equation.right)]
    )
    rows = global_rows(
        product([size for label, size in x_sizes.items() if label not in equation.right])
    )
    ideal = (1.0 / summed if readout else summed**-0.5, float(x_grad) ** -0.5)
    if constraint is None:
        if not readout:
            raise ValueError("weight_einsum: constraint=None is only for readout=True")
        scales = ideal
    else:
        scales = constrain(*ideal, constraint)

    def contract(inputs: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return tf.einsum(subscripts, inputs, w)

    return weight_contraction(x, kernel, contract, scales, inverse_sqrt(rows))
