"""``torch.utils.tensorboard``: :class:`SummaryWriter` writes TensorBoard event files.

The events are written by the ``tensorboardX`` package (the optional extra
``pip install 'nodegrad[tensorboard]'``); this module gives it PyTorch's surface and turns
nodegrad tensors (CPU or CUDA), NumPy arrays and numbers into host arrays first. ``add_graph``
records one forward pass and writes the graph of primitives it recorded, scoped by module.
"""

from __future__ import annotations

import itertools
import numbers
import os
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import _backend as B
from ..autodiff import Node, enable_grad
from ..tensor import Tensor

np = B.np

EXTRA = "pip install 'nodegrad[tensorboard]'"
# event files are named events.out.tfevents.<seconds>.<host>.<pid>.<n> as PyTorch's: two files
# opened in one second in one directory (a reopened writer, a quick resume) stay two files
_UID = itertools.count()


def _suffix(user: str) -> str:
    return f".{os.getpid()}.{next(_UID)}{user}"


def _tbx():
    """The tensorboardX package, or an ImportError that names the extra to install."""
    try:
        import tensorboardX
    except ImportError as e:
        raise ImportError(f"SummaryWriter writes TensorBoard files with the tensorboardX "
                          f"package, which is not installed: {EXTRA}") from e
    return tensorboardX


def _host(x, op: str, what: str = "value") -> np.ndarray:
    """``x`` (a Tensor on any device, a NumPy/CuPy array, a number or a nested list of
    numbers) as a NumPy array."""
    if isinstance(x, Tensor):
        x = x.detach()._data
    if B.is_array(x):
        return B.backend_of(x).to_host(x)
    if isinstance(x, numbers.Number | np.generic | list | tuple):
        a = np.asarray(x)
        if a.dtype == object or a.dtype.kind in "USV":
            raise TypeError(f"{op}: {what} must be numbers, got {type(x).__name__} of "
                            f"{a.dtype}")
        return a
    raise TypeError(f"{op}: {what} must be a Tensor, an array or a number, got "
                    f"{type(x).__name__}")


def _scalar(x, op: str, tag: str) -> float:
    """One number from a number, or a tensor/array of one element."""
    if isinstance(x, bool):
        return float(x)
    a = _host(x, op)
    if a.size != 1:
        raise ValueError(f"{op}: the value of {tag!r} must hold one element, got shape "
                         f"{tuple(a.shape)}")
    if a.dtype.kind == "c":
        raise TypeError(f"{op}: the value of {tag!r} is complex; expected a real number")
    return float(a.reshape(()))


def _step(step, op: str) -> int | None:
    if step is None:
        return None
    if isinstance(step, Tensor) or B.is_array(step):
        a = _host(step, op, "global_step")
        if a.size == 1 and a.dtype.kind in "iu":
            return int(a.reshape(()))
    elif isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return int(step)
    raise TypeError(f"{op}: global_step must be an integer or None, got {step!r}")


def _tag(tag, op: str) -> str:
    if not isinstance(tag, str) or not tag:
        raise TypeError(f"{op}: tag must be a non-empty string, got {tag!r}")
    return tag


def _check_formats(a: np.ndarray, dataformats, op: str, allowed: str) -> None:
    if not isinstance(dataformats, str) or len(set(dataformats)) != len(dataformats) \
            or not set(dataformats) <= set(allowed):
        raise ValueError(f"{op}: dataformats must be distinct letters of {allowed!r} "
                         f"(e.g. 'CHW' or 'HWC'), got {dataformats!r}")
    if len(dataformats) != a.ndim:
        raise ValueError(f"{op}: dataformats {dataformats!r} names {len(dataformats)} axes, but "
                         f"the image has shape {tuple(a.shape)} ({a.ndim} axes)")


