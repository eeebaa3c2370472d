"""GPT-2 weights in and out of Hugging Face `transformers` directories.

Our GPT uses GPT-2's parameter names, so the mapping is one-to-one with two twists:
  - HF's GPT-2 holds its four projections as Conv1D, weight (in, out), where our nn.Linear holds
    (out, in); those transpose on the way in and out.
  - A gptlab model without biases (bias=False) exports with zero biases, which compute the same.
Only safetensors files are read; a directory that holds only pytorch_model.bin (a pickle, which
can run code when loaded) is refused. Nothing here downloads and nothing imports `transformers`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptlab.atomic import CHECKSUMS, atomic_directory
from gptlab.checkpoint import (
    CHECKPOINT_OUTPUT,
    CONFIG,
    WEIGHTS,
    check_weights_fit,
    load_checkpoint,
    read_info,
    resolve_checkpoint,
    save_checkpoint,
)
from gptlab.config import ModelConfig, RunConfig
from gptlab.data.format import tokenizer_record
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.outputs import OutputKind, claim_output
from gptlab.tokenizers import Tokenizer

SHARD_INDEX = "model.safetensors.index.json"  # save_pretrained splits large models into shards
# What export_hf writes (and save_pretrained may add): a directory holding only these is an export it may replace.
EXPORT_FILES = (
    CONFIG,
    WEIGHTS,
    CHECKSUMS,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation, as in our MLP
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which our model uses
# Old GPT-2 files also store each layer's causal mask as a buffer; we build masks on the fly.
MASK_BUFFERS = ("attn.bias", "attn.masked_bias")

# Model options GPT-2 cannot express: (field, GPT-2's value, why), read with getattr so a
# ModelConfig without the field counts as GPT-2's.
GPT2_OPTIONS = (
    ("arch", "gpt", "only the transformer GPT maps onto GPT-2, not the bigram table"),
    ("positions", "learned", "GPT-2 adds a learned position table (wpe); rotary positions have no place in it"),
    ("norm", "layernorm", "GPT-2 uses LayerNorm, which RMSNorm is not (no mean subtraction, no bias)"),
    ("norm_position", "pre", "GPT-2 normalises before attention and MLP (pre-LN), not after"),
    ("activation", "gelu", "GPT-2's MLP is GELU (tanh form); other activations compute different functions"),
    ("qk_norm", False, "GPT-2's attention has no query/key normalisation"),
    ("tie_embeddings", True, "transformers' GPT-2 checkpoints here tie the LM head to the token embedding"),
)


def is_hf_export(path: Path) -> bool:
    """A Hugging Face GPT-2 directory as export_hf writes it: a gpt2 config.json, weights, and no other files."""
    path = Path(path)
    try:
        hf = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(hf, dict)
        and hf.get("model_type") == "gpt2"
        and (path / WEIGHTS).is_file()
        and all(p.name in EXPORT_FILES and p.is_file() for p in path.iterdir())
    )


HF_EXPORT_OUTPUT = OutputKind("a Hugging Face export written by gptlab export-hf", "that export", is_hf_export)


def gpt2_incompatibilities(cfg: ModelConfig) -> list[str]:
    """The options of `cfg` that GPT-2 cannot represent, each with the reason; empty if it exports."""
    problems = [
        f"{name}={getattr(cfg, name)!r} (GPT-2: {gpt2!r}): {why}"
        for name, gpt2, why in GPT2_OPTIONS
        if getattr(cfg, name, gpt2) != gpt2
    ]
    n_kv_head = getattr(cfg, "n_kv_head", 0)
    if n_kv_head not in (0, cfg.n_head):
        problems.append(
            f"n_kv_head={n_kv_head} (GPT-2: n_head={cfg.n_head}): GPT-2 has a key/value head per query head, no "
            "grouped-query attention"
        )
    return problems


def model_config_from_hf(hf: dict[str, Any], source: Path) -> ModelConfig:
    """A GPT-2 config.json -> our ModelConfig, or an error naming what GPT-2 feature we lack."""

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise GptlabError(
                f"{source}: {what}; gptlab can import only GPT-2 models that compute what its GPT computes"
            )

    need(hf.get("model_type", "gpt2") == "gpt2", f"model_type is {hf.get('model_type')!r}, not 'gpt2'")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        need(isinstance(hf.get(key), int), f"config.json has no integer {key!r}")
    act = hf.get("activation_function", "gelu_new")
    need(
        act in TANH_GELU,
        f"activation_function is {act!r}; gptlab's GPT-2 MLP uses the tanh GELU ({' or '.join(TANH_GELU)})",
    )
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPS)
    need(abs(eps - LAYER_NORM_EPS) <= 1e-12, f"layer_norm_epsilon is {eps}; gptlab's LayerNorm uses {LAYER_NORM_EPS}")
    n_inner = hf.get("n_inner")
    need(
        n_inner in (None, 4 * hf["n_embd"]),
        f"n_inner is {n_inner}; gptlab's MLP is 4 * n_embd = {4 * hf['n_embd']} wide",
    )
    need(
        hf.get("scale_attn_weights", True),
        "scale_attn_weights is false; gptlab scales attention scores by 1/sqrt(head size)",
    )
    need(
        not hf.get("scale_attn_by_inverse_layer_idx", False),
        "scale_attn_by_inverse_layer_idx is true; gptlab does not scale attention by layer",
    )
    need(not hf.get("add_cross_attention", False), "add_cross_attention is true; gptlab's GPT is decoder-only")
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=0.0,
        bias=True,
    )
    for name, gpt2, _ in GPT2_OPTIONS:  # pin GPT-2's choices, whatever the defaults are
        if hasattr(cfg, name):
            setattr(cfg, name, gpt2)
    cfg.validate()
    return cfg


def hf_config_from_model(cfg: ModelConfig, eot_id: int) -> dict[str, Any]:
    """Our ModelConfig -> the config.json of a transformers GPT2LMHeadModel."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def weight_files(src: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (one file, or shards listed by an index)."""
    if (src / WEIGHTS).is_file():
        return {name: src / WEIGHTS for name in read_safetensors_names(src / WEIGHTS)}
    if (src / SHARD_INDEX).is_file():
        try:
            weight_map = json.loads((src / SHARD_INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GptlabError(f"{src / SHARD_INDEX} is corrupt; fetch the model directory again") from None
        return {name: src / file for name, file in weight_map.items()}
    if any((src / name).exists() for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise GptlabError(
            f"{src} has no {WEIGHTS}: gptlab reads only safetensors (a pytorch_model.bin is a pickle that can run code "
            "when loaded); fetch the model's model.safetensors, or convert a file you trust with transformers' "
            "save_pretrained"
        )
    raise GptlabError(
        f"{src} holds no {WEIGHTS}; point at a Hugging Face GPT-2 directory (config.json + model.safetensors)"
    )


def read_safetensors_names(path: Path) -> list[str]:
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise GptlabError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:100]}); fetch it again"
        ) from None


