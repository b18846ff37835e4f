"""`export_tflite`: the QANN and the SNN as TFLite (LiteRT) flatbuffers with builtin ops only.

Four kinds of file:
- "qann_float": the quantized ANN in float32, built from the converter's graph (BatchNorm
  folded, Dropout gone) with the QFFS quantizer as constant floor/clip/mul ops. Dynamic batch.
- "qann_int8": full-integer int8 (int8 input and output by default), calibrated on training
  images. Each QFFS activation becomes a ReLU clipped at L*s on the calibrated int8 grid (an
  approximation of the b-bit rounding: see `_quantizer_int8`). Kernels come from the IR, i.e.
  tfmot's fake-quantized int8 kernels when the model was trained with weight_bits=8.
- "snn_full": the SNN over a fixed window of T steps, unrolled: image in, logits after T out.
- "snn_step": the SNN as a streaming model with its state in resource variables. Two ways to
  run it, with the same numbers: `start(image)` (step 0 from the initial state) then
  `advance()` for each further step, which never recomputes the layers on the image (the
  fast way); or `reset()` then `step(image)` at every step, for a caller that feeds the
  image every time (the image's layers then run at every step, masked after step 0). Each
  returns the logits so far, the spikes in that step and the step count. Where neuron
  layers have quiet bounds (`Program.quiet_from`: QFFS and plain IF neurons fed once by the
  image spike only in steps 0..L - 1, the layers behind them fall quiet L - 1 steps later
  each), `start` also returns `quiet_from`, those inside the exported window (the first
  always; at most `MAX_QUIET_SIGNATURES`), and from the k-th on `advance_quiet()` (k = 1),
  `advance_quiet_2()`, ... do what `advance()` does without the layers quiet by then and
  what reads only them (the same numbers: they would add exact zeros). `snn_full` leaves
  every neuron layer out from its own bound on (`Program.quiet_at`).

The SNN kinds can also be written with int8 weights (`int8_weights=True`: the converter's
dynamic-range quantization, float activations and state). That is faster on XNNPACK but an
approximation: the weights are rounded to 8 bits per channel and the kernels quantize each
layer's input on the fly, so currents move by a fraction of a percent and spikes near a
threshold can change; parity reports it as such.

The tfmot QAT model itself is never converted: its quantizer initialises lazily through a
tf.cond with variable assigns, which is training machinery, not inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from qffs_tf._keras import keras, tf
from qffs_tf.conversion.qann import folded_qann
from qffs_tf.errors import ConversionError, ExportError, QFFSError
from qffs_tf.export.runtime import quiet_signature_name
from qffs_tf.io_utils import atomic_path
from qffs_tf.snn.layers import ToTemporal
from qffs_tf.snn.network import program_of
from qffs_tf.snn.program import Program
from qffs_tf.snn.timesteps import check_timesteps, timesteps_of

__all__ = ["KINDS", "ExportResult", "export_tflite", "operator_names", "check_builtin_only"]

KINDS = ("qann_float", "qann_int8", "snn_full", "snn_step")
DEFAULT_TIMESTEPS = 8
STREAMING_SIGNATURES = ("reset", "step", "start", "advance")
# At most this many `advance_quiet*` signatures: each is a copy of the step's operators (the
# weights are shared), and bounds come every L - 1 steps, so a deep network at a long window
# would have many, most past any step a caller reaches.
MAX_QUIET_SIGNATURES = 8
MAX_CALIBRATION_SAMPLES = 512


@dataclasses.dataclass
class ExportResult:
    """What was written: the file, its size, its operators and its interface."""

    kind: str
    path: str
    bytes: int
    operators: list[str]
    input_dtype: str
    weights: str  # "float32", or "int8" (snn kinds with int8_weights=True, qann_int8)
    batch_size: int | None  # None: any batch (resize the input tensor before allocating)
    timesteps: int | None  # snn_full: steps in the window; None otherwise
    signatures: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the programs


def _is_snn(model: keras.Model) -> bool:
    return any(isinstance(layer, ToTemporal) for layer in model.layers)


def _qann_function(model: keras.Model, activation: str):
    """The folded QANN (converter's graph, BatchNorm folded, constant steps) as a function."""
    if _is_snn(model):
        raise ExportError(
            "The QANN kinds (qann_float, qann_int8) need the QAT model (qat_model.keras), "
            "not the converted SNN."
        )
    try:
        qann = folded_qann(model, activation)
    except ConversionError as error:
        raise ExportError(f"Cannot export this model: {error}") from None
    shape = tuple(int(d) for d in qann.input_shape[1:])

    @tf.function(
        input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="image")], autograph=False
    )
    def function(image):
        return {"logits": qann(image, training=False)}

    return function, shape, qann


