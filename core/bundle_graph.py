"""The ONNX side of an adapter bundle (adapt.bundle): initializers made into inputs that
ONNX Runtime's adapters override, graphs of several task kinds merged into one, and the
``.onnx_adapter`` files.

A graph input with an initializer of the same name is an input with a default: a run
without an adapter uses the default (zeros: the base model, and a head that says
nothing), a run with ``RunOptions.add_active_adapter`` feeds the adapter's tensors under
those names (ONNX Runtime 1.20+, its C, Java, Objective-C and JavaScript APIs alike).

Two task kinds (a sequence classifier and a token classifier on one encoder) export two
graphs that repeat the whole encoder: :func:`merge_graphs` keeps one copy of every node
whose operator, attributes and inputs are the same (common subexpression elimination, in
the graphs' topological order), so the encoder runs once and each kind keeps its head.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from adapt.errors import ExportError

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from adapt.bundle_model import GraphInput


def with_inputs(model: onnx.ModelProto, inputs: Sequence[GraphInput], prefix: str = "") -> onnx.ModelProto:
    """``model`` with each named initializer also a graph input (its default zeros, its
    dynamic axes symbolic), renamed ``prefix + name``; the traced intermediate shapes are
    dropped (a rank or a label count is no longer fixed)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    missing = [i.name for i in inputs if i.name not in initializers]
    if missing:
        raise ExportError(
            f"the traced graph has no initializer named {missing[0]!r} ({len(missing)} missing): the exporter "
            "renamed or folded a tensor the bundle must feed",
            hint="report it with the backbone and method; the runs still deploy as their own merged exports",
        )
    renamed = {i.name: prefix + i.name for i in inputs}
    for given in inputs:
        init = initializers[given.name]
        zeros = np.zeros(tuple(init.dims), dtype=onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
        init.CopyFrom(numpy_helper.from_array(zeros, renamed[given.name]))
        symbol = given.name.rpartition(".")[0]
        dims: list[Any] = [
            f"{prefix}{symbol}.{given.axes[a]}" if a in given.axes else d for a, d in enumerate(zeros.shape)
        ]
        graph.input.append(onnx.helper.make_tensor_value_info(renamed[given.name], init.data_type, dims))
    if prefix:
        _rename_uses(graph, renamed)
    del graph.value_info[:]
    return model


def _rename_uses(graph: Any, renamed: Mapping[str, str]) -> None:
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]


def merge_graphs(models: Mapping[str, onnx.ModelProto], outputs: Mapping[str, str]) -> onnx.ModelProto:
    """One graph computing every model's first output, named ``outputs[key]``: the inputs of
    equal name are one input, initializers of equal content one initializer, and a node whose
    operator, attributes and (merged) inputs equal an earlier one's is that node."""
    import onnx

    first = next(iter(models.values()))
    merged = onnx.helper.make_graph([], "adapt_bundle", [], [])
    state = _Merger(merged)
    for key, model in models.items():
        state.add(key, model.graph)
        logits = model.graph.output[0]
        final = outputs[key]
        merged.node.append(onnx.helper.make_node("Identity", [state.canonical[logits.name]], [final]))
        value = onnx.helper.make_tensor_value_info(final, logits.type.tensor_type.elem_type, None)
        value.type.tensor_type.shape.CopyFrom(logits.type.tensor_type.shape)
        merged.output.append(value)
    result = onnx.helper.make_model(merged, opset_imports=list(first.opset_import), producer_name="adapt")
    result.ir_version = first.ir_version
    return result


class _Merger:
    """The state of :func:`merge_graphs`: what each model's value names became."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.canonical: dict[str, str] = {}
        self.inputs: dict[str, Any] = {}
        self.by_content: dict[tuple[Any, ...], str] = {}
        self.by_node: dict[tuple[Any, ...], list[str]] = {}
        self.taken: set[str] = set()

    def add(self, key: str, graph: Any) -> None:
        self.canonical = {"": ""}
        initializer_names = {i.name for i in graph.initializer}
        for value in graph.input:
            self._input(value, initializer_names)
        for init in graph.initializer:
            self._initializer(key, init)
        for node in graph.node:
            self._node(key, node)

    def _fresh(self, key: str, name: str) -> str:
        if name not in self.taken:
            self.taken.add(name)
            return name
        candidate = f"{key}/{name}"
        while candidate in self.taken:
            candidate += "_"
        self.taken.add(candidate)
        return candidate

    def _input(self, value: Any, initializer_names: set[str]) -> None:
        known = self.inputs.get(value.name)
        if known is not None and known.type != value.type:
            raise ExportError(
                f"the task kinds' graphs declare input {value.name!r} differently",
                hint="bundle runs whose models take the same inputs",
            )
        self.canonical[value.name] = value.name
        if known is None:
            self.inputs[value.name] = value
            self.taken.add(value.name)
            self.graph.input.append(value)
            if value.name in initializer_names:
                self.by_content[("input", value.name)] = value.name

    def _initializer(self, key: str, init: Any) -> None:
        if init.name in self.inputs:  # an input's default: the first kind's (each kind's own names are prefixed)
            if not any(i.name == init.name for i in self.graph.initializer):
                self.graph.initializer.append(init)
            return
        content = (
            init.data_type,
            tuple(init.dims),
            hashlib.sha256(init.SerializeToString(deterministic=True).replace(init.name.encode(), b"")).hexdigest(),
        )
        if content in self.by_content:
            self.canonical[init.name] = self.by_content[content]
            return
        name = self._fresh(key, init.name)
        self.by_content[content] = name
        self.canonical[init.name] = name
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = name
        self.graph.initializer.append(copy)

    def _node(self, key: str, node: Any) -> None:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise ExportError(
                f"node {node.name or node.op_type} holds a subgraph ({node.op_type}), which the bundle's graph merge "
                "does not rename",
                hint="bundle runs of one task kind, or report the model",
            )
        inputs = [self.canonical[name] for name in node.input]
        signature = (
            node.domain,
            node.op_type,
            tuple(a.SerializeToString(deterministic=True) for a in node.attribute),
            tuple(inputs),
            len(node.output),
        )
        if signature in self.by_node:
            for name, existing in zip(node.output, self.by_node[signature]):
                self.canonical[name] = existing
            return
        outputs = [self._fresh(key, name) if name else "" for name in node.output]
        self.canonical.update(zip(node.output, outputs))
        self.by_node[signature] = outputs
        copy = type(node)()
        copy.CopyFrom(node)
        copy.name = self._fresh(key, node.name) if node.name else ""
        del copy.input[:], copy.output[:]
        copy.input.extend(inputs)
        copy.output.extend(outputs)
        self.graph.node.append(copy)


def write_adapter(path: Path, values: Mapping[str, np.ndarray], version: int = 1) -> None:
    """``values`` (graph input name -> float32 array) as an ONNX Runtime ``.onnx_adapter`` file."""
    import numpy as np
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(version)
    adapter.set_model_version(version)
    adapter.set_parameters(
        {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            for name, array in values.items()
        }
    )
    adapter.export_adapter(str(path))
