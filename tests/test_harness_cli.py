"""splitrl-cloud / splitrl-edge argument errors come before the model load, as one line that names the
flag or file and what to do (exit 2). The model loader is replaced by one that fails the test, so
every case here proves the error came first."""

from __future__ import annotations

import socket

import pytest

from splitrl.runtime import cli_checks, cloud_cli, edge_cli

TOKEN = "0123456789abcdef0123"


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    import splitrl.lm.model as model

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(model, "load_causal_lm", refuse)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "empty").write_text("  \n")
    (tmp_path / "short").write_text("abc123")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 50)
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(plain, tmp_path / "plain.onnx")                 # valid ONNX, not from splitrl-export
    data = (tmp_path / "plain.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    return tmp_path


def one_line_error(main, argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cloud_needs_auth_on_or_explicitly_off(capsys):
    err = one_line_error(cloud_cli.main, ["--port", "0"], capsys)
    assert "--token-file" in err and "--insecure-no-auth" in err


@pytest.mark.parametrize("name, words", [
    ("missing", ["no such file", "secrets.token_hex"]),
    ("empty", ["0 bytes", "at least 16"]),
    ("short", ["6 bytes", "at least 16"]),
])
def test_cloud_token_file_errors_name_the_file(files, capsys, name, words):
    err = one_line_error(cloud_cli.main, ["--port", "0", "--token-file", str(files / name)], capsys)
    assert f"--token-file {files / name}" in err and all(w in err for w in words)


def test_cloud_port_in_use_and_bad_model_path(files, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        err = one_line_error(cloud_cli.main, ["--port", str(port), "--insecure-no-auth"], capsys)
        assert f"--port {port}" in err and "already in use" in err
        err = one_line_error(cloud_cli.main, ["--port", "0", "--health-port", str(port), "--insecure-no-auth"], capsys)
        assert f"--health-port {port}" in err
    err = one_line_error(cloud_cli.main, ["--port", "0", "--insecure-no-auth", "--model", str(files / "nope")], capsys)
    assert f"--model {files / 'nope'}" in err and "no such file" in err
    err = one_line_error(cloud_cli.main, ["--port", "0", "--insecure-no-auth", "--max-new", "0"], capsys)
    assert "--max-new 0" in err


@pytest.mark.parametrize("address, words", [
    ("localhost", ["write host:port", "127.0.0.1:7341"]),
    ("localhost:", ["write host:port"]),
    ("localhost:99999", ["1..65535"]),
    ("::1:7341", ["brackets", "[::1]:7341"]),
])
def test_edge_bad_cloud_address(capsys, address, words):
    err = one_line_error(edge_cli.main, ["--cloud", address, "--plan", "1,fp16,000000"], capsys)
    assert f"--cloud {address!r}" in err and all(w in err for w in words)


def test_edge_accepts_bracketed_ipv6():
    assert cli_checks.parse_address("[::1]:7341") == ("::1", 7341)
    assert cli_checks.parse_address("cloud.example:80") == ("cloud.example", 80)


@pytest.mark.parametrize("name, words", [
    ("missing.onnx", ["no such file", "splitrl-export"]),
    ("junk.onnx", ["not a loadable ONNX model", "re-export"]),
    ("truncated.onnx", ["not a loadable ONNX model", "re-export"]),
    ("plain.onnx", ["metadata_format", "re-export", "splitrl-export"]),
])
def test_edge_policy_errors_name_the_file(files, capsys, name, words):
    err = one_line_error(edge_cli.main, ["--policy", str(files / name)], capsys)
    assert err.startswith(f"splitrl-edge: --policy {files / name}") and all(w in err for w in words), err


def test_edge_token_plan_and_missing_choice(files, capsys):
    err = one_line_error(edge_cli.main, ["--plan", "1,fp16,000000", "--token-file", str(files / "missing")], capsys)
    assert f"--token-file {files / 'missing'}" in err and "no such file" in err
    err = one_line_error(edge_cli.main, ["--plan", "1,fp8,000000"], capsys)
    assert "--plan '1,fp8,000000'" in err and "fp16" in err
    err = one_line_error(edge_cli.main, [], capsys)
    assert "--policy" in err and "--plan" in err
    err = one_line_error(edge_cli.main, ["--plan", "1,fp16,000000", "--max-new", "0"], capsys)
    assert "--max-new 0" in err