def _spike_total(program: Program, values: dict) -> tf.Tensor:
    """Spikes (of both signs) per sample in one step, over every neuron layer."""
    total = None
    for layer in program.neuron_layers:
        out = values[layer.name]
        if out is None:  # known quiet at this step
            continue
        fired = tf.reduce_sum(
            tf.cast(tf.not_equal(out, 0.0), tf.int32), list(range(1, out.shape.rank))
        )
        total = fired if total is None else total + fired
    return total


def _constants(state: dict) -> dict:
    """A program state (layer name -> list of values) as constants of the exported graph."""
    return {name: [tf.constant(np.asarray(v)) for v in values] for name, values in state.items()}


def _snn_full_function(snn: keras.Model, timesteps: int):
    """Image in, readout after `timesteps` steps out: the program's step, unrolled."""
    program = program_of(snn)
    shape = program.input_shape
    # Batch-1 constants that broadcast against the first step's inputs: no shape ops in TFLite.
    initial = _constants(program.initial_state(1))

    @tf.function(
        input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="image")], autograph=False
    )
    def snn_full(image):
        state = dict(initial)
        values = None
        for t in range(timesteps):
            quiet = program.quiet_at(t)  # neuron layers past their quiet bound: not computed
            values, state = program.step(image, state, t == 0, arithmetic=True, quiet=quiet)
        return {"logits": values[program.readout.name]}

    return snn_full


def _quiet_signature_bounds(quiet_from: dict[str, int], window: int) -> list[int]:
    """The steps from which the streaming file's `advance_quiet*` signatures run: the first
    quiet bound always, the later ones inside the window (a step past it is rarely run),
    at most `MAX_QUIET_SIGNATURES`."""
    bounds = sorted(set(quiet_from.values()))
    return [b for i, b in enumerate(bounds) if i == 0 or b < window][:MAX_QUIET_SIGNATURES]


class _Untracked:
    """Holds a value out of sight of tf.Module's attribute tracking."""

    def __init__(self, value):
        self.value = value


