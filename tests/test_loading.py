"""Keras-native loading: after `import qffs_tf`, plain tf_keras.models.load_model opens every
saved kind (.keras, .h5, SavedModel) of QAT models and SNNs in a fresh process; custom_objects()
is complete; unreadable files raise ModelLoadError."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import qffs_tf
from qffs_tf._keras import keras
from qffs_tf.errors import InvalidTypeError, ModelLoadError, ModelNotFoundError, QFFSError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = {"keras": "{name}.keras", "h5": "{name}.h5", "savedmodel": "{name}_savedmodel"}


def tiny_qat_and_snn():
    """A 2-bit QAT CNN (fused ReLU, ReLU layer, max-pool, dense) and its SNN."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, activation="relu", name="c1")(inp)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, name="d1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    images = np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 1)).astype(np.float32)
    qat = qffs_tf.quantize_model(model, activation_bits=2, calibration_data=images)
    return qat, qffs_tf.convert(qat, timesteps=4), images


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every saved kind of both models, the input images, the reference outputs and the layer
    classes of the models as built."""
    folder = tmp_path_factory.mktemp("saved")
    qat, snn, images = tiny_qat_and_snn()
    paths = {}
    for name, model in (("qat", qat), ("snn", snn)):
        np.save(folder / f"{name}_reference.npy", model.predict(images, verbose=0))
        for kind, pattern in KINDS.items():
            path = folder / pattern.format(name=name)
            model.save(path, save_format={"keras": None, "h5": "h5", "savedmodel": "tf"}[kind])
            paths[f"{name}.{kind}"] = str(path)
    np.save(folder / "images.npy", images)
    classes = {"qat": layer_classes(qat), "snn": layer_classes(snn)}
    return folder, paths, classes


# Run in a fresh interpreter: only `import qffs_tf` may register anything. Outputs must equal
# the in-process model's bit for bit (same weights, same ops, same CPU kernels).
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import qffs_tf
    import tf_keras
    folder, paths = sys.argv[1], json.loads(sys.argv[2])
    images = np.load(f"{folder}/images.npy")

    def check(load):
        out = {}
        for key, path in paths.items():
            model = load(path)
            reference = np.load(f"{folder}/{key.split('.')[0]}_reference.npy")
            out[key] = {
                "equal": bool(np.array_equal(model.predict(images, verbose=0), reference)),
                "model_class": type(model).__name__,
                "classes": [f"{type(layer).__module__}.{type(layer).__qualname__}"
                            for layer in model.layers],
            }
        return out

    results = {"keras": check(lambda p: tf_keras.models.load_model(p, compile=False)),
               "qffs_tf": check(qffs_tf.load_model)}
    objects = qffs_tf.custom_objects()
    tf_keras.utils.get_custom_objects().clear()  # only the explicit dictionary is left
    results["custom_objects"] = check(
        lambda p: tf_keras.models.load_model(p, compile=False, custom_objects=objects))
    print("RESULTS " + json.dumps(results))
    """
)


def layer_classes(model) -> list[str]:
    return [f"{type(layer).__module__}.{type(layer).__qualname__}" for layer in model.layers]


def test_every_saved_kind_loads_in_a_fresh_process(saved):
    folder, paths, built = saved
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    assert set(results) == {"keras", "qffs_tf", "custom_objects"}
    wrapper = "tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper."
    fixed = "qffs_tf.serialization.QuantizeWrapperV2"
    for how, by_path in results.items():
        assert set(by_path) == set(paths), how
        for key, result in by_path.items():
            assert result["equal"], (how, key)
            # The real classes, not SavedModel's generic revived stand-ins; a QAT model's
            # wrappers come back as the subclass that reloads its variables in order.
            expected = [
                fixed if name == wrapper + "QuantizeWrapperV2" else name
                for name in built[key.split(".")[0]]
            ]
            assert result["classes"] == expected, (how, key)
            if key.startswith("snn."):  # the model class too, whose call runs the Program
                assert result["model_class"] == "SpikingNetwork", (how, key)
    assert fixed in results["keras"]["qat.h5"]["classes"]
    assert any(name.startswith("qffs_tf.snn.") for name in built["snn"])


