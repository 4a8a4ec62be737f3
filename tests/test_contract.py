"""The step contract's metadata: what an exported model says about itself, read back as written, with older or
damaged metadata refused (or defaulted) in one line that names the file."""

import base64
import json
import lzma

import pytest
from helpers import CHARS

import cli
from toolkit.files import UsageError
from toolkit.sampling.contract import StepSpec, read_reference
from toolkit.titles import Titles
from toolkit.vocab import BOS, EOS, PAD, UNK, Vocab

REFERENCE = lzma.compress(json.dumps({"train_titles": ["a b"], "val_titles": ["c"]}).encode())
SPEC = StepSpec("gru", 2, 24, Vocab(CHARS), {"units": 24, "cell": "gru"}, "abc123", "float16", REFERENCE)


def test_metadata_reads_back_as_written():
    assert StepSpec.from_metadata(SPEC.metadata("best"), "m.onnx") == SPEC
    assert read_reference(SPEC) == Titles(["a b"], ["c"])


def test_metadata_states_the_reserved_ids_for_other_readers():
    """Readers other than charlm (a C++ or browser sampler) learn the reserved ids from the metadata alone."""
    assert json.loads(SPEC.metadata("best")["specials"]) == {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<unk>": UNK}


def test_a_model_with_only_the_required_metadata_loads_with_defaults():
    """Models exported before the run's config, fingerprint, precision and titles were recorded still sample."""
    required = {k: SPEC.metadata("best")[k] for k in ("vocab", "cell", "layers", "units")}
    spec = StepSpec.from_metadata(required, "old.onnx")
    assert (spec.config, spec.fingerprint, spec.precision, spec.reference) == ({}, "", "float32", None)


def test_the_smallest_model_is_one_layer_of_one_unit():
    meta = SPEC.metadata("best") | {"layers": "1", "units": "1", "cell": "lstm"}
    assert (StepSpec.from_metadata(meta, "m.onnx").layers, StepSpec.from_metadata(meta, "m.onnx").units) == (1, 1)


def test_a_foreign_model_is_refused_with_the_command_that_makes_one():
    with pytest.raises(UsageError) as error:
        StepSpec.from_metadata({}, "foreign.onnx")
    message = str(error.value)
    assert message.startswith("foreign.onnx is not a charlm model") and "python cli.py export-onnx RUN" in message
    assert "export-onnx" in {c.name for c in cli.app.registered_commands}


@pytest.mark.parametrize("changes, words", [
    ({"cell": "rnn"}, "'rnn'"), ({"layers": "0"}, "0 layers"), ({"units": "0"}, "of 0 units"),
    ({"config": "[1, 2]"}, "units"), ({"layers": "two"}, "'two'"), ({"reference": "QUJD!"}, "damaged"),
    ({"vocab": "{}"}, "damaged")])
def test_damaged_metadata_is_refused_naming_the_file_and_what_is_wrong(changes, words):
    with pytest.raises(UsageError) as error:
        StepSpec.from_metadata(SPEC.metadata("best") | changes, "m.onnx")
    message = str(error.value)
    assert message.startswith("m.onnx has damaged charlm metadata (") and words in message
    assert message.endswith("export the model again")


@pytest.mark.parametrize("blob", [lzma.compress(b'{"train_titles": ["a"]}'), b"not xz", lzma.compress(b"[1]")])
def test_damaged_reference_titles_are_refused_saying_what_is_missing(blob):
    with pytest.raises(UsageError) as error:
        read_reference(StepSpec(**{**SPEC.__dict__, "reference": blob}))
    assert str(error.value).startswith("the model's reference titles are damaged (")
    if blob.startswith(b"\xfd7zXZ") and b"train_titles" in lzma.decompress(blob):
        assert "val_titles" in str(error.value)


def test_reference_titles_travel_in_base64():
    assert base64.b64decode(SPEC.metadata("best")["reference"], validate=True) == REFERENCE
