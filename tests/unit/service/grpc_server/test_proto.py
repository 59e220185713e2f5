"""The gRPC messages are Triton's on the wire: every field of service/grpc_server/protos/vae_inference.proto has
the number, type and label of the same field in the grpc_service.proto that tritonclient ships, and the
committed Python module is what protoc writes from the .proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import service_pb2 as triton

from service.grpc_server import server
from service.grpc_server import vae_inference_pb2 as ours
from service.settings import Settings
from tests.conftest import REPO

PROTOS = REPO / "service" / "grpc_server" / "protos"


def signature(field: FieldDescriptor) -> tuple[object, ...]:
    """What the wire sees of a field: its number and type; for a message, the message's own fields."""
    kind = field.message_type.name if field.message_type is not None else None
    return field.number, field.type, field.is_repeated, kind


def compare(mine: Descriptor, theirs: Descriptor, path: str) -> list[str]:
    problems = []
    for field in mine.fields:
        if field.name not in theirs.fields_by_name:
            problems.append(f"{path}.{field.name}: not in Triton's {theirs.full_name}")
            continue
        other = theirs.fields_by_name[field.name]
        if signature(field) != signature(other):
            problems.append(f"{path}.{field.name}: {signature(field)} here, {signature(other)} in Triton's")
        if field.message_type is not None:
            problems += compare(field.message_type, other.message_type, f"{path}.{field.name}")
    return problems


MESSAGES = sorted(ours.DESCRIPTOR.message_types_by_name)


@pytest.mark.parametrize("name", MESSAGES)
def test_each_message_is_triton_s_on_the_wire(name):
    assert name in triton.DESCRIPTOR.message_types_by_name, f"Triton's proto has no {name}"
    assert (
        compare(ours.DESCRIPTOR.message_types_by_name[name], triton.DESCRIPTOR.message_types_by_name[name], name) == []
    )


def test_every_rpc_served_is_triton_s_with_its_messages():
    service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == server.SERVICE
    state = SimpleNamespace(settings=Settings())
    handler = server.InferenceService(state, server_name="x", server_version="0", loop=None).handler()
    served = sorted(handler._method_handlers)  # grpc's generic handler keeps them by full path
    assert served  # the comparison below must see some
    for path in served:
        method = service.methods_by_name[path.rsplit("/", 1)[1]]
        assert method.input_type.name in ours.DESCRIPTOR.message_types_by_name
        assert method.output_type.name in ours.DESCRIPTOR.message_types_by_name
        assert not method.server_streaming and not method.client_streaming


def test_a_message_written_here_is_read_by_tritonclient_and_back():
    request = ours.ModelInferRequest(model_name="m.encoder", id="7")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([0.5, 1.0])
    request.parameters["seed"].int64_param = 3
    request.raw_input_contents.append(b"\x00\x01")
    theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m.encoder" and theirs.id == "7" and theirs.parameters["seed"].int64_param == 3
    assert list(theirs.inputs[0].contents.fp32_contents) == [0.5, 1.0] and theirs.raw_input_contents == [b"\x00\x01"]
    assert ours.ModelInferRequest.FromString(theirs.SerializeToString()) == request


def test_the_committed_module_is_what_protoc_writes(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(PROTOS / "vae_inference.proto"),
        ],
        check=True,
    )
    for name in ("vae_inference_pb2.py", "vae_inference_pb2.pyi"):
        committed = (REPO / "service" / "grpc_server" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"service/grpc_server/{name} is stale: run `make protos`"
