"""lite_dist2 0.6.7 wire models: the same field names, required keys and portable values.

Portable slots accept only a JSON bool or a string, and the string must be strict hex for its
declared type (no bare digits, no decimal floats): ``0``/``1`` never turn into bools and
``"0.1"`` is never read as 0.0625. Unknown extra keys are ignored, as lite_dist2 does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema

from ld2.core import portable
from ld2.core.portable import ValueType


def _portable_shape(value: object) -> bool | str:
    if isinstance(value, bool | str):
        return value
    raise ValueError(
        f"a portable value is a JSON bool or a hex string such as '0x1a' or '0x1.8p+1', "
        f"got {type(value).__name__} {value!r}"
    )


PortableValue: TypeAlias = Annotated[
    bool | str,
    PlainValidator(_portable_shape),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string"}]}),
]
HexInt: TypeAlias = StrictStr
ResultType: TypeAlias = Literal["scalar", "vector"]
StudyStatus: TypeAlias = Literal["wait", "running", "done", "not_found"]
TrialStatus: TypeAlias = Literal["running", "done"]


def _check_hex_int(value: str | None, field: str) -> str | None:
    if value is not None:
        portable.decode_int(value, field)
    return value


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- values ------------------------------------------------------------------------------------


class ScalarValue(WireModel):
    type: Literal["scalar"] = "scalar"
    value_type: ValueType
    value: PortableValue
    name: str | None = None

    @field_validator("value")
    @classmethod
    def _value(cls, v: PortableValue, info: ValidationInfo) -> PortableValue:
        vt = info.data.get("value_type")
        if vt is not None:
            portable.check(v, vt, "value")
        return v


class VectorValue(WireModel):
    type: Literal["vector"] = "vector"
    value_type: ValueType
    values: list[PortableValue]
    name: str | None = None

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[PortableValue], info: ValidationInfo) -> list[PortableValue]:
        vt = info.data.get("value_type")
        if vt is not None:
            for k, item in enumerate(v):
                portable.check(item, vt, f"values[{k}]")
        return v


ResultValue: TypeAlias = Annotated[ScalarValue | VectorValue, Field(discriminator="type")]


class Mapping(WireModel):
    params: list[ScalarValue]
    result: ResultValue


class MappingsStorage(WireModel):
    params_info: list[ScalarValue]
    result_info: ResultValue
    values: list[list[PortableValue]]

    @model_validator(mode="after")
    def _rows(self) -> MappingsStorage:
        types: list[ValueType] = [p.value_type for p in self.params_info]
        if isinstance(self.result_info, VectorValue):
            types += [self.result_info.value_type] * len(self.result_info.values)
        else:
            types.append(self.result_info.value_type)
        for r, row in enumerate(self.values):
            if len(row) != len(types):
                raise ValueError(f"values[{r}]: expected {len(types)} items, got {len(row)}")
            for c, (item, vt) in enumerate(zip(row, types, strict=True)):
                portable.check(item, vt, f"values[{r}][{c}]")
        return self


# -- study registration --------------------------------------------------------------------------


class ConstParamElement(WireModel):
    type: Literal["int", "float", "bool", "str"]
    key: str
    value: PortableValue

    @field_validator("value")
    @classmethod
    def _value(cls, v: str | bool, info: ValidationInfo) -> str | bool:
        t = info.data.get("type")
        if t == "str":
            if not isinstance(v, str):
                raise ValueError("a str constant needs a JSON string value")
        elif t is not None:
            portable.check(v, t, "value")
        return v


class ConstParam(WireModel):
    consts: list[ConstParamElement]

    def to_dict(self) -> dict[str, Any]:
        """Decoded constants by key (the last of a repeated key wins, as in lite_dist2)."""
        out: dict[str, Any] = {}
        for c in self.consts:
            out[c.key] = c.value if c.type == "str" else portable.decode(c.value, c.type)
        return out


class StudyStrategyParam(WireModel):
    target_value: ResultValue


class StudyStrategyModel(WireModel):
    type: Literal["all_calculation", "find_exact", "minimize"]
    study_strategy_param: StudyStrategyParam | None = None


class SuggestStrategyParam(WireModel):
    strict_aligned: StrictBool


class SuggestStrategyModel(WireModel):
    type: Literal["sequential", "random", "designated"]
    suggest_strategy_param: SuggestStrategyParam


class LineSegmentRegistry(WireModel):
    name: str | None = None
    type: ValueType
    size: HexInt | None
    step: PortableValue
    start: PortableValue

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        return _check_hex_int(v, "size")

    @field_validator("step", "start")
    @classmethod
    def _portable(cls, v: PortableValue, info: ValidationInfo) -> PortableValue:
        t = info.data.get("type")
        if t is not None:
            assert info.field_name is not None
            portable.check(v, t, info.field_name)
        return v


class ParameterAlignedSpaceRegistry(WireModel):
    type: Literal["aligned"]
    axes: list[LineSegmentRegistry]


class StudyCommon(WireModel):
    """Fields shared by a study's registry, summary and storage."""

    name: str | None
    required_capacity: list[str]
    study_strategy: StudyStrategyModel
    suggest_strategy: SuggestStrategyModel
    const_param: ConstParam | None
    result_type: ResultType
    result_value_type: ValueType


