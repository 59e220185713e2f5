"""The open inference protocol's JSON bodies, as they appear in the OpenAPI document. The routes
parse and write the bodies themselves (service/v2/codec.py); these models document them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.v2.codec import DATATYPES

Datatype = Literal[DATATYPES]  # type: ignore[valid-type]
Parameters = dict[str, bool | int | float | str]
TensorData = list[Any]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="the protocol extensions implemented")


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: a variable dimension")


class ParameterDoc(BaseModel):
    name: str
    type: str
    default: Any = None
    description: str


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(description="onnx_onnxv1 for the graphs, vae-service_operation for the operations")
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    description: str | None = None
    parameters: list[ParameterDoc] | None = Field(None, description="the operation's request parameters")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int] = Field(description="row-major; the data holds their product of elements")
    datatype: Datatype
    parameters: Parameters | None = Field(
        None,
        description="binary_data_size: the tensor is that many bytes "
        "after the JSON header (binary tensor data extension)",
    )
    data: TensorData | None = Field(None, description="flat or nested; absent with binary_data_size")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(None, description="binary_data: true to receive the tensor as binary")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(
        None, description="the operation's knobs (see its metadata); binary_data_output: every output as binary"
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="default: every output")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: TensorData | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class StatisticDuration(BaseModel):
    count: int
    ns: int = Field(description="cumulative nanoseconds")


class InferStatistics(BaseModel):
    success: StatisticDuration = Field(description="requests that succeeded, and their whole time")
    fail: StatisticDuration = Field(description="requests refused or failed, and the time they took")
    queue: StatisticDuration = Field(description="waiting for a worker thread or the micro-batcher's batch")
    compute_input: StatisticDuration = Field(
        description="parsing the request, and the operation's work outside its model calls (decoding images)"
    )
    compute_infer: StatisticDuration = Field(description="the model calls: onnxruntime and the scoring math")
    compute_output: StatisticDuration = Field(description="checking the outputs and encoding the response")
    cache_hit: StatisticDuration = Field(description="always zero: no response cache")
    cache_miss: StatisticDuration = Field(description="always zero: no response cache")


class BatchStatistics(BaseModel):
    batch_size: int = Field(description="rows of the execution (a micro-batch's, or the request's)")
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch; 0 before the first")
    inference_count: int = Field(description="rows inferred (each request's batch size, summed)")
    execution_count: int = Field(description="model executions: a micro-batch serving several requests is one")
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]
    memory_usage: list[dict[str, Any]] = Field(description="always empty")
    response_stats: dict[str, Any] = Field(description="always empty: no decoupled models")


class ModelStatisticsResponse(BaseModel):
    model_stats: list[ModelStatistics]
