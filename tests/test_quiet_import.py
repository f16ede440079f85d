"""TensorFlow's start-up log lines are dropped at the log level asked for, nothing else is."""

import os

import pytest

from scmm.quiet_import import filtered_stderr, keeps, min_log_level

# What TensorFlow 2.21 printed on every start with TF_CPP_MIN_LOG_LEVEL=2 (twice: two libraries).
BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (
    b"I0000 00:00:1796171823.029026   23143 port.cc:153] oneDNN custom operations are on. You"
    b" may see slightly different numerical results due to floating-point round-off errors.\n"
)
WARNING = (
    b"W0000 00:00:1796171823.029026   23143 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n"
)
ERROR = (
    b"E1202 00:49:29.123456   23143 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN ERROR\n"
)
FATAL = b"F1202 00:49:29.123456   23143 cpu_feature_guard.cc:97] compiled to use AVX\n"


@pytest.mark.parametrize(
    "level, kept",
    [
        (0, [BANNER, ONEDNN, WARNING, ERROR, FATAL]),
        (1, [WARNING, ERROR, FATAL]),
        (2, [ERROR, FATAL]),
        (3, [FATAL]),
    ],
)
def test_absl_lines_below_the_level_are_dropped(level: int, kept: list[bytes]) -> None:
    lines = [BANNER, ONEDNN, WARNING, ERROR, FATAL]
    assert [line for line in lines if keeps(line, level)] == kept


@pytest.mark.parametrize(
    "line",
    [
        b"error: data.path='x' is not a folder\n",
        b"warning: WandB (online) failed\n",
        b"/x/y.py:3: DeprecationWarning: old\n",
        b"Traceback (most recent call last):\n",
        b"I think so\n",
        b"\n",
    ],
)
def test_other_lines_always_get_through(line: bytes) -> None:
    assert keeps(line, 3)


def test_min_log_level_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    assert min_log_level() == 2
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "lots")
    assert min_log_level() == 0
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert min_log_level() == 0


def test_filtered_stderr_filters_file_descriptor_2_and_restores_it(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # C++ libraries write to the descriptor itself (as does sys.stderr outside pytest's capture).
    with filtered_stderr(lambda line: keeps(line, 2)):
        os.write(2, BANNER + ONEDNN + ERROR)
        os.write(2, b"python says hello\n")
        os.write(2, b"no newline at the end")
    os.write(2, ONEDNN)  # after the block: unfiltered again
    err = capfd.readouterr().err
    assert err == ERROR.decode() + "python says hello\nno newline at the end" + ONEDNN.decode()