def test_custom_objects_holds_every_registered_class():
    from qffs_tf import quantization, snn

    objects = qffs_tf.custom_objects()
    registered = {
        name: obj
        for name, obj in keras.utils.get_custom_objects().items()
        if name.startswith("qffs_tf>")
    }
    listed = {**quantization.custom_objects(), **snn.custom_objects()}
    assert "qffs_tf>QuantReLU" in registered and len(listed) >= 8
    for name, obj in registered.items():
        assert objects[name] is obj
        assert objects[name.split(">", 1)[1]] is obj  # the bare name, used by .h5 and cells
    for name, obj in listed.items():
        assert objects[name] is obj
        assert objects["qffs_tf>" + name.split(">", 1)[-1]] is obj
    for name in ("QuantizeAwareActivation", "NoOpActivation", "QuantizeLayer"):
        assert name in objects  # tfmot's classes: no quantize_scope needed
    assert objects["QuantizeWrapperV2"] is qffs_tf.serialization.QuantizeWrapperV2


def test_import_registers_globally():
    global_objects = keras.utils.get_custom_objects()
    assert global_objects["QuantizeWrapperV2"] is qffs_tf.serialization.QuantizeWrapperV2
    assert global_objects["QuantReLU"] is qffs_tf.QuantReLU
    for name, cls in qffs_tf.snn.custom_objects().items():
        # Keras's registered name. Bare names are added at import for the built-in classes; a
        # neuron plug-in registered later (another test defines one) has the registered name.
        assert global_objects["qffs_tf>" + name.split(">", 1)[-1]] is cls
        if cls.__module__.startswith("qffs_tf."):
            assert global_objects[cls.__name__] is cls


def test_reloaded_qat_model_saves_and_loads_again(saved, tmp_path):
    """The wrapper subclass serializes under tfmot's name, so a loaded model round-trips."""
    folder, paths, _ = saved
    model = qffs_tf.load_model(paths["qat.keras"])
    model.save(tmp_path / "again.keras")
    with zipfile.ZipFile(tmp_path / "again.keras") as archive:
        config = json.loads(archive.read("config.json"))
    names = {layer["class_name"] for layer in config["config"]["layers"]}
    assert "QuantizeWrapperV2" in names
    again = qffs_tf.load_model(tmp_path / "again.keras")
    images = np.load(folder / "images.npy")
    np.testing.assert_array_equal(
        again.predict(images, verbose=0), np.load(folder / "qat_reference.npy")
    )


def _truncate(source, target, keep):
    data = open(source, "rb").read()
    with open(target, "wb") as f:
        f.write(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda paths, d: str(d / "missing.keras"), "No saved model at"),
        (lambda paths, d: _truncate(paths["snn.keras"], d / "cut.keras", 0.5), "not a valid"),
        (lambda paths, d: (d / "text.keras").write_text("not a model"), "not a valid"),
        (lambda paths, d: _truncate(paths["qat.h5"], d / "cut.h5", 0.5), "Cannot load"),
        (lambda paths, d: (d / "text.h5").write_bytes(os.urandom(2048)), "Cannot load"),
        (lambda paths, d: (d / "folder").mkdir(), "not a SavedModel"),
        (
            lambda paths, d: zipfile.ZipFile(d / "empty.keras", "w").writestr("x.txt", "x"),
            "Cannot load",
        ),
    ],
    ids=["missing", "truncated-keras", "text-keras", "truncated-h5", "random-h5", "folder", "zip"],
)
def test_unreadable_models_raise_model_load_error(saved, tmp_path, make, expected):
    _, paths, _ = saved
    before = set(os.listdir(tmp_path))
    made = make(paths, tmp_path)
    created = set(os.listdir(tmp_path)) - before
    path = made if isinstance(made, str) else str(tmp_path / created.pop())
    with pytest.raises(ModelLoadError, match=expected) as caught:
        qffs_tf.load_model(path)
    error = caught.value
    assert isinstance(error, QFFSError) and isinstance(error, OSError)
    assert path in str(error)
    assert "\n" not in str(error)
    if expected == "No saved model at":
        assert isinstance(error, ModelNotFoundError) and isinstance(error, FileNotFoundError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file_is_a_model_load_error(saved, tmp_path):
    _, paths, _ = saved
    path = tmp_path / "locked.keras"
    path.write_bytes(open(paths["snn.keras"], "rb").read())
    path.chmod(0)
    with pytest.raises(ModelLoadError, match="permission denied"):
        qffs_tf.load_model(path)


def test_path_of_the_wrong_type_is_an_invalid_type_error():
    with pytest.raises(InvalidTypeError, match="path must be a str or os.PathLike") as caught:
        qffs_tf.load_model(None)
    assert isinstance(caught.value, TypeError)