class SummaryWriter:
    """Write scalars, histograms, images, figures, text, hyperparameters, PR curves,
    embeddings and graphs to a TensorBoard event file in ``log_dir`` (PyTorch's API).

    ``log_dir`` defaults to ``runs/<date>_<host><comment>``. ``purge_step=T`` continues a
    crashed run in the same ``log_dir``: TensorBoard hides its earlier events at steps >= T.
    Events are queued (up to ``max_queue``) and flushed every ``flush_secs`` seconds, by
    :meth:`flush` and by :meth:`close`; a closed writer reopens on the next ``add_*``.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, comment: str = "",
                 purge_step: int | None = None, max_queue: int = 10, flush_secs: int = 120,
                 filename_suffix: str = ""):
        tbx = _tbx()
        if not log_dir:
            now = datetime.now().strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", now + "_" + socket.gethostname() + str(comment))
        self.log_dir = os.fspath(log_dir)
        self.purge_step = _step(purge_step, "SummaryWriter")
        self.max_queue, self.flush_secs = int(max_queue), flush_secs
        self.filename_suffix = str(filename_suffix)
        self._tbx_writer = tbx.SummaryWriter
        self._w = None
        self._writer()

    def _writer(self):
        """tensorboardX's writer, opened anew (a new event file) after :meth:`close`; only the
        first file carries the purge event."""
        if self._w is None:
            self._file_suffix = _suffix(self.filename_suffix)
            self._w = self._tbx_writer(logdir=self.log_dir, purge_step=self.purge_step,
                                       max_queue=self.max_queue, flush_secs=self.flush_secs,
                                       filename_suffix=self._file_suffix)
            self.purge_step = None
        return self._w

    def get_logdir(self) -> str:
        """The directory the event files are written to."""
        return self.log_dir

    @property
    def file_writer(self):
        """The writer of the main event file (tensorboardX's ``FileWriter``)."""
        return self._writer()._get_file_writer()

    # --- scalars --------------------------------------------------------------------------
    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None,
                   walltime: float | None = None, new_style: bool = False,
                   double_precision: bool = False) -> None:
        """One number (a Python number, or a one-element tensor or array) at ``global_step``;
        ``new_style`` stores it as a tensor (float64 with ``double_precision``)."""
        tag = _tag(tag, "add_scalar")
        v, step = _scalar(scalar_value, "add_scalar", tag), _step(global_step, "add_scalar")
        if not new_style:  # (tensorboardX's add_scalar would also keep every value in memory)
            from tensorboardX.summary import scalar
            self.file_writer.add_summary(scalar(tag, v), step, walltime)
            return
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboardX.proto.tensor_pb2 import TensorProto
        from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto
        t = (TensorProto(dtype="DT_DOUBLE", double_val=[v], tensor_shape=TensorShapeProto())
             if double_precision else
             TensorProto(dtype="DT_FLOAT", float_val=[v], tensor_shape=TensorShapeProto()))
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
        self.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, tensor=t,
                                                                  metadata=meta)]),
                                     step, walltime)

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, Any],
                    global_step: int | None = None, walltime: float | None = None) -> None:
        """Several numbers in one chart: each key is written, under ``main_tag``, to its own
        run ``<log_dir>/<main_tag>_<key>`` (as PyTorch)."""
        main_tag = _tag(main_tag, "add_scalars")
        if not isinstance(tag_scalar_dict, Mapping):
            raise TypeError(f"add_scalars: tag_scalar_dict must be a dict of numbers, got "
                            f"{type(tag_scalar_dict).__name__}")
        values = {str(k): _scalar(v, "add_scalars", f"{main_tag}/{k}")
                  for k, v in tag_scalar_dict.items()}
        step = _step(global_step, "add_scalars")
        walltime = time.time() if walltime is None else walltime
        from tensorboardX.summary import scalar
        from tensorboardX.writer import FileWriter

        w = self._writer()
        for tag, v in values.items():
            path = self.log_dir + "/" + main_tag.replace("/", "_") + "_" + tag
            fw = w.all_writers.get(path)
            if fw is None:  # closed with the main writer
                fw = w.all_writers[path] = FileWriter(path, self.max_queue, self.flush_secs,
                                                      self._file_suffix)
            fw.add_summary(scalar(main_tag, v), step, walltime)

    # --- distributions and media ----------------------------------------------------------
    def add_histogram(self, tag: str, values: Any, global_step: int | None = None,
                      bins: str | int | Sequence = "tensorflow", walltime: float | None = None,
                      max_bins: int | None = None) -> None:
        """A histogram of ``values``; ``bins`` is ``"tensorflow"`` (TensorBoard's exponential
        buckets), a NumPy bin rule (``"auto"``, ``"fd"``, ...), a count or the bin edges."""
        tag = _tag(tag, "add_histogram")
        a = _host(values, "add_histogram", "values").reshape(-1)
        if a.size == 0:
            raise ValueError(f"add_histogram: the values of {tag!r} are empty")
        if a.dtype.kind not in "biu" and not B.is_float(a.dtype):
            raise TypeError(f"add_histogram: the values of {tag!r} must be real numbers, got "
                            f"dtype {a.dtype}")
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(f"add_histogram: the values of {tag!r} hold {bad} NaN or infinite "
                             "entries; a histogram needs finite values")
        self._writer().add_histogram(tag, a.astype(np.float64), _step(global_step, "add_histogram"),
                              bins, walltime, max_bins)

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None,
                  walltime: float | None = None, dataformats: str = "CHW") -> None:
        """One image: floats in [0, 1] or uint8 in [0, 255], laid out as ``dataformats``
        (``"CHW"``, ``"HWC"``, ``"HW"``; 1, 3 or 4 channels)."""
        tag = _tag(tag, "add_image")
        a = _host(img_tensor, "add_image", "img_tensor")
        _check_formats(a, dataformats, "add_image", "CHW")
        self._writer().add_image(tag, a, _step(global_step, "add_image"), walltime, dataformats)

    def add_images(self, tag: str, img_tensor: Any, global_step: int | None = None,
                   walltime: float | None = None, dataformats: str = "NCHW") -> None:
        """A batch of images shown as one grid (``dataformats`` ``"NCHW"``, ``"NHWC"``, ...)."""
        tag = _tag(tag, "add_images")
        a = _host(img_tensor, "add_images", "img_tensor")
        _check_formats(a, dataformats, "add_images", "NCHW")
        self._writer().add_images(tag, a, _step(global_step, "add_images"), walltime, dataformats)

    def add_figure(self, tag: str, figure, global_step: int | None = None, close: bool = True,
                   walltime: float | None = None) -> None:
        """A matplotlib figure (or a list of them, as a grid) rendered to an image; ``close``
        closes the figure afterwards."""
        tag = _tag(tag, "add_figure")
        figs = figure if isinstance(figure, list) else [figure]
        for f in figs:
            if not hasattr(f, "canvas"):
                raise TypeError(f"add_figure: expected a matplotlib Figure (or a list of them), "
                                f"got {type(f).__name__}")
        self._writer().add_figure(tag, figure, _step(global_step, "add_figure"), close, walltime)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None,
                 walltime: float | None = None) -> None:
        """A text (Markdown) entry."""
        tag = _tag(tag, "add_text")
        if not isinstance(text_string, str):
            raise TypeError(f"add_text: text_string must be a str, got "
                            f"{type(text_string).__name__}")
        self._writer().add_text(tag, text_string, _step(global_step, "add_text"), walltime)

    def add_pr_curve(self, tag: str, labels: Any, predictions: Any,
                     global_step: int | None = None, num_thresholds: int = 127,
                     weights: Any = None, walltime: float | None = None) -> None:
        """A precision-recall curve of binary ``labels`` (0/1 or bools) against
        ``predictions`` (probabilities in [0, 1]) at ``num_thresholds`` thresholds."""
        op = "add_pr_curve"
        tag = _tag(tag, op)
        y = _host(labels, op, "labels").reshape(-1)
        p = _host(predictions, op, "predictions").reshape(-1).astype(np.float64)
        if y.shape != p.shape:
            raise ValueError(f"{op}: labels and predictions differ in size ({y.size} and "
                             f"{p.size})")
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"{op}: labels must be 0 or 1 (or bools), got values "
                             f"{np.unique(y)[:5].tolist()}")
        if p.size and not ((p >= 0) & (p <= 1)).all():
            raise ValueError(f"{op}: predictions must be probabilities in [0, 1], got the "
                             f"range [{np.nanmin(p):.4g}, {np.nanmax(p):.4g}]")
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, numbers.Integral) \
                or not 2 <= num_thresholds <= 127:
            raise ValueError(f"{op}: num_thresholds must be an integer in [2, 127], got "
                             f"{num_thresholds!r}")
        w = None if weights is None else _host(weights, op, "weights").reshape(-1)
        self._writer().add_pr_curve(tag, y.astype(np.bool_), p, _step(global_step, op),
                             int(num_thresholds), w, walltime)

    def add_embedding(self, mat: Any, metadata: Sequence | None = None,
                      label_img: Any = None, global_step: int | None = None,
                      tag: str = "default", metadata_header: Sequence | None = None) -> None:
        """Points (rows of ``mat``, shape (N, D)) for TensorBoard's projector, labelled by
        ``metadata`` (N labels, or N rows under ``metadata_header``) and ``label_img``
        (N images, NCHW)."""
        op = "add_embedding"
        m = _host(mat, op, "mat")
        if m.ndim != 2:
            raise ValueError(f"{op}: mat must be 2-D (N points, D features), got shape "
                             f"{tuple(m.shape)}")
        if metadata is not None and len(metadata) != m.shape[0]:
            raise ValueError(f"{op}: {len(metadata)} metadata entries for {m.shape[0]} points")
        img = None if label_img is None else _host(label_img, op, "label_img")
        if img is not None and (img.ndim != 4 or img.shape[0] != m.shape[0]):
            raise ValueError(f"{op}: label_img must be N x C x H x W with N = {m.shape[0]}, got "
                             f"shape {tuple(img.shape)}")
        self._writer().add_embedding(m, metadata, img, _step(global_step, op), tag, metadata_header)

    # --- hyperparameters ------------------------------------------------------------------
    def add_hparams(self, hparam_dict: dict, metric_dict: dict,
                    hparam_domain_discrete: dict[str, list] | None = None,
                    run_name: str | None = None, global_step: int | None = None) -> None:
        """One trial for TensorBoard's HParams view: its hyperparameters (int, float, bool,
        str, None or a one-element tensor; as PyTorch, a bool is stored as the number 0 or 1)
        and final metrics, written to the run ``<log_dir>/<run_name>`` (the current time by
        default); ``hparam_domain_discrete`` lists a parameter's possible values."""
        op = "add_hparams"
        if type(hparam_dict) is not dict or type(metric_dict) is not dict:
            raise TypeError(f"{op}: hparam_dict and metric_dict must be dicts, got "
                            f"{type(hparam_dict).__name__} and {type(metric_dict).__name__}")
        domains = hparam_domain_discrete or {}
        if not isinstance(domains, dict):
            raise TypeError(f"{op}: hparam_domain_discrete must be a dict, got "
                            f"{type(domains).__name__}")
        for k, vals in domains.items():
            if k not in hparam_dict or not isinstance(vals, list) \
                    or not all(isinstance(x, type(hparam_dict[k])) for x in vals):
                raise TypeError(f"{op}: hparam_domain_discrete[{k!r}] must be a list of values "
                                f"of the type of hparam_dict[{k!r}]")
        metrics = {str(k): _scalar(v, op, str(k)) for k, v in metric_dict.items()}
        step = _step(global_step, op)
        summaries = _hparams(hparam_dict, metrics, domains)
        name = run_name or str(time.time())
        with self._tbx_writer(logdir=os.path.join(self.log_dir, name),
                              filename_suffix=_suffix(self.filename_suffix)) as w:
            for summary in summaries:
                w.file_writer.add_summary(summary, step)
            for k, v in metrics.items():
                w.add_scalar(k, v, step)

    # --- graph ----------------------------------------------------------------------------
    def add_graph(self, model, input_to_model: Any = None, verbose: bool = False,
                  use_strict_trace: bool = True) -> None:
        """The graph of ``model(*input_to_model)``: one forward pass is recorded and every
        primitive it applied becomes a graph node, grouped by the module that ran it, with
        parameters named as in ``named_parameters()`` (``use_strict_trace`` is accepted for
        PyTorch's signature; there is no tracer to configure)."""
        gd = _graph_def(model, input_to_model)
        if verbose:
            for n in gd.node:
                print(f"{n.name} = {n.op}({', '.join(n.input)})")
        from tensorboardX.proto import event_pb2
        self.file_writer.add_event(event_pb2.Event(graph_def=gd.SerializeToString()))

    # --- lifetime -------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the queued events to disk."""
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        """Flush and close the event files (a later ``add_*`` opens a new one)."""
        if self._w is not None:
            self._w.close()
        self._w = None

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SummaryWriter(log_dir={self.log_dir!r})"