@torch.no_grad()
def load_hf_weights(model: GPT, files: dict[str, Path]) -> None:
    """Copy HF GPT-2 tensors into `model`, transposing Conv1D weights; every parameter must be found."""
    # GPT2LMHeadModel.save_pretrained prefixes "transformer."; files saved from GPT2Model do not.
    names = {name.removeprefix("transformer."): name for name in files}
    used = set()
    handles: dict[Path, Any] = {}
    try:
        for name, param in model.named_parameters():  # the tied lm_head.weight is listed once, as wte
            key = name.removeprefix("transformer.")
            if key not in names:
                raise GptlabError(
                    f"the weights have no tensor {key!r}; this is not a GPT-2 model of the shape its config.json says"
                )
            path = files[names[key]]
            if path not in handles:
                handles[path] = safe_open(str(path), "pt")
            tensor = handles[path].get_tensor(names[key])
            if key.endswith(CONV1D):
                tensor = tensor.t()
            if tensor.shape != param.shape:
                raise GptlabError(
                    f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)} from config.json"
                )
            param.copy_(tensor)
            used.add(names[key])
        if "lm_head.weight" in names:  # a saved head must be the embedding, as GPT-2 ties them
            path = files[names["lm_head.weight"]]
            handles.setdefault(path, safe_open(str(path), "pt"))
            if not torch.equal(
                handles[path].get_tensor("lm_head.weight").to(model.lm_head.weight.dtype), model.lm_head.weight
            ):
                raise GptlabError(
                    "lm_head.weight differs from the token embedding wte; gptlab imports only GPT-2 models with a "
                    "tied head"
                )
            used.add("lm_head.weight")
    except (SafetensorError, OSError) as e:
        raise GptlabError(
            f"the weight files cannot be read ({str(e).splitlines()[0][:100]}); fetch them again"
        ) from None
    unexpected = [n for n in files if n not in used and not n.endswith(MASK_BUFFERS)]
    if unexpected:
        raise GptlabError(
            f"the weights hold tensors GPT-2 does not have ({', '.join(unexpected[:3])}); this is not a GPT-2 model"
        )