class _StreamingSNN(tf.Module):
    """The program's state in variables, with the streaming functions to export (see the module
    docstring: `start` / `advance`, `reset` / `step`)."""

    def __init__(self, snn: keras.Model, batch_size: int, window: int):
        super().__init__(name="snn_step")
        self._program = _Untracked(program_of(snn))  # the weights are tracked, not the layers
        self.weights = list(snn.weights)
        self.shape = self._program.value.input_shape
        self.initial = {
            name: [np.asarray(value) for value in values]
            for name, values in self._program.value.initial_state(batch_size).items()
        }
        self.state = {
            name: [
                tf.Variable(value, trainable=False, name=f"state_{name}_{i}")
                for i, value in enumerate(values)
            ]
            for name, values in self.initial.items()
        }
        self.t = tf.Variable(0, dtype=tf.int32, trainable=False, name="step_counter")
        self.batch_size = int(batch_size)
        image = tf.TensorSpec([batch_size, *self.shape], tf.float32, name="image")
        # From each bound on (`Program.quiet_from`) more neuron layers are quiet, and the
        # `advance_quiet*` signature for that bound leaves them out with what reads only them.
        program = self._program.value
        self.quiet_bounds = _quiet_signature_bounds(program.quiet_from, window)
        quiet_names = [quiet_signature_name(k + 1) for k in range(len(self.quiet_bounds))]
        self.signature_names = list(STREAMING_SIGNATURES) + quiet_names

        # The TFLite signature keys are the Python names of these functions.
        def reset():
            return self._reset_fn()

        def step(image):
            return self._step_fn(image)

        def start(image):
            return self._start_fn(image)

        def advance():
            return self._advance_fn()

        self.reset = tf.function(reset, input_signature=[], autograph=False)
        self.step = tf.function(step, input_signature=[image], autograph=False)
        self.start = tf.function(start, input_signature=[image], autograph=False)
        self.advance = tf.function(advance, input_signature=[], autograph=False)
        for name, bound in zip(quiet_names, self.quiet_bounds, strict=True):
            quiet = self._advance_from(name, bound)
            setattr(self, name, tf.function(quiet, input_signature=[], autograph=False))

    def _advance_from(self, name: str, bound: int) -> Callable:
        def advance_quiet():
            return self._advance_fn(bound)

        # TFLite takes a signature's key from its function's name.
        advance_quiet.__name__ = advance_quiet.__qualname__ = name
        return advance_quiet

    def _reset_fn(self):
        for name, variables in self.state.items():
            for variable, value in zip(variables, self.initial[name], strict=True):
                variable.assign(tf.constant(value))
        self.t.assign(0)
        return {"step": tf.identity(self.t.read_value())}

    def _step_fn(self, image):
        """Any step, the image given every time: step 0 is told apart by a mask (no control
        flow), so the static part (the layers on the image) runs, masked, at every step."""
        first = tf.cast(tf.equal(self.t, 0), tf.float32)
        return self._run(image, self._read(), first)

    def _start_fn(self, image):
        """Step 0 from the initial state: the static part runs here, once."""
        self.t.assign(0)
        outputs = self._run(image, _constants(self.initial), True)
        if self.quiet_bounds:  # tells the caller when each `advance_quiet*` may take over
            outputs["quiet_from"] = tf.constant(self.quiet_bounds, tf.int32)
        return outputs

    def _advance_fn(self, bound: int | None = None):
        """The next step without the image: the "once" coding delivers nothing after step 0,
        and the "constant" coding's value is in the state (ToTemporal keeps it). With a
        quiet `bound`, the layers quiet from it on are neither computed nor their state read
        or written."""
        quiet = frozenset() if bound is None else self._program.value.quiet_at(bound)
        outputs = self._run(None, self._read(skip=quiet), False, quiet)
        if quiet:
            # Called before its bound, the skipped layers could still have spiked: say so
            # with NaN logits rather than return wrong ones (a scalar select, ~1 us).
            early = tf.less_equal(outputs["step"], bound)
            guard = tf.where(early, tf.constant(np.nan, tf.float32), tf.constant(0.0))
            outputs["logits"] = outputs["logits"] + guard
        return outputs

    def _read(self, skip: frozenset = frozenset()) -> dict:
        """The state variables' values, but for the layers in `skip` (not read at all)."""
        return {
            name: [v.read_value() for v in variables]
            for name, variables in self.state.items()
            if name not in skip
        }

    def _run(self, image, state: dict, first, quiet: frozenset = frozenset()):
        program = self._program.value
        values, new_state = program.step(image, state, first, arithmetic=True, quiet=quiet)
        for name, values_now in new_state.items():
            before = state[name]
            for variable, value, old in zip(self.state[name], values_now, before, strict=True):
                if value is not old:  # a state passed through unchanged is not written back
                    variable.assign(value)
        step = self.t.assign_add(1)
        spikes = _spike_total(program, values)
        if spikes is None:
            spikes = tf.zeros([self.batch_size], tf.int32)
        return {
            "logits": tf.identity(values[program.readout.name]),
            "spikes": spikes,
            "step": tf.identity(step),
        }


# --------------------------------------------------------------------------- conversion


_LIKELY_CAUSE = {
    "qann_float": "an operation of the model that has no builtin TFLite kernel",
    "qann_int8": "an operation without an int8 TFLite kernel, or calibration images that do "
    "not match the model's input",
    "snn_full": "an operation of the SNN that has no builtin TFLite kernel",
    "snn_step": "the resource variables of the streaming state (needs a fixed batch size) or "
    "an operation without a builtin TFLite kernel",
}


