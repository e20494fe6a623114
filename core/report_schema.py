"""The schema of ``report.json``, for the tools that read a run (and for adapt's own tests).

Every key a stage writes is declared here with its type; sections a stage has not
reached yet are absent (None). Other tools can validate a report with
``Report.model_validate_json(text)`` or take the JSON schema from
``Report.model_json_schema()``. Unknown keys are refused, so a key that a stage
starts writing must be added here first (a test validates the reports of real runs).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Params(_Strict):
    trainable: int
    total: int
    merged_total: int | None = None


class Data(_Strict):
    source: str
    sizes: dict[str, int]
    labels: list[str]
    skipped: list[str]


class Training(_Strict):
    best_epoch: int
    best_val: float | None
    epochs_run: int
    steps: int
    seconds: float
    stopped_early: bool
    device: str
    precision: Literal["fp32", "bf16", "fp16"]
    processes: int
    fast_path: dict[str, Any]
    #: under torchrun: ``ddp`` or ``fsdp`` (train.strategy), and with fsdp the frozen weights sharded (MiB)
    strategy: str | None = None
    sharded_mib: float | None = None


class Check(_Strict):
    """One form's parity against the form it came from; ``max_abs_diff`` is None when a logit is NaN/Inf."""

    max_abs_diff: float | None
    label_agreement: float
    #: what label_agreement measured: "labels" (equal predictions) or the task's own agreement's name
    agreement_of: str | None = None
    examples: int
    bound: float | None
    verified: bool
    #: text-generation: the share of test prompts whose greedy continuation (up to 32 new
    #: tokens, KV cache in use) is token-identical to the merged model's.
    generation_agreement: float | None = None
    #: object-detection: the share of the merged model's test detections (score >= 0.3) that
    #: the file's own final boxes (NMS in the graph) reproduce: same class, IoU >= 0.9.
    box_agreement: float | None = None
    #: image-embedding: the smallest cosine between the file's normalised embedding (the
    #: graph's ``embedding`` output) and the merged model's, over the test split.
    min_cosine: float | None = None


class MergeCheck(_Strict):
    tolerance: float
    approximate: bool
    logit_scale: float
    verified: bool


class Latency(_Strict):
    median: float
    p90: float
    threads: int
    #: the slowest round's median over the fastest's (the forms are timed taking turns)
    spread: float | None = None
    #: text-generation: new tokens per second of greedy generation with the KV cache (batch 1).
    tokens_per_s: float | None = None


class RejectedExport(_Strict):
    folder: str
    error: str
    parity: dict[str, Check]


class Report(_Strict):
    name: str
    task: str
    #: the task's primary metric (the best epoch's and the int8 gate's) and its direction
    primary_metric: str | None = None
    lower_is_better: bool | None = None
    #: what predict does after the graph: the task's declared kind ({"kind": "softmax-top-k", "k": 1}, ...)
    postprocess: dict[str, Any] | None = None
    #: the Hugging Face Hub's pipeline tag of the task (Task.pipeline_tag), for the model cards
    pipeline_tag: str | None = None
    #: backbone.checkpoint as the config gave it (a hub id, a local path or pkg:<module>/<path>)
    checkpoint: str | None = None
    backbone: str
    arch: str | None = None
    method: str
    params: Params
    new_parameters: list[str]
    data: Data | None = None
    files: dict[str, int]
    training: Training | None = None
    #: form -> the task's metrics on the test split (accuracy, macro_f1; f1, precision, recall for NER)
    metrics: dict[str, dict[str, float]] | None = None
    #: wall seconds per stage of `adapt run` (load, train, merge, export) and the total
    timings: dict[str, float] | None = None
    #: peak resident memory per stage in MiB (``peak_mib``), the run's peak, the fp32 weights' size and the
    #: ratio of the two, and ``how`` it was measured (adapt.memory)
    memory: dict[str, Any] | None = None
    #: each exported form's latency over PyTorch eager's, measured taking turns: {"ratio", "range"} (or a "note")
    latency_vs_pytorch: dict[str, Any] | None = None
    #: the machine the latencies were measured on (CPU model and flags, threads, denormals)
    latency_machine: dict[str, Any] | None = None
    #: `adapt bench --save`: interleaved latency measured on the machine that ran it
    bench: dict[str, Any] | None = None
    merge: Literal["folded", "inline"] | None = None
    merge_note: str | None = None
    #: the library whose own loader opens merged/ ("adapt" where adapt wrote its own layout) and the card's usage lines
    #: (Backbone.save_merged)
    merged_library: str | None = None
    merged_usage: list[str] | None = None
    merge_check: MergeCheck | None = None
    parity: dict[str, Check] | None = None
    #: form -> its file, relative to the run directory
    forms: dict[str, str] | None = None
    #: form -> its size as shipped: the file and its companions (ONNX's external data past 2 GB)
    form_bytes: dict[str, int] | None = None
    #: exporter -> what its derive step reports (attempts, notes, fusions, ...): free-form per exporter
    export: dict[str, dict[str, Any]] | None = None
    latency_ms: dict[str, Latency] | None = None
    latency_ms_batch: dict[str, Any] | None = None
    deployable: str | None = None
    export_notes: list[str] | None = None
    #: export/web/, the browser page: its page, model, examples recorded and onnxruntime-web's version (or a note)
    web: dict[str, Any] | None = None
    #: `adapt web-check`: what the page gave in headless Chromium, whether it passed, and a recommendation
    web_check: dict[str, Any] | None = None
    rejected_export: RejectedExport | None = None
    notes: list[str] | None = None
    #: warnings of observer plugins that raised in a lifecycle hook (the run went on)
    plugin_warnings: list[str] | None = None
    #: form -> a few of its outputs for people to read (ExportVerdict.samples; text-generation: each test
    #: prompt's greedy continuation through the file, {"prompt", "continuation"})
    samples: dict[str, list[dict[str, str]]] | None = None
    #: name -> a picture in the run directory (object-detection: ``detections``, test images
    #: with their true boxes beside the merged model's)
    pictures: dict[str, str] | None = None