def read_hf_config(src: Path) -> ModelConfig:
    if not (src / CONFIG).is_file():
        raise GptlabError(
            f"{src} has no {CONFIG}; point at a Hugging Face GPT-2 directory (config.json + model.safetensors)"
        )
    try:
        hf_config = json.loads((src / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GptlabError(f"{src / CONFIG} is not valid JSON; fetch the model directory again") from None
    if not isinstance(hf_config, dict):
        raise GptlabError(
            f"{src / CONFIG} holds a {type(hf_config).__name__}, not a JSON object; it is not a Hugging Face config, "
            "fetch the model directory again"
        )
    return model_config_from_hf(hf_config, src / CONFIG)


def check_hf_weights_fit(cfg: ModelConfig, files: dict[str, Path], device: str = "cpu") -> None:
    """Before the model is built: the weights' headers must hold the shapes config.json makes (Conv1D
    transposed), and the model must fit in memory."""
    shapes = {}
    for path in set(files.values()):
        try:
            with safe_open(str(path), "pt") as f:
                for name in f.keys():
                    shape = tuple(f.get_slice(name).get_shape())
                    key = name.removeprefix("transformer.")  # mask buffers match no parameter: not compared
                    shapes["transformer." + key if key != "lm_head.weight" else key] = (
                        shape[::-1] if key.endswith(CONV1D) else shape
                    )
        except (SafetensorError, OSError) as e:
            raise GptlabError(
                f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:100]}); fetch it again"
            ) from None
    check_weights_fit(cfg, shapes, next(iter(files.values())), device)


def gpt2_model_from_hf(src_dir: Path) -> GPT:
    """The GPT-2 model in a local Hugging Face directory (config.json + safetensors) as our GPT."""
    src = Path(src_dir)
    cfg, files = read_hf_config(src), weight_files(src)
    check_hf_weights_fit(cfg, files)
    model = GPT(cfg)
    load_hf_weights(model, files)
    return model.eval()


def import_gpt2_tokenizer(src: Path, tokenizer_file: Path | None) -> Tokenizer:
    """GPT-2's tokenizer from `tokenizer_file`, else from the directory's vocab.json + merges.txt or tokenizer.json."""
    from gptlab.tokenizers.gpt2 import GPT2Tokenizer

    if tokenizer_file is not None:
        return GPT2Tokenizer.from_file(tokenizer_file)
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        return GPT2Tokenizer.from_file(src / "vocab.json")
    if (src / "tokenizer.json").is_file():  # what save_pretrained of a fast tokenizer writes
        with tempfile.TemporaryDirectory() as tmp:
            return GPT2Tokenizer.from_file(vocab_merges_from_tokenizer_json(src / "tokenizer.json", Path(tmp)))
    raise GptlabError(
        f"{src} holds no GPT-2 tokenizer (vocab.json + merges.txt, or tokenizer.json); "
        "pass --tokenizer-file PATH to gpt2.tiktoken or vocab.json"
    )


