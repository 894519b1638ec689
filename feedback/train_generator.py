"""DPO on preference pairs: TRL's DPOTrainer trains a peft LoRA adapter on the generator's safetensors cache (the
served GGUF dequantised: the same weights), with the reference model's log-probabilities computed once before
training; llama.cpp's own converter (`convert_lora_to_gguf.py`, from the llama-cpp-python sdist the Makefile
installs) turns the adapter into a GGUF LoRA that llama.cpp applies over the served base GGUF.

Each pair's prompt is the chat messages an answer was served from; the trainer renders them with the model's
chat template, the template llama.cpp renders them with when serving (`served_prompt_matches` checks it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from feedback.trainset import PairRow

# Where `make install` puts llama.cpp's conversion scripts and the gguf-py they were written against.
LLAMA_CPP_TOOLS = Path(sys.prefix) / "share" / "llama.cpp"


class GeneratorTrainingError(RuntimeError):
    """Training or converting an adapter failed; the message says which step and why."""


@dataclass(frozen=True)
class GeneratorTrainingArgs:
    epochs: int = 1
    max_steps: int = -1  # -1: the epochs decide
    batch_size: int = 2
    gradient_accumulation: int = 2
    learning_rate: float = 5e-5
    beta: float = 0.1  # how far DPO may move from the reference (the base generator)
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_length: int = 1536  # prompt + answer tokens; longer pairs are truncated from the answer's end
    # bfloat16 autocast (the adapter is saved in fp32 either way); None: on with a bf16 CUDA GPU or a CPU with native
    # bf16 instructions (a 4-pair step 1.5x faster on Zen 4, bench/README.md).
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    # > 0: also pair answers sampled from logged prompts no feedback paired, this many a prompt, the collection's
    # active reward model's best over its worst (feedback/pairs.py: `sampled_pairs`).
    samples: int = 0
    sample_temperature: float = 0.8
    seed: int = 0

    def as_params(self) -> dict:
        return asdict(self) | {"target_modules": list(self.target_modules)}


def native_bf16() -> bool:
    import torch

    from citeloop.hardware import NATIVE_BF16, cpu_flags

    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else bool(cpu_flags() & NATIVE_BF16)


@contextmanager
def completion_positions_only():
    """TRL's fused LM head scores only the positions DPO reads (the answers') on CUDA with Triton; elsewhere it
    projects every prompt position onto the vocabulary too, so that a compiling backend (Neuron) sees one tile shape.
    On the CPU nothing compiles: this has the CPU take the compact path as well (the kernels stay torch's). With
    gradient checkpointing off too, a 4-pair step of 953-token prompts took 38 s instead of 78 s on 2 Zen 4 cores in
    bf16 (bench/README.md). The log-probabilities are the same: prompt positions are masked out either way. A TRL
    without the switch trains unchanged, only slower."""
    import trl.trainer.utils as trl_utils

    full_path = getattr(trl_utils, "_use_triton", None)
    if full_path is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or full_path(device)
    try:
        yield
    finally:
        trl_utils._use_triton = full_path


def dpo_rows(pairs: Sequence[PairRow]) -> list[dict]:
    """Pairs in TRL's conversational preference format: the served messages, then each answer as the reply."""
    return [
        {"prompt": pair.messages, "chosen": [{"role": "assistant", "content": pair.chosen}], "rejected": [{"role": "assistant", "content": pair.rejected}]}
        for pair in pairs
    ]


def train_adapter(
    pairs: Sequence[PairRow],
    base: Path,
    out_dir: Path,
    args: GeneratorTrainingArgs = GeneratorTrainingArgs(),
    callbacks: Sequence = (),
) -> dict:
    """Train a LoRA adapter on `base` (a transformers folder) from the pairs; writes the peft adapter to
    `out_dir` and returns the trainer's figures. `callbacks`: transformers TrainerCallbacks (a job's progress and
    cancellation: `JobReporter.training_callback`)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise GeneratorTrainingError("no preference pairs to train on")

    started = time.perf_counter()
    bf16 = args.bf16 if args.bf16 is not None else native_bf16()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="citeloop-dpo-") as scratch:
        config = DPOConfig(
            output_dir=scratch,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation,
            learning_rate=args.learning_rate,
            beta=args.beta,
            max_length=args.max_length,
            precompute_ref_log_probs=True,
            # TRL turns it on by default to save GPU memory; a 135M-0.5B model's activations fit in RAM, and
            # recomputing them costs a forward pass per step.
            gradient_checkpointing=args.gradient_checkpointing,
            seed=args.seed,
            data_seed=args.seed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            bf16=bf16,
            use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told it runs on the CPU
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        lora = LoraConfig(
            r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=list(args.target_modules), task_type="CAUSAL_LM"
        )
        with completion_positions_only():
            trainer = DPOTrainer(
                model=model, args=config, train_dataset=Dataset.from_list(dpo_rows(pairs)), processing_class=tokenizer, peft_config=lora, callbacks=list(callbacks)
            )
            result = trainer.train()
    trainer.model.save_pretrained(out_dir)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    last = steps[-1] if steps else {}
    return {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "train_loss": round(float(result.training_loss), 4),
        "final_reward_accuracy": round(float(last.get("rewards/accuracies", 0.0)), 4),
        "final_reward_margin": round(float(last.get("rewards/margins", 0.0)), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
        "bf16": bf16,
    }


def adapter_to_gguf(adapter_dir: Path, base: Path, out_file: Path, tools: Path = LLAMA_CPP_TOOLS) -> Path:
    """llama.cpp's converter: the peft adapter in `adapter_dir` (trained on the transformers folder `base`) as a
    GGUF LoRA, f32 so that serving adds exactly the trained deltas."""
    script = tools / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise GeneratorTrainingError(f"{script} is missing: llama.cpp's converter is installed by `make install`")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tools / "gguf-py"), str(tools)]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(adapter_dir), "--base", str(base), "--outfile", str(out_file), "--outtype", "f32"],
        env=env, capture_output=True, text=True,
    )
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise GeneratorTrainingError(f"converting the adapter {adapter_dir} to GGUF failed: {tail}")
    return out_file


def prompt_token_ids(base: Path, messages: list[dict[str, str]], answer: str) -> tuple[list[int], int]:
    """The token ids of the rendered prompt followed by the answer, and where the answer starts: the sequence DPO
    scores a reply with."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def peft_logprobs(base: Path, adapter_dir: Path | None, token_ids: list[int], start: int) -> list[float]:
    """The log-probability transformers (with the peft adapter, if any) gives each of token_ids[start:]."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([token_ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[i - 1, token_ids[i]]) for i in range(start, len(token_ids))]


def served_prompt_matches(base: Path, gguf: Path, messages: list[dict[str, str]]) -> bool:
    """llama.cpp renders the messages with the GGUF's chat template exactly as the trainer's tokenizer does."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    trained = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    text = lambda token: llm._model.token_get_text(token) if token != -1 else ""  # noqa: E731  (as llama.cpp does)
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()))
    return formatter(messages=messages).prompt == trained