def _hparams(hparam_dict: dict, metrics: dict, domains: dict) -> list:
    """The experiment, session start and session end summaries of one HParams trial, as
    PyTorch writes them."""
    from google.protobuf import struct_pb2
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo
    from tensorboardX.proto.api_pb2 import MetricName, Status
    from tensorboardX.proto.plugin_hparams_pb2 import (HParamsPluginData, SessionEndInfo,
                                                       SessionStartInfo)
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    ssi, infos = SessionStartInfo(), []
    for k, v in hparam_dict.items():
        if v is None:
            continue
        if isinstance(v, Tensor) or B.is_array(v) or isinstance(v, np.generic):
            v = _scalar(v, "add_hparams", str(k))
        if isinstance(v, int | float):  # a bool too: PyTorch stores it as a number
            ssi.hparams[k].number_value = v
            kind, field = "DATA_TYPE_FLOAT64", "number_value"
        elif isinstance(v, str):
            ssi.hparams[k].string_value = v
            kind, field = "DATA_TYPE_STRING", "string_value"
        else:
            raise ValueError(f"add_hparams: hyperparameter {k!r} is {type(v).__name__}; "
                             "expected an int, float, str, bool, None or a one-element tensor")
        domain = (struct_pb2.ListValue(values=[struct_pb2.Value(**{field: d})
                                               for d in domains[k]])
                  if k in domains else None)
        infos.append(HParamInfo(name=k, type=DataType.Value(kind), domain_discrete=domain))
    exp = Experiment(hparam_infos=infos,
                     metric_infos=[MetricInfo(name=MetricName(tag=k)) for k in metrics])
    sei = SessionEndInfo(status=Status.Value("STATUS_SUCCESS"))
    out = []
    for tag, data in (("_hparams_/experiment", HParamsPluginData(experiment=exp)),
                      ("_hparams_/session_start_info", HParamsPluginData(session_start_info=ssi)),
                      ("_hparams_/session_end_info", HParamsPluginData(session_end_info=sei))):
        data.version = 0
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=data.SerializeToString()))
        out.append(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
    return out


# --- the recorded graph as a GraphDef ---------------------------------------------------------
def _key(t: Tensor):
    return t.node if t.node is not None else t


def _tensors(x) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, list | tuple):
        return [t for v in x for t in _tensors(v)]
    return []