def vocab_merges_from_tokenizer_json(path: Path, out_dir: Path) -> Path:
    """Write the BPE vocabulary and merges inside a tokenizer.json as vocab.json + merges.txt; return vocab.json."""
    try:
        model = json.loads(path.read_text())["model"]
        vocab, merges = model["vocab"], model["merges"]
        if model.get("type", "BPE") != "BPE":
            raise KeyError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise GptlabError(
            f"{path} is not a BPE tokenizer.json; pass --tokenizer-file PATH to GPT-2's gpt2.tiktoken or vocab.json"
        ) from None
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    pairs = (m if isinstance(m, str) else " ".join(m) for m in merges)  # "a b" in older files, ["a", "b"] in newer
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(p + "\n" for p in pairs))
    return out_dir / "vocab.json"


def import_gpt2(src_dir: Path, out_dir: Path, tokenizer_file: Path | None = None, overwrite: bool = False) -> Path:
    """A local Hugging Face GPT-2 directory -> a gptlab checkpoint directory with the GPT-2 tokenizer."""
    src, out = Path(src_dir), Path(out_dir)
    inputs = [src] + ([tokenizer_file] if tokenizer_file else [])
    with claim_output(out, CHECKPOINT_OUTPUT, overwrite, inputs):
        cfg, files = read_hf_config(src), weight_files(src)  # cheap checks (config, file headers) before any loading
        check_hf_weights_fit(cfg, files)
        tokenizer = import_gpt2_tokenizer(src, tokenizer_file)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise GptlabError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}; "
                "give the tokenizer this model was trained with"
            )
        model = GPT(cfg)
        load_hf_weights(model, files)
        info = {
            "tokenizer": tokenizer_record(tokenizer),
            "imported_from": {"format": "huggingface-gpt2", "dir": str(src.resolve())},
            "step": 0,
        }
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer_path = tokenizer.save(Path(tmp))
            return save_checkpoint(out, model, RunConfig(model=cfg), info, files=[tokenizer_path])


def export_hf(checkpoint: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """A gptlab checkpoint (or run directory) -> a directory transformers' Auto* classes load offline."""
    from gptlab.interop.hf_tokenizers import save_hf_tokenizer

    out = Path(out_dir)
    with claim_output(out, HF_EXPORT_OUTPUT, overwrite, inputs=[checkpoint], flag="OUT_DIR"):
        ckpt_dir = resolve_checkpoint(checkpoint)
        problems = gpt2_incompatibilities(RunConfig.from_dict(read_info(ckpt_dir)["run"]).model)  # before the weights
        if problems:
            raise GptlabError(f"{ckpt_dir} cannot be written as GPT-2: " + "; ".join(problems))
        ckpt = load_checkpoint(ckpt_dir)
        cfg = ckpt.config.model
        with atomic_directory(out) as tmp:
            save_file(hf_state_dict(ckpt.model), str(tmp / WEIGHTS), metadata={"format": "pt"})
            (tmp / CONFIG).write_text(json.dumps(hf_config_from_model(cfg, ckpt.tokenizer.eot_id), indent=2) + "\n")
            save_hf_tokenizer(ckpt.tokenizer, tmp, cfg.block_size)
    return out


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF GPT2LMHeadModel's names and layouts; missing biases filled with zeros."""
    cfg = model.config
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to wte; transformers re-ties it on load
        out[name] = (tensor.t() if name.endswith(CONV1D) else tensor).float().contiguous()
    if not cfg.bias:
        C = cfg.n_embd
        widths = {"ln_1": C, "attn.c_attn": 3 * C, "attn.c_proj": C, "ln_2": C, "mlp.c_fc": 4 * C, "mlp.c_proj": C}
        for i in range(cfg.n_layer):
            for part, width in widths.items():
                out[f"transformer.h.{i}.{part}.bias"] = torch.zeros(width)
        out["transformer.ln_f.bias"] = torch.zeros(C)
    return out
