"""lm-eval against ``seer serve``: the same scores as lm-eval's own transformers model.

A small multiple-choice task, written here as a local JSON-lines dataset and task YAML, is run
through ``lm_eval.simple_evaluate`` three times on one tiny random-weight Llama: with lm-eval's
``hf`` model (transformers in process, the reference), and with ``local-completions`` against a
real ``seer serve`` subprocess, once with the checkpoint's tokenizer and once with
``tokenizer_backend=remote`` (which reads ``/tokenizer_info`` and calls ``/tokenize``). Every
choice's loglikelihood, its is-greedy flag and the accuracy must agree. Random weights give
scores near chance, but the per-choice numbers still differ from choice to choice and from 0.0,
which is what a server that dropped the prompt's logprobs returned.
"""

from __future__ import annotations

import json

import pytest

from server_proc import ServerProcess

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")

QUESTIONS = [
    ("The sky on a clear day is", ["blue", "green", "made of cheese", "loud"], 0),
    ("Two plus two equals", ["four", "five", "a fish"], 0),
    ("Ice is water that has", ["frozen", "boiled", "evaporated"], 0),
    ("A cat says", ["meow", "moo", "quack", "woof"], 0),
    ("The opposite of up is", ["down", "left", "sideways"], 0),
    ("Paris is the capital of", ["France", "Spain", "the moon"], 0),
    ("Seven is a number that is", ["odd", "even"], 0),
    ("Grass is usually", ["green", "purple", "transparent"], 0),
]


def _task_dir(tmp_path) -> str:
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (tmp_path / "seer_tiny_mc.yaml").write_text(f"""\
task: seer_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    return str(tmp_path)


def _evaluate(task_dir: str, model: str, model_args: str) -> tuple[float, list[list[tuple[float, bool]]]]:
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["seer_tiny_mc"],
                                  task_manager=TaskManager(include_path=task_dir), log_samples=True,
                                  batch_size=4)
    samples = sorted(out["samples"]["seer_tiny_mc"], key=lambda s: s["doc_id"])
    per_choice = [[(float(r[0][0]), bool(r[0][1])) for r in s["resps"]] for s in samples]
    return out["results"]["seer_tiny_mc"]["acc,none"], per_choice


def test_lm_eval_local_completions_scores_equal_the_hf_model(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    task_dir = _task_dir(tmp_path)
    want_acc, want = _evaluate(task_dir, "hf", f"pretrained={tiny_llama},dtype=float32,device=cpu")
    assert len(want) == len(QUESTIONS) and all(ll < 0 for doc in want for ll, _ in doc)
    assert len({ll for doc in want for ll, _ in doc}) > len(QUESTIONS)  # the choices' scores differ

    server = ServerProcess.start(tiny_llama, "--model-name", "tiny")
    try:
        base = f"model=tiny,base_url={server.url}/v1/completions,num_concurrent=2,max_retries=1"
        for tokenizer in (f"tokenizer_backend=huggingface,tokenizer={tiny_llama}", "tokenizer_backend=remote"):
            acc, got = _evaluate(task_dir, "local-completions", f"{base},{tokenizer}")
            assert acc == want_acc, tokenizer
            for doc_got, doc_want in zip(got, want, strict=True):
                assert [g for _, g in doc_got] == [g for _, g in doc_want], tokenizer
                assert [ll for ll, _ in doc_got] == pytest.approx([ll for ll, _ in doc_want], abs=2e-4), tokenizer
    finally:
        assert server.stop() == 0, server.log()
