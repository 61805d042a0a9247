"""The command line: every command has help, and every mistake gets advice and exit code 2."""

from __future__ import annotations

import pytest

from streaming.cli import EXIT_USAGE, main
from unit_tests.conftest import MODEL_NAME


@pytest.mark.parametrize("command", ["demo", "broker", "stream", "publish", "findings", "report", "train",
                                     "evaluate", "reconcile", "dead-letters"])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: medimg" in capsys.readouterr().out


def test_no_command_prints_the_commands(capsys):
    assert main([]) == EXIT_USAGE
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "stream", "publish", "findings", "train"))


def error_of(capsys, *argv) -> str:
    assert main(list(argv)) == EXIT_USAGE
    return capsys.readouterr().err


def test_stream_without_a_registry_says_how_to_get_one(capsys):
    assert "medimg train" in error_of(capsys, "stream")


def test_stream_with_an_empty_registry_says_how_to_train(capsys, tmp_path):
    message = error_of(capsys, "stream", "--model_registry", str(tmp_path),
                       "--allowed_roots", str(tmp_path))
    assert "no production version" in message and "medimg train" in message


def test_stream_needs_explicit_allowed_roots(capsys, small_registry):
    """No implicit default: the temporary folder is writable by every local user."""
    message = error_of(capsys, "stream", "--model_registry", small_registry.root,
                       "--model_name", MODEL_NAME)
    assert "--allowed_roots is required" in message and "/mnt/pacs-export" in message


def test_stream_batch_bounds_are_checked(capsys, small_registry):
    message = error_of(capsys, "stream", "--model_registry", small_registry.root,
                       "--model_name", MODEL_NAME, "--min_batch_size", "10",
                       "--max_batch_size", "2")
    assert "--min_batch_size (10) is larger than --max_batch_size (2)" in message


def test_stream_security_settings_are_checked(capsys, small_registry):
    message = error_of(capsys, "stream", "--model_registry", small_registry.root,
                       "--model_name", MODEL_NAME, "--kafka_security_protocol", "SASL_SSL")
    assert "--kafka_sasl_mechanism" in message


def test_stream_without_a_broker_names_the_address(capsys, small_registry):
    message = error_of(capsys, "stream", "--model_registry", small_registry.root,
                       "--model_name", MODEL_NAME, "--bootstrap_servers", "127.0.0.1:9",
                       "--startup_timeout_s", "1", "--allowed_roots", small_registry.root)
    assert "127.0.0.1:9" in message and "medimg broker" in message


def test_stream_rejects_bad_numbers_like_argparse(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["stream", "--max_batch_size", "many"])
    assert exited.value.code == EXIT_USAGE
    assert "invalid int value" in capsys.readouterr().err


def test_publish_missing_paths_are_named(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    assert str(missing) in error_of(capsys, "publish", str(missing))


def test_publish_a_folder_without_images(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    message = error_of(capsys, "publish", str(tmp_path))
    assert "no DICOM, PNG or JPEG files" in message


def test_train_input_size_is_explained(capsys, tmp_path):
    message = error_of(capsys, "train", "--data", str(tmp_path / "x.npz"), "--model_registry",
                       str(tmp_path / "r"), "--input_size", "big")
    assert "HEIGHTxWIDTH" in message


def test_train_missing_data_is_named(capsys, tmp_path):
    missing = tmp_path / "absent.npz"
    message = error_of(capsys, "train", "--data", str(missing), "--model_registry",
                       str(tmp_path / "r"))
    assert str(missing) in message


def test_dag_params_and_the_cli_read_input_sizes_alike():
    from batch_training.recipe import config_from_params  # noqa: PLC0415

    base = {"data": "d.npz", "model_registry": "r"}
    assert (config_from_params({**base, "input_size": "28"}).height,
            config_from_params({**base, "input_size": "28"}).width) == (28, 28)
    config = config_from_params({**base, "input_size": "224X192"})
    assert (config.height, config.width) == (224, 192)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        config_from_params({**base, "input_size": "big"})
