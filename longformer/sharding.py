"""The device mesh and how logical axis names map onto it.

Parameters carry logical names (`embed`, `heads`, `mlp`, `vocab`, ...); a small rule table maps
them to the mesh axes `data`, `fsdp`, `sequence` and `tensor` (`sequence` splits activations
along their positions: `sequence_parallel.py`). A dimension that a mesh axis does not divide
stays replicated on that axis (a vocabulary of 50265 rows cannot be split in two), so any config
runs on any mesh.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# Logical axis -> mesh axes (None: replicated).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),  # activations' positions: one document over devices
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("pos", None),
    ("norm", None),
    ("classes", None),
    ("layers", None),  # the stacked layer axis of a scan_layers model (layout.stack_layers)
)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules=DEFAULT_RULES):
    """While tracing: the mesh and rules that `nn.with_logical_constraint` on activations needs."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolves one `-1` entry to fill the devices; checks the product.

    Three entries are the shape of the mesh before it had a `sequence` axis (data, fsdp,
    tensor): read with sequence 1, so the configs of earlier runs keep working.
    """
    shape = list(shape)
    if len(shape) == 3:
        shape.insert(2, 1)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES} "
                         "(or 3: data, fsdp, tensor, with sequence 1)")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(f"mesh shape {shape} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh shape {tuple(shape)} uses {math.prod(shape)} devices but "
                         f"{num_devices} are present")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (-1, 1, 1, 1), devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    resolved = mesh_shape(shape, len(devices))
    return jax.make_mesh(resolved, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
    """Logical names of one array -> PartitionSpec, replicating what does not divide evenly."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        if axes is not None:
            axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
            axes_t = tuple(a for a in axes_t if a not in used and mesh.shape[a] > 1)
            if axes_t and dim % _axis_size(mesh, axes_t) == 0:
                used.update(axes_t)
                spec.append(axes_t[0] if len(axes_t) == 1 else axes_t)
                continue
        spec.append(None)
    return P(*spec)


def param_shardings(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Works on abstract trees (from `jax.eval_shape`); unboxed leaves are replicated.
    """
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, logical_to_spec(leaf.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_tree,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Batches are split over the data-parallel axes on their leading dimension."""
    return NamedSharding(mesh, P(dict(rules)["batch"]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_batch_to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    """Each process's slice of the global batch -> global jax.Arrays (multi-host ready)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}
