"""Task text-generation on decoder LMs (tiny random GPT-2 and Llama, a byte-level BPE
trained here on the test texts): the loss mask, perplexity against transformers' own
loss, and `adapt run` end to end: LoRA/adapters, exact merge, the cached ONNX decoder
whose greedy continuations equal transformers' generate, int8, predict, and the
merged folder in transformers' own text-generation pipeline."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from adapt.cli import make_cli
from adapt.host import make_host
from adapt.report_schema import Report
from tests.tiny import decoder_checkpoint

TEXTS = [f"the team won the match {i % 7}" if i % 2 else f"shares fell in the market {i % 5}" for i in range(60)]
PAIRS = [{"prompt": t.rsplit(" ", 2)[0], "completion": " " + " ".join(t.rsplit(" ", 2)[1:])} for t in TEXTS]


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    return {t: decoder_checkpoint(root / t, t, causal_lm=True, texts=TEXTS) for t in ("gpt2", "llama", "qwen2")}


def tokenizer(path: Path):
    from transformers import AutoTokenizer

    from adapt.plugins.transformers.hf_text import set_padding

    loaded = AutoTokenizer.from_pretrained(path)
    set_padding(loaded, type("Config", (), {"pad_token_id": None})())
    return loaded


def test_the_loss_is_on_the_completion_and_the_end_token_only(lms):
    from adapt.plugins.transformers.causal_lm import collator

    tok = tokenizer(lms["gpt2"])
    batch = collator(tok, 64)([{"prompt": "the team", "completion": " won"}, {"text": "shares fell"}])
    prompt = tok("the team", add_special_tokens=False)["input_ids"]
    won = tok(" won", add_special_tokens=False)["input_ids"]
    first = batch["labels"][0].tolist()
    assert first[: len(prompt)] == [-100] * len(prompt)
    assert first[len(prompt) : len(prompt) + len(won) + 1] == [*won, tok.eos_token_id]
    text = tok("shares fell", add_special_tokens=False)["input_ids"]
    assert batch["labels"][1].tolist()[: len(text) + 1] == [*text, tok.eos_token_id]  # plain text: every token learnt
    assert batch["attention_mask"][1].sum() == len(text) + 1 and set(batch["labels"][1, len(text) + 1 :].tolist()) <= {-100}
    assert batch["position_ids"][0].tolist() == list(range(batch["input_ids"].shape[1]))


def test_a_long_example_keeps_the_start_of_its_completion_and_the_end_of_its_prompt(lms):
    from adapt.plugins.transformers.causal_lm import encode

    tok = tokenizer(lms["gpt2"])
    ids, prompt_length = encode(tok, {"prompt": "the team " * 20, "completion": " shares fell " * 20}, 16)
    assert len(ids) == 16 and prompt_length >= 1
    assert ids[prompt_length:] == tok(" shares fell " * 20, add_special_tokens=False)["input_ids"][: 16 - prompt_length]


def test_perplexity_is_the_exponential_of_transformers_own_loss(lms):
    """adapt's metric from its own decode against the loss transformers computes with labels."""
    from transformers import AutoModelForCausalLM

    from adapt.plugins.transformers.causal_lm import collator
    from adapt.plugins.transformers.generation import TextGeneration

    model = AutoModelForCausalLM.from_pretrained(lms["llama"]).eval()
    batch = collator(tokenizer(lms["llama"]), 64)([{"prompt": "the team", "completion": " won the match 3"}])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    task = TextGeneration()
    predictions, references = task.decode(out.logits, batch["labels"])
    metrics = task.metrics(predictions, references, [])
    assert math.isclose(metrics["perplexity"], math.exp(float(out.loss)), rel_tol=1e-5)
    assert math.isclose(float(task.loss(out.logits, batch["labels"])), float(out.loss), rel_tol=1e-5)


def test_exact_match_counts_examples_whose_every_target_is_the_greedy_token():
    from adapt.plugins.transformers.generation import TextGeneration

    metrics = TextGeneration().metrics([[1, 2], [3, 4]], [{"targets": [1, 2], "nll": 0.2}, {"targets": [3, 5], "nll": 1.0}], [])
    assert metrics["exact_match"] == 0.5 and metrics["token_accuracy"] == 0.75 and math.isclose(metrics["perplexity"], math.exp(1.2 / 4))


def run(tmp_path: Path, checkpoint: Path, method: dict, *, rows: list[dict], quantize: str = "none", epochs: int = 2, mobile: bool = False) -> tuple[Path, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "name": "lm", "output_dir": str(tmp_path / "runs"), "task": "text-generation",
        "backbone": {"name": "transformers", "checkpoint": str(checkpoint), "options": {"max_length": 48}},
        "method": method, "data": {"source": "jsonl", "path": str(tmp_path / "data.jsonl")},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "group_by_length": True}, "export": {"quantize": quantize, "mobile": mobile, "latency_runs": 2},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "lm"
    report = json.loads((run_dir / "report.json").read_text())
    Report.model_validate(report)
    return run_dir, report