@contextlib.contextmanager
def _converter_errors(kind: str) -> Iterator[None]:
    try:
        yield
    except QFFSError:
        raise
    except Exception as e:  # the converter raises ConverterError, ValueError, RuntimeError...
        detail = " ".join(str(e).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise ExportError(
            f"TFLite conversion of kind '{kind}' failed; likely cause: {_LIKELY_CAUSE[kind]}. "
            f"Converter message: {type(e).__name__}: {detail}"
        ) from e


def operator_names(tflite_model: bytes) -> list[str]:
    """Names of the operators a flatbuffer uses (custom ops as 'CUSTOM:<name>'), sorted."""
    from ai_edge_litert import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if key.isupper()}
    model = schema.Model.GetRootAs(tflite_model, 0)
    used = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            used.add(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            used.add(names.get(builtin, str(builtin)))
    return sorted(used)


def check_builtin_only(tflite_model: bytes, kind: str) -> list[str]:
    """The operator names; ExportError if any is a custom or Flex (SELECT_TF_OPS) op."""
    ops = operator_names(tflite_model)
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise ExportError(
            f"The '{kind}' TFLite model needs non-builtin operators {custom}; only builtin "
            "TFLite ops are allowed (no Flex / SELECT_TF_OPS)."
        )
    return ops


def _calibration_batches(data, shape: tuple[int, ...], samples: int) -> Callable[[], Iterator]:
    if data is None:
        raise ExportError(
            "kind 'qann_int8' needs representative_data: a numpy array of training images "
            f"shaped (N, {', '.join(map(str, shape))}) for post-training calibration."
        )
    images = np.asarray(data, np.float32)
    if images.ndim != len(shape) + 1 or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise ExportError(
            f"representative_data has shape {images.shape}; qann_int8 calibration needs "
            f"training images shaped (N, {', '.join(map(str, shape))}) with N >= 1."
        )
    if not np.all(np.isfinite(images)):
        raise ExportError("representative_data contains NaN or Inf values; pass finite images.")
    images = images[: max(1, int(samples))]

    def batches():
        for image in images:
            yield [image[None]]

    return batches


def _convert(kind: str, functions: list, trackable=None, configure=None) -> bytes:
    if trackable is None:  # the non-deprecated path wants an object that owns the functions
        trackable = tf.Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if configure is not None:
        configure(converter)
    return converter.convert()


def _int8_weights(converter) -> None:
    """Dynamic-range quantization: int8 weights, float activations and state."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _quiet_converter():
    """Keep TF's and absl's conversion chatter (deprecation notes, INFO lines) off the console."""
    import logging

    class _Restore(contextlib.AbstractContextManager):
        def __enter__(self):
            self.loggers = [logging.getLogger("tensorflow"), logging.getLogger("absl")]
            self.levels = [logger.level for logger in self.loggers]
            for logger in self.loggers:
                logger.setLevel(logging.ERROR)
            return self

        def __exit__(self, *exc):
            for logger, level in zip(self.loggers, self.levels, strict=True):
                logger.setLevel(level)
            return False

    return _Restore()


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ExportError(f"kind must be one of {KINDS}, got {kind!r}.")


def _check_model(model, kind: str) -> None:
    from qffs_tf._keras import check_tf_keras_model

    try:
        check_tf_keras_model(model, "model to export")
    except QFFSError as e:
        raise ExportError(f"Cannot export kind '{kind}': {e}") from e


def _snn_for(model: keras.Model, timesteps: int | None) -> keras.Model:
    if _is_snn(model):
        return model
    from qffs_tf.conversion import convert

    return convert(model, timesteps=timesteps or DEFAULT_TIMESTEPS)


def _batch_option(batch_size: int | None, default: int | None) -> int | None:
    if batch_size is None:
        return default
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ExportError(f"batch_size must be a whole number >= 1 or None, got {batch_size!r}.")
    return int(batch_size)


def _fixed_batch(function, shape: tuple[int, ...], batch_size: int | None):
    """The concrete function, at a fixed batch size when one is asked for."""
    if batch_size is None:
        return function.get_concrete_function()
    return function.get_concrete_function(
        tf.TensorSpec([batch_size, *shape], tf.float32, name="image")
    )


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    kind: str = "qann_float",
    *,
    timesteps: int | None = None,
    batch_size: int | None = None,
    representative_data: np.ndarray | None = None,
    calibration_samples: int = 256,
    int8_io: bool = True,
    int8_weights: bool = False,
) -> ExportResult:
    """Export a QAT model (QANN kinds) or an SNN (SNN kinds) to a builtin-ops-only .tflite file.

    - kind="qann_float" / "qann_int8": `model` is the QAT model. int8 needs
      `representative_data` (training images; the first `calibration_samples` are used) and
      has int8 input/output tensors unless `int8_io=False` (float in/out, int8 inside).
    - kind="snn_full": `model` is an SNN from `qffs_tf.convert` (or a QAT model, converted
      here); runs `timesteps` steps (default: the SNN's own) and returns the final logits.
    - kind="snn_step": streaming model with signatures `start(image)` and `advance()` (step
      0, then one step each; the image's layers run once), `advance_quiet()`,
      `advance_quiet_2()`, ... (the same from each step `start` returns in `quiet_from`,
      without the neuron layers quiet by then; only where they have bounds, those inside
      the window of `timesteps` steps), and `reset()` and `step(image)` (the image at every
      step).
    `int8_weights=True` (SNN kinds only) stores the weights in int8 (dynamic-range
    quantization): smaller and faster files that approximate the SNN (see the module
    docstring). `batch_size` fixes the batch dimension (default: dynamic for all kinds
    except snn_step, which holds its state in variables and defaults to 1). The file is
    written atomically; on any failure `path` is left untouched and ExportError says why.
    """
    _check_kind(kind)
    _check_model(model, kind)
    if int8_weights and not kind.startswith("snn"):
        raise ExportError(
            f"int8_weights applies to the SNN kinds (snn_full, snn_step), not '{kind}'; the "
            "QANN with int8 weights is kind 'qann_int8'."
        )
    configure_weights = _int8_weights if int8_weights else None
    started = time.perf_counter()
    if timesteps is not None:
        timesteps = check_timesteps(timesteps)
    batch = _batch_option(batch_size, 1 if kind == "snn_step" else None)
    steps = None
    signatures = ["serving_default"]
    try:
        with _converter_errors(kind):
            if kind == "qann_float":
                function, shape, _ = _qann_function(model, "quantize")
                content = _convert(kind, [_fixed_batch(function, shape, batch)])
            elif kind == "qann_int8":
                function, shape, _ = _qann_function(model, "relu_clip")
                batches = _calibration_batches(representative_data, shape, calibration_samples)

                def int8(converter):
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.representative_dataset = batches
                    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    io_type = tf.int8 if int8_io else tf.float32
                    converter.inference_input_type = io_type
                    converter.inference_output_type = io_type

                with _quiet_converter():
                    content = _convert(kind, [_fixed_batch(function, shape, batch)], None, int8)
            elif kind == "snn_full":
                snn = _snn_for(model, timesteps)
                steps = int(timesteps or timesteps_of(snn))
                function = _snn_full_function(snn, steps)
                shape = program_of(snn).input_shape
                owner = tf.Module()
                owner.weights = list(snn.weights)  # not the Keras model: saving would trace it
                content = _convert(
                    kind, [_fixed_batch(function, shape, batch)], owner, configure_weights
                )
            else:
                snn = _snn_for(model, timesteps)
                module = _StreamingSNN(snn, batch, int(timesteps or timesteps_of(snn)))
                functions = [
                    getattr(module, name).get_concrete_function() for name in module.signature_names
                ]

                def resources(converter):
                    converter.experimental_enable_resource_variables = True
                    if configure_weights is not None:
                        configure_weights(converter)

                content = _convert(kind, functions, module, resources)
                signatures = list(module.signature_names)
    except QFFSError as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"Cannot export kind '{kind}': {e}") from e
    operators = check_builtin_only(content, kind)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(content)
    return ExportResult(
        kind=kind,
        path=str(path),
        bytes=len(content),
        operators=operators,
        input_dtype="int8" if kind == "qann_int8" and int8_io else "float32",
        weights="int8" if kind == "qann_int8" or int8_weights else "float32",
        batch_size=batch,
        timesteps=steps,
        signatures=signatures,
        seconds=time.perf_counter() - started,
    )
