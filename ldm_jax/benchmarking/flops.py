"""Model FLOPs counted from a jaxpr: matmuls and convolutions only.

What is counted (a multiply-add is 2 FLOPs, as PyTorch's ``FlopCounterMode`` counts
``mm``/``bmm``/``addmm``/convolution and attention):

- ``dot_general``: ``2 · prod(output shape) · prod(contracted dims)``; for ``[M, K] @ [K, N]``
  that is ``2·M·N·K``. Batch dimensions are part of the output shape.
- ``conv_general_dilated``: ``2 · prod(output shape) · prod(kernel) / out_features``, i.e.
  ``2 · out_elems · kh · kw · cin / groups``. Dilations and padding are not discounted.

Everything else (bias adds, normalisation, softmax, activations, gathers) counts 0.
Sub-jaxprs are followed: ``scan`` counts its body ``length`` times; ``cond`` counts its
most expensive branch; ``while`` counts its condition and body once each (the trip count
is not static); every other primitive that carries jaxprs (``jit``/pjit, remat,
``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``, …) counts the sum of them.
A ``shard_map`` body is counted once, at its per-shard shapes.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core


def dot_general_flops(lhs_shape, rhs_shape, dimension_numbers) -> int:
    """``2 · batch · free_lhs · free_rhs · contracted`` for ``lax.dot_general``."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    batch = math.prod(lhs_shape[d] for d in lhs_batch)
    free_lhs = math.prod(s for d, s in enumerate(lhs_shape) if d not in (*lhs_contract, *lhs_batch))
    free_rhs = math.prod(s for d, s in enumerate(rhs_shape) if d not in (*rhs_contract, *rhs_batch))
    return 2 * batch * free_lhs * free_rhs * contracted


def conv_flops(out_shape, rhs_shape, out_feature_dim: int) -> int:
    """``2 · out_elems · (kernel elements / out_features)`` = ``2 · out_elems · kh·kw·cin/groups``."""
    return 2 * math.prod(out_shape) * (math.prod(rhs_shape) // rhs_shape[out_feature_dim])


def _eqn_flops(eqn) -> int:
    name = eqn.primitive.name
    params = eqn.params
    if name == "dot_general":
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        return dot_general_flops(lhs, rhs, params["dimension_numbers"])
    if name == "conv_general_dilated":
        rhs_shape = eqn.invars[1].aval.shape
        return conv_flops(eqn.outvars[0].aval.shape, rhs_shape, params["dimension_numbers"].rhs_spec[0])
    if name == "scan":
        return params["length"] * jaxpr_flops(params["jaxpr"])
    if name == "cond":
        return max(jaxpr_flops(branch) for branch in params["branches"])
    return sum(jaxpr_flops(sub) for sub in core.jaxprs_in_params(params))


def jaxpr_flops(jaxpr) -> int:
    """FLOPs of a ``Jaxpr`` or ``ClosedJaxpr`` under the rules in the module docstring."""
    if isinstance(jaxpr, core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    return sum(_eqn_flops(eqn) for eqn in jaxpr.eqns)


def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)``, traced with ``jax.make_jaxpr`` (nothing is run or allocated).

    Arguments may be arrays or ``jax.ShapeDtypeStruct`` pytrees (e.g. from ``jax.eval_shape``).
    """
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))