class StudyRegistry(StudyCommon):
    parameter_space: ParameterAlignedSpaceRegistry
    trial_repository_type: Literal["normal"] = "normal"


class StudyRegisterParam(WireModel):
    study: StudyRegistry
    priority: int = Field(0, ge=-1000, le=1000)  # ld2 extension; lite_dist2 ignores it
    # ld2 extension: seconds a trial of this study may compute before its process is ended
    trial_limit_seconds: float | None = Field(None, gt=0, le=7 * 86_400)


class StudyRegisteredResponse(WireModel):
    study_id: str


# -- spaces after registration -------------------------------------------------------------------


class LineSegmentModel(LineSegmentRegistry):
    ambient_index: HexInt
    ambient_size: HexInt | None = None
    is_dummy: StrictBool = False

    @field_validator("ambient_index", "ambient_size")
    @classmethod
    def _ambient(cls, v: str | None, info: ValidationInfo) -> str | None:
        assert info.field_name is not None
        return _check_hex_int(v, info.field_name)


class ParameterAlignedSpaceModel(WireModel):
    type: Literal["aligned"] = "aligned"
    axes: list[LineSegmentModel]
    check_lower_filling: StrictBool


class ParameterJaggedSpaceModel(WireModel):
    type: Literal["jagged"] = "jagged"
    parameters: list[list[PortableValue]]
    ambient_indices: list[list[HexInt]]
    axes_info: list[LineSegmentModel]

    @model_validator(mode="after")
    def _shape(self) -> ParameterJaggedSpaceModel:
        dim = len(self.axes_info)
        if len(self.parameters) != len(self.ambient_indices):
            raise ValueError("parameters and ambient_indices must have the same length")
        for r, (params, idx) in enumerate(zip(self.parameters, self.ambient_indices, strict=True)):
            if len(params) != dim or len(idx) != dim:
                raise ValueError(f"parameters[{r}]/ambient_indices[{r}]: expected {dim} items")
            for c, (p, i, axis) in enumerate(zip(params, idx, self.axes_info, strict=True)):
                portable.check(p, axis.type, f"parameters[{r}][{c}]")
                portable.decode_int(i, f"ambient_indices[{r}][{c}]")
        return self


TrialSpaceModel: TypeAlias = Annotated[
    ParameterAlignedSpaceModel | ParameterJaggedSpaceModel, Field(discriminator="type")
]


# -- trials ----------------------------------------------------------------------------------------


class TrialModel(WireModel):
    study_id: str
    trial_id: str
    reserved_timestamp: datetime
    trial_status: TrialStatus
    const_param: ConstParam | None
    parameter_space: TrialSpaceModel
    result_type: ResultType
    result_value_type: ValueType
    worker_node_name: str | None
    worker_node_id: str
    results: list[Mapping] | None = None
    registered_timestamp: datetime | None = None


class TrialReserveParam(WireModel):
    retaining_capacity: list[str]
    max_size: StrictInt
    worker_node_name: str | None = None
    worker_node_id: str


class TrialReserveResponse(WireModel):
    trial: TrialModel | None


class TrialRegisterParam(WireModel):
    trial: TrialModel


# -- study views ----------------------------------------------------------------------------------


class StudySummary(StudyCommon):
    study_id: str
    status: StudyStatus
    registered_timestamp: datetime
    parameter_space: ParameterAlignedSpaceModel
    total_grids: int | None
    done_grids: int


class TrialRepositoryModel(WireModel):
    type: Literal["normal"] = "normal"
    save_dir: str


class StudyStorage(StudyCommon):
    study_id: str
    registered_timestamp: datetime
    parameter_space: ParameterAlignedSpaceModel
    done_timestamp: datetime
    results: MappingsStorage
    done_grids: int
    trial_repository: TrialRepositoryModel


class StudyResponse(WireModel):
    status: StudyStatus
    result: StudyStorage | None = None


class CurriculumSummaryResponse(WireModel):
    summaries: list[StudySummary]


class WorkerEfficiency(WireModel):
    worker_id: str
    worker_name: str | None
    grid_velocity: float


class StudyProgressSummary(WireModel):
    study_id: str
    study_name: str | None
    total_grid: int | Literal["infinite"]
    done_grid: int
    grid_velocity: float
    eta: datetime | Literal["unpredictable"]
    worker_efficiencies: list[WorkerEfficiency]


class ProgressSummaryResponse(WireModel):
    now: datetime
    cutoff_sec: int
    progress_summaries: list[StudyProgressSummary]


class OkResponse(WireModel):
    ok: bool