def _graph_def(model, inputs):
    """Run ``model`` once with recording on and turn the recorded Nodes into a GraphDef."""
    from tensorboardX.proto.attr_value_pb2 import AttrValue
    from tensorboardX.proto.graph_pb2 import GraphDef
    from tensorboardX.proto.node_def_pb2 import NodeDef
    from tensorboardX.proto.versions_pb2 import VersionDef

    if not callable(getattr(model, "named_modules", None)):
        raise TypeError(f"add_graph: expected a Module, got {type(model).__name__}")
    if inputs is None:
        raise ValueError("add_graph: input_to_model is needed to run the model once")
    args = inputs if isinstance(inputs, tuple | list) else (inputs,)
    feed = []
    for i, a in enumerate(args):  # inputs as leaves that require grad: every op is recorded
        if isinstance(a, Tensor) or B.is_array(a):
            t = a.detach() if isinstance(a, Tensor) else Tensor._of(a)
            if B.is_inexact(t.dtype):
                t = Tensor._of(t._data).requires_grad_()
            feed.append(t)
        else:
            raise TypeError(f"add_graph: input_to_model[{i}] is {type(a).__name__}; expected "
                            "tensors or arrays")
    scope: dict = {}  # Node -> the dotted name of the innermost module that applied it
    handles, entries = [], {}
    for name, m in model.named_modules():
        def pre(mod, a, name=name):
            entries.setdefault(id(mod), []).append({_key(t) for t in _tensors(a)})

        def post(mod, a, out, name=name):
            stop = entries[id(mod)].pop()
            _mark(out, stop, name, scope)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    params = dict(model.named_parameters())
    frozen = [p for p in params.values() if not p.requires_grad and B.is_inexact(p.dtype)]
    try:
        for p in frozen:  # recorded as graph inputs too, for this pass only
            p.requires_grad = True
        with enable_grad():
            out = model(*feed)
    finally:
        for p in frozen:
            p.requires_grad = False
        for h in handles:
            h.remove()
    outs = _tensors(out)
    if not outs:
        raise TypeError(f"add_graph: the model returned {type(out).__name__}; expected tensors")
    pnames = {id(p): k for k, p in params.items()}
    inames = {id(t): f"input/input_{i}" for i, t in enumerate(feed)}
    names: dict = {}
    shapes: dict = {_key(t): tuple(t.shape) for t in outs}
    order, seen, queue = [], set(), deque(_key(t) for t in outs)
    seen.update(queue)
    while queue:
        v = queue.popleft()
        order.append(v)
        if type(v) is not Node:
            continue
        for i, p in enumerate(v.parents):
            if p is None:
                continue
            shapes.setdefault(p, tuple(v.shapes[i]))
            if p not in seen:
                seen.add(p)
                queue.append(p)
    counts: dict = {}
    for v in reversed(order):
        if type(v) is Node:
            sc = scope.get(v, "")
            k = counts[(sc, v.prim.name)] = counts.get((sc, v.prim.name), -1) + 1
            base = f"{v.prim.name}_{k}"
            names[v] = f"{sc.replace('.', '/')}/{base}" if sc else base
        elif id(v) in inames:
            names[v] = inames[id(v)]
        else:
            names[v] = pnames.get(id(v), f"leaf_{len(names)}").replace(".", "/")

    def node(v, op, inputs=(), attr=None):
        a = {"_output_shapes": _shape_attr(shapes.get(v, ()))}
        if attr:
            a["attr"] = AttrValue(s=attr.encode())
        dev = v.device if isinstance(v, Tensor) else None
        return NodeDef(name=names[v], op=op, input=list(inputs), attr=a,
                       device="" if dev is None else _device(dev))

    nodes = []
    for v in reversed(order):
        if type(v) is Node:
            ins = [names[p] for p in v.parents if p is not None]
            params_str = ", ".join(f"{k}={r[:40]}" for k, x in v.params.items()
                                   if (r := repr(x)) and x is not None)
            nodes.append(node(v, v.prim.name, ins, params_str))
        else:
            nodes.append(node(v, "IO Node" if id(v) in inames else "Parameter"))
    for i, t in enumerate(outs):
        nodes.append(NodeDef(name=f"output/output_{i}", op="IO Node",
                             input=[names[_key(t)]],
                             attr={"_output_shapes": _shape_attr(tuple(t.shape))}))
    return GraphDef(node=nodes, versions=VersionDef(producer=22))


def _mark(out, stop: set, name: str, scope: dict) -> None:
    """Give the Nodes between a module call's inputs and its outputs, not yet claimed by an
    inner module, that module's name (inner modules finish first, so they claim theirs)."""
    queue = deque(t.node for t in _tensors(out) if t.node is not None)
    seen = set(queue)
    while queue:
        v = queue.popleft()
        if v in stop:
            continue
        scope.setdefault(v, name)
        for p in v.parents:
            if type(p) is Node and p not in seen and p not in stop:
                seen.add(p)
                queue.append(p)


def _shape_attr(shape: tuple):
    from tensorboardX.proto.attr_value_pb2 import AttrValue
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

    s = TensorShapeProto(dim=[TensorShapeProto.Dim(size=int(d)) for d in shape])
    return AttrValue(list=AttrValue.ListValue(shape=[s]))


def _device(dev: str) -> str:
    return "/device:CPU:0" if dev == "cpu" else f"/device:GPU:{dev.partition(':')[2] or 0}"


__all__ = ["SummaryWriter"]