def test_gpt2_adapters_generation_end_to_end_with_the_cached_decoder_int8_and_int4(tmp_path, lms):
    """Linear adapters after GPT-2's Conv1D projections fold (their bias goes into the layer's);
    the export quantises to int8 and int4, each gated on relative validation perplexity."""
    run_dir, report = run(tmp_path, lms["gpt2"], {"name": "adapters", "options": {"placement": "houlsby", "reduction": 4, "activation": "none"}}, rows=PAIRS, quantize="all", mobile=True)
    assert report["merge"] == "folded" and report["parity"]["merged"]["verified"] is True
    for form in ("adapted", "merged", "onnx", "onnx_int8"):
        assert report["metrics"][form]["perplexity"] > 1, form
    for form in ("onnx", "onnx_optimized"):  # exact forms: gated on identical greedy continuations
        assert report["parity"][form]["verified"] is True and report["parity"][form]["generation_agreement"] == 1.0
        assert report["latency_ms"][form]["tokens_per_s"] > 0
    assert "generation_agreement" in report["parity"]["onnx_int8"]
    inputs = {i.name for i in __import__("onnxruntime").InferenceSession(str(run_dir / "export" / "model.onnx")).get_inputs()}
    assert {"past_key_values.0.key", "past_key_values.1.value", "position_ids"} <= inputs
    assert json.loads((run_dir / "export" / "preprocess.json").read_text())["kv_cache"] == "appended"  # GPT-2: unfused
    # the gate is relative perplexity: within export.max_perplexity_increase (5%), or not recommended;
    # of the quantised files within it, the smallest is deployed
    attempts = {a["attempt"].split()[0]: a for a in report["export"]["onnx"]["attempts"]}
    assert set(attempts) == {"dynamic", "int4"} and {"onnx_int8", "onnx_int4"} <= set(report["metrics"])
    for attempt in attempts.values():
        assert attempt["passed"] == (math.exp(attempt["val_drop"]) <= 1.05 + 1e-9)
    passing = [run_dir / "export" / a["file"] for a in attempts.values() if a["passed"]]
    if passing:
        assert report["deployable"] == f"export/{min(passing, key=lambda p: p.stat().st_size).name}"
    int4_ops = {n.op_type for n in __import__("onnx").load(str(run_dir / "export" / "model.int4.onnx")).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= int4_ops
    assert (run_dir / report["forms"]["ort_mobile"]).is_file()  # the deployable decoder in ONNX Runtime Mobile's format


def test_llama_lora_generation_and_every_way_to_predict_agrees(tmp_path, lms):
    """Greedy continuations agree between `adapt predict` (PyTorch), `--onnx`, the standalone
    predict.py, and transformers' own text-generation pipeline on merged/."""
    from transformers import pipeline

    run_dir, report = run(tmp_path, lms["llama"], {"name": "lora", "options": {"r": 8, "alpha": 16, "targets": "all-linear"}}, rows=[{"text": t} for t in TEXTS], epochs=3)
    assert report["merge"] == "folded" and report["parity"]["onnx"]["generation_agreement"] == 1.0
    assert json.loads((run_dir / "export" / "preprocess.json").read_text())["kv_cache"] == "shared"  # the fused graph
    cli = make_cli(lambda: make_host(autoload=False))
    prompts = ["the team won", "shares"]
    torch_rows = [json.loads(line) for line in CliRunner().invoke(cli, ["predict", str(run_dir), *prompts, "--max-new-tokens", "6"]).output.splitlines()]
    onnx_rows = [json.loads(line) for line in CliRunner().invoke(cli, ["predict", str(run_dir), *prompts, "--onnx", "--max-new-tokens", "6"]).output.splitlines()]
    export = run_dir / "export"
    standalone = subprocess.run([sys.executable, str(export / "predict.py"), str(export / "model.onnx"), *prompts, "--max-new-tokens", "6"], capture_output=True, text=True, timeout=120)
    assert standalone.returncode == 0, standalone.stderr
    generate = pipeline("text-generation", model=str(run_dir / "merged"))
    via_pipeline = [generate(p, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"] for p in prompts]
    assert [r["generated"] for r in torch_rows] == [r["generated"] for r in onnx_rows] == [json.loads(line)["generated"] for line in standalone.stdout.splitlines()]
    assert [r["generated"] for r in torch_rows] == via_pipeline
    table = CliRunner().invoke(cli, ["bench", str(run_dir)]).output
    assert "test perplexity (lower is better) | tokens/s |" in table and "| onnx |" in table and "export's figures" in table  # says where they come from
    sampled = [json.loads(line) for line in CliRunner().invoke(cli, ["predict", str(run_dir), "the team", "--onnx", "--temperature", "1.0", "--top-k", "20", "--seed", "3"]).output.splitlines()]
    assert sampled and isinstance(sampled[0]["generated"], str)


def test_adapters_after_bias_free_projections_stay_inline_and_say_why(lms):
    """Llama's projections have no bias, so a linear adapter's bias cannot fold into them:
    the merge keeps those adapters inline (exact), instead of failing or dropping the bias."""
    from adapt.plugins.transformers.hf_text import TextOptions
    from adapt.plugins.methods.adapters import AdapterOptions, Adapters
    from adapt.plugins.transformers.transformers_backbone import Transformers

    built = Transformers().build("text-generation", 0, checkpoint=str(lms["llama"]), arch=None, options=TextOptions())
    method = Adapters()
    method.apply(built, AdapterOptions(activation="none"), [])
    with torch.no_grad():
        for p in built.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    merged = method.merge(built)
    assert merged.folded is False and "no bias to take the adapter's" in merged.note
    ids = torch.randint(3, 200, (2, 9))
    with torch.no_grad():
        assert torch.allclose(merged.model.eval()(input_ids=ids), built.model.eval()(input_ids=ids), atol=1e-5)


def test_qwen2_freeze_of_the_last_block_generates_and_a_freeze_that_trains_nothing_is_refused_first(tmp_path, lms):
    """A causal LM has no new head, so plain `freeze` would train nothing: refused before any
    run directory exists, with the fix; `last_blocks: 1` trains the last block."""
    run_dir, report = run(tmp_path / "a", lms["qwen2"], {"name": "freeze", "options": {"last_blocks": 1}}, rows=PAIRS, epochs=1, quantize="all", mobile=True)
    assert report["parity"]["onnx"]["generation_agreement"] == 1.0 and 0 < report["params"]["trainable"] < report["params"]["total"]
    # exported with ONNX Runtime's fused attention (adapt.plugins.transformers.fused_decoder): every form keeps it,
    # and each form's continuations went through predict.py's shared-buffer loop in the export gate
    import onnx

    assert json.loads((run_dir / "export" / "preprocess.json").read_text())["kv_cache"] == "shared"
    for form in ("onnx", "onnx_optimized", "onnx_int8", "onnx_int4"):
        ops = {n.op_type for n in onnx.load(str(run_dir / report["forms"][form])).graph.node}
        assert "GroupQueryAttention" in ops and "generation_agreement" in report["parity"][form], form
    assert report["parity"]["onnx_optimized"]["generation_agreement"] == 1.0
    assert (run_dir / report["forms"]["ort_mobile"]).is_file()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    config = {"name": "f", "output_dir": str(tmp_path / "b" / "runs"), "task": "text-generation", "backbone": {"name": "transformers", "checkpoint": str(lms["qwen2"])}, "method": {"name": "freeze"}, "data": {"source": "jsonl", "path": str(tmp_path / "b" / "data.jsonl")}}
    (tmp_path / "b" / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "b" / "c.yaml")])
    assert result.exit_code == 2 and "no new task head" in result.output and "last_blocks" in result.output, result.output
    assert not (tmp_path / "b" / "runs").exists()


def test_chat_messages_need_a_chat_template(tmp_path, lms):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 20
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"name": "c", "output_dir": str(tmp_path / "runs"), "task": "text-generation", "backbone": {"name": "transformers", "checkpoint": str(lms["gpt2"])}, "method": {"name": "lora"}, "data": {"source": "jsonl", "path": str(tmp_path / "chat.jsonl")}, "train": {"epochs": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(make_cli(lambda: make_host(autoload=False)), ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2 and "has no chat template" in result.output, result.output


def test_chat_messages_render_with_the_tokenizer_template(lms):
    from adapt.plugins.transformers.causal_lm import encode

    tok = tokenizer(lms["gpt2"])
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    ids, prompt_length = encode(tok, {"messages": [{"role": "user", "content": "the team"}, {"role": "assistant", "content": " won"}]}, 64)
    assert tok.decode(ids[:prompt_length]) == "user: the team\nassistant:"
    assert ids[prompt_length:] == [*tok(" won", add_special_tokens=False)["input_ids"], tok.eos_token_id]


def test_csv_prompt_completion_columns_are_read_by_name(tmp_path):
    from adapt.interfaces import DataRequest
    from adapt.plugins.sources.csv_source import CsvOptions, read_csv

    (tmp_path / "d.csv").write_text("question,answer\nthe team,won\nshares,\n")
    request = DataRequest(task="text-generation", path=tmp_path / "d.csv", prompt_column="question", completion_column="answer")
    assert read_csv(tmp_path / "d.csv", request, CsvOptions()) == [{"prompt": "the team", "completion": "won"}]
    assert len(request.skipped) == 1 and "empty" in request.skipped[0]
