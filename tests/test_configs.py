"""Every configs/*.cfg parses with bin/train's flags, and its --dry_run builds the model and
prints the plan without data (the CIFAR / ImageNet sets are not on this machine)."""

import dataclasses
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bin", "train")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))
PAPER_CONFIGS = {
    "cifar10_vgg16.cfg": ("cifar10", "vgg16", "[32, 32, 3]", "10"),
    "cifar10_resnet18.cfg": ("cifar10", "resnet18", "[32, 32, 3]", "10"),
    "cifar100_vgg16.cfg": ("cifar100", "vgg16", "[32, 32, 3]", "100"),
    "imagenet_resnet34.cfg": ("imagenet2012", "resnet34", "[224, 224, 3]", "1000"),
    "imagenet_vgg16.cfg": ("imagenet2012", "vgg16", "[224, 224, 3]", "1000"),
}


def plan_lines(stdout: str) -> dict[str, str]:
    rows = [line.split(None, 1) for line in stdout.splitlines()[1:] if line.startswith("  ")]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """All dry runs at once (two at a time would be no faster than this on 2 cores)."""
    out = tmp_path_factory.mktemp("dry")
    processes = {}
    for path in CONFIGS:
        run_dir = out / os.path.basename(path)
        processes[os.path.basename(path)] = (
            subprocess.Popen(
                [sys.executable, TRAIN, f"--flagfile={path}", "--dry_run", f"--run_dir={run_dir}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            run_dir,
        )
    results = {}
    for name, (process, run_dir) in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        results[name] = (process.returncode, stdout, stderr, run_dir)
    return results


def test_the_paper_configs_exist():
    names = {os.path.basename(path) for path in CONFIGS}
    assert set(PAPER_CONFIGS) <= names


@pytest.mark.parametrize("name", [os.path.basename(path) for path in CONFIGS])
def test_dry_run_of_every_config(dry_runs, name):
    code, stdout, stderr, run_dir = dry_runs[name]
    assert code == 0, stderr[-2000:]
    assert stdout.startswith("dry run: flags valid, model built, no data read")
    plan = plan_lines(stdout)
    assert int(plan["parameters"]) > 0 and int(plan["steps_per_epoch"]) >= 1
    assert not run_dir.exists()  # a dry run writes nothing
    if name in PAPER_CONFIGS:
        dataset, model, shape, classes = PAPER_CONFIGS[name]
        assert (plan["dataset"], plan["model"]) == (dataset, model)
        assert (plan["input_shape"], plan["num_classes"]) == (shape, classes)
        assert plan["activation_bits"] == "2"
        assert plan["strategy"] == "mirrored"


def test_dry_run_reports_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("--dataset=cifar10\n--model=resnet18\n--dropout=0.5\n")
    result = subprocess.run(
        [sys.executable, TRAIN, f"--flagfile={bad}", "--dry_run", f"--run_dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "train: error: model 'resnet18' has no dropout setting; leave --dropout unset."
    )


# ----------------------------------------------------------------------------- generated flags


def test_every_config_field_is_a_flag_with_its_default_help_and_choices():
    from absl import flags

    from qffs_tf.tools.train import config_from_flags, define_flags
    from qffs_tf.training.config import TrainConfig, field_specs

    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["train"])
    specs = field_specs()
    assert [spec.name for spec in specs] == [f.name for f in dataclasses.fields(TrainConfig)]
    for spec in specs:
        flag = flag_values[spec.flag]
        assert flag.default == spec.default, spec.name
        assert flag.help.endswith(spec.help), spec.name  # enums prefix "<a|b>: "
        if spec.choices:
            assert tuple(flag.parser.enum_values) == spec.choices, spec.name
    assert config_from_flags(flag_values) == TrainConfig()  # the defaults are the dataclass's
    test_hooks = {spec.name: spec.flag for spec in specs if spec.flag != spec.name}
    assert test_hooks == {
        "stop_after_steps": "test_stop_after_steps",
        "weights_dump": "test_weights_dump",
        "kill_at": "test_kill_at",
    }


@pytest.mark.parametrize(
    "args, field, value",
    [
        (["--weight_bits=4"], "weight_bits", 4),
        (["--weight_bits=none"], "weight_bits", None),
        (["--dropout=0.5"], "dropout", 0.5),
        (["--train_limit=none"], "train_limit", None),
        (["--devices=GPU:0,GPU:1", "--strategy=mirrored"], "devices", "GPU:0,GPU:1"),
        (["--noaugment"], "augment", False),
        (["--test_kill_at=step:3"], "kill_at", "step:3"),
    ],
)
def test_flags_parse_into_the_config(args, field, value):
    from absl import flags

    from qffs_tf.tools.train import config_from_flags, define_flags

    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["train", *args])
    assert getattr(config_from_flags(flag_values), field) == value


def test_step_init_choices_are_the_quantizers():
    from qffs_tf.quantization import INIT_METHODS
    from qffs_tf.training.config import STEP_INITS

    assert STEP_INITS == INIT_METHODS


def test_console_entry_point_runs_the_same_tool(tmp_path):
    """`qffs_tf.tools.train.main(argv)` (the qffs-train console script) is what bin/train runs."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.argv[0] = 'qffs-train'\n"
        "from qffs_tf.tools.train import main\n"
        "main(['--activation_bits=0'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "qffs-train: error: flag --activation_bits=0: 0 is not an integer in the range [1, 8] "
        "(see --helpfull)"
    )


def test_bad_numbers_and_a_file_as_run_dir_are_one_line_errors(tmp_path):
    """Issue 11.4 for bin/train: no OverflowError for inf, no FileExistsError for a file."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--width=inf"], "train: error: --width must be a finite number > 0, got inf."),
        (["--lr_qat=nan"], "train: error: --lr_qat must be a finite number > 0, got nan."),
        (
            [f"--run_dir={a_file}"],
            f"train: error: run folder {a_file} is a file, not a folder: pass another --run_dir.",
        ),
    ]
    for args, expected in cases:
        result = subprocess.run(
            [sys.executable, TRAIN, f"--run_dir={tmp_path / 'run'}", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == expected
    assert not (tmp_path / "run").exists()
