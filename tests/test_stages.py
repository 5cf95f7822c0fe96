"""Stage-level behaviour without a model: bad inputs inside a run, strategies, the accelerate launch."""

import json

import pytest

from harness.config import load_config
from harness.errors import HarnessError
from harness.models import resolve_model
from harness.paths import RunLayout
from harness.stages import StageContext
from harness.strategies import CrossLingual, Multilingual, TranslateToEnglish, extract_translation


def _ctx(tmp_path, overrides=()):
    cfg, _ = load_config(None, ["languages=[en,es]", *overrides])
    layout = RunLayout(tmp_path / "run")
    out = layout.partial_dir(1, "reward")
    out.mkdir(parents=True)
    spec = resolve_model("smollm2-135m-instruct")
    return StageContext(cfg, layout, 1, "reward", out, spec, spec)


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


SAMPLES = [{"lang": "en", "id": "a", "prompt": "Hi", "prompt_en": "Hi",
            "responses": [{"text": "Hello", "n_tokens": 1, "finished": True},
                          {"text": "Hey there", "n_tokens": 2, "finished": True}]}]


def test_nan_log_prob_is_named(tmp_path):
    from harness.stages import reward

    ctx = _ctx(tmp_path)
    _write(ctx.upstream("sample") / "responses.jsonl", SAMPLES)
    (ctx.out / "policy_logps.jsonl").write_text(
        '{"lang": "en", "id": "a", "logps": [NaN, -3.0], "scored_tokens": [2, 3]}\n')
    _write(ctx.out / "ref_logps.jsonl", [{"lang": "en", "id": "a", "logps": [-1.0, -2.0], "scored_tokens": [2, 3]}])
    with pytest.raises(HarnessError) as e:
        reward.run(ctx)
    assert str(e.value) == f"{ctx.out / 'policy_logps.jsonl'}:1: policy log-prob of response 0 for en/a is nan"


def test_empty_response_set_is_named(tmp_path):
    from harness.stages import reward

    ctx = _ctx(tmp_path)
    _write(ctx.upstream("sample") / "responses.jsonl", [dict(SAMPLES[0], responses=[])])
    with pytest.raises(HarnessError, match=r"responses.jsonl:1: empty response set for en/a"):
        reward.run(ctx)


def test_malformed_stage_file_is_named(tmp_path):
    from harness.stages import pairs

    ctx = _ctx(tmp_path)
    p = ctx.upstream("reward") / "rewards.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text('{"lang": "en"}\n{"lang": \n')
    with pytest.raises(HarnessError, match=r"rewards.jsonl:2: malformed JSON line"):
        pairs.run(ctx)


def test_reward_prompts_per_strategy():
    assert CrossLingual().reward_instruction("en", "Hi", "Hi") == "Hi"
    es = CrossLingual().reward_instruction("es", "¿Hola?", "Hello?")
    assert es == ("Please answer the following instruction using only Spanish, unless explicitly instructed to "
                  "respond in a different language.\n\nHello?")
    assert Multilingual().reward_instruction("es", "¿Hola?", "Hello?") == "¿Hola?"
    t = TranslateToEnglish()
    assert t.reward_instruction("es", "¿Hola?", "Hello?") == "Hello?"
    assert t.pair_languages(["en", "es", "de"]) == ["es", "de"]
    assert "<sentence>\nHola\n</sentence>" in t.translation_instruction("Hola")


@pytest.mark.parametrize("raw,expected", [
    ("<translated>\nHello\n</translated> trailing", "Hello"),
    ("<translated>\nHello", "Hello"),
    ("<translated>\n</translated>", ""),
    ("<translated>", "Translation Error"),
])
def test_extract_translation(raw, expected):
    assert extract_translation(raw) == expected


def test_accelerate_launch_command_is_built_and_parsed(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    from harness.stages.train import launch_command, uses_accelerate

    ds = tmp_path / "zero3.yaml"
    ds.write_text("distributed_type: DEEPSPEED\n")
    cfg, _ = load_config(None, [f"train.accelerate={{num_processes: 8, config_file: {ds}, "
                                "extra_args: [--mixed_precision, bf16]}"])
    assert uses_accelerate(cfg.train)
    cmd = launch_command(cfg.train, tmp_path / "runs/x", 2)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.num_processes == 8 and args.config_file == str(ds) and args.mixed_precision == "bf16"
    assert args.module and args.training_script == "harness.stages"
    assert args.training_script_args == [str(tmp_path / "runs/x"), "2", "train"]
    cfg1, _ = load_config(None)
    assert not uses_accelerate(cfg1.train)


def test_accelerate_launch_picks_a_free_port_only_on_one_machine_without_one(tmp_path):
    import socket

    from accelerate.commands.launch import launch_command_parser

    from harness.stages.train import launch_command

    def port(overrides, pick=True):
        cfg, _ = load_config(None, ["train.accelerate.num_processes=2", *overrides])
        args = launch_command_parser().parse_args(launch_command(cfg.train, tmp_path, 1, pick_port=pick)[3:])
        return args.main_process_port

    picked = port([])
    assert picked and picked != 29500
    with socket.socket() as s:  # free when picked: it binds
        s.bind(("127.0.0.1", picked))
    assert port([], pick=False) is None  # the bare command (what --dry-run prints) stays as configured
    assert port(["train.accelerate.extra_args=[--main_process_port, '29611']"]) == 29611
    assert port(["train.accelerate.extra_args=['--main_process_port=29612']"]) == 29612
    assert port(["train.accelerate.extra_args=[--num_machines, '2']"]) is None  # nodes must agree: the user's
    two_nodes = tmp_path / "two_nodes.yaml"
    two_nodes.write_text("distributed_type: MULTI_GPU\nnum_machines: 2\n")
    assert port([f"train.accelerate.config_file={two_nodes}"]) is None
    with_port = tmp_path / "with_port.yaml"
    with_port.write_text("distributed_type: MULTI_GPU\nmain_process_port: 29613\n")
    assert port([f"train.accelerate.config_file={with_port}"]) is None  # accelerate reads it from the file


def test_dpo_config_fields_exist_in_installed_trl():
    from harness.stages.train import check_dpo_kwargs, dpo_kwargs

    cfg, _ = load_config(None)
    check_dpo_kwargs(dpo_kwargs(cfg.train, __import__("pathlib").Path("/tmp"), 0))
    with pytest.raises(HarnessError, match="no field.*rpo_alpha"):
        check_dpo_kwargs({**dpo_kwargs(cfg.train, __import__("pathlib").Path("/tmp"), 0), "rpo_alpha": 1.0})


@pytest.mark.model
def test_compact_cpu_lm_head_gives_trls_log_probs_and_loss(tmp_path):
    """harness.stages.train.cpu_lm_head (only labelled positions through TRL's fused head, smaller vocabulary tiles)
    computes what TRL's own CPU path computes: the same reference log-probs and the same loss and gradient step.
    The stage's model (load_train_model: eager attention on CPU) is as close to float32 as sdpa under bf16 autocast.
    It trains in the precision ``auto`` picks on this CPU: bf16 autocast where the CPU has bf16 kernels; fp32 elsewhere (on
    an AVX2-only CPU bf16 autocast made this test take 500 s), where every comparison holds all the tighter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.config import TrainConfig
    from harness.data import load_english_prefs
    from harness.models import format_prompt, resolve_model
    from harness.stages.train import build_dpo_config, build_trainer, cpu_lm_head, load_train_model

    spec = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(spec.local_path())
    pairs, _ = load_english_prefs("builtin:english_prefs", 4)  # one step of 4; the reference pass reads all
    rows = [{"prompt": format_prompt(spec, tok, p.prompt), "chosen": p.chosen + tok.eos_token,
             "rejected": p.rejected + tok.eos_token} for p in pairs]
    from harness.hardware import cpu_bf16

    bf16 = cpu_bf16()
    tc = TrainConfig(batch_size=4, precision="bf16_cpu" if bf16 else "fp32", max_length=128, extra={"max_steps": 1})
    out = {}
    # without bf16 kernels the stage already trains in fp32: its run is the fp32 one (a fourth would repeat it)
    for compact in (False, True, "stage", "fp32") if bf16 else (False, True, "stage"):
        torch.manual_seed(0)
        if compact == "fp32":
            tc = TrainConfig(batch_size=4, precision="fp32", max_length=128, extra={"max_steps": 1})
        if compact in ("stage", "fp32"):
            model = load_train_model(spec.local_path(), torch.float32)
            assert model.config._attn_implementation == "eager"  # on CPU
        else:
            model = AutoModelForCausalLM.from_pretrained(spec.local_path(), dtype=torch.float32)
            assert model.config._attn_implementation == "sdpa"
        with cpu_lm_head(bool(compact)):
            trainer = build_trainer(model, tok, rows, tc, build_dpo_config(tc, tmp_path / str(compact), 0), 0)
            trainer.train()
        ds = trainer.train_dataset
        (logged,) = [h for h in trainer.state.log_history if "loss" in h]
        out[compact] = (torch.tensor(list(ds["ref_chosen_logps"]) + list(ds["ref_rejected_logps"])), logged["loss"],
                        logged["grad_norm"])
    (ref_a, loss_a, g_a), (ref_b, loss_b, g_b) = out[False], out[True]
    import trl.trainer.utils as tu

    assert tu._CHUNKED_LOGPROB_CHUNK_SIZE == 32768  # restored after the context
    print(f"\nmax |ref logp diff| {float((ref_a - ref_b).abs().max()):.2e} nats; loss {loss_a:.6f} vs {loss_b:.6f}; "
          f"grad norm {g_a:.5f} vs {g_b:.5f}")
    assert torch.allclose(ref_a, ref_b, atol=2e-3, rtol=0)  # bf16 autocast: the GEMM's row count may change blocking
    assert loss_a == pytest.approx(loss_b, abs=2e-3) and g_a == pytest.approx(g_b, rel=1e-2)
    ref_c, loss_c, g_c = out["stage"]
    ref_f, loss_f, _ = out.get("fp32", out["stage"])
    err_sdpa, err_eager = (ref_b - ref_f).abs(), (ref_c - ref_f).abs()
    print(f"vs float32: sdpa mean {float(err_sdpa.mean()):.3f} max {float(err_sdpa.max()):.3f} nats, eager mean "
          f"{float(err_eager.mean()):.3f} max {float(err_eager.max()):.3f}; loss {loss_b:.5f} / {loss_c:.5f} / "
          f"{loss_f:.5f}")
    # bf16 autocast rounds attention differently per implementation: measured on 64 stage-0 sequences, sdpa is
    # 0.29 nats from float32 on average (max 1.09) and eager 0.23 (max 0.83)
    assert float(err_eager.mean()) < 0.35 and float(err_eager.max()) < 1.5
    assert loss_c == pytest.approx(loss_b, abs=0.02) and g_c == pytest.approx(g_b, rel=0.05)


def test_length_batches_split_sorted_lengths_where_padding_costs_more_than_a_batch():
    from harness.backends import _length_batches

    lengths = [43, 205, 61, 200, 44, 120, 0, 62]
    one = _length_batches(lengths, budget=10**6, max_batch=32, overhead=10**6)
    assert one == [sorted(range(8), key=lambda i: lengths[i])]  # a batch costs more than any padding
    each = _length_batches(lengths, budget=10**6, max_batch=32, overhead=0)
    assert [len(b) for b in each] == [1] * 8  # padding costs, batches do not
    mid = _length_batches(lengths, budget=10**6, max_batch=32, overhead=256)
    # 5 x 62 + 3 x 205 + 2 x 256 = 1,437 slots: fewer than any other split (one batch: 8 x 205 + 256 = 1,896)
    assert [[lengths[i] for i in b] for b in mid] == [[0, 43, 44, 61, 62], [120, 200, 205]]
    # at most max_batch rows and budget slots per batch; a row longer than the budget runs alone
    capped = _length_batches(lengths, budget=300, max_batch=2, overhead=10**6)
    assert all(len(b) <= 2 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 300) for b in capped)
    assert sorted(i for b in capped for i in b) == list(range(8))
    assert _length_batches([], budget=100, max_batch=4, overhead=0) == []


def test_pair_plan_shares_only_what_pairs_have_in_common():
    """harness.prefix.pair_plan: rows i and B+i (chosen, rejected) share their common leading tokens, each keeping
    one to continue with; a batch it does not fit runs the body's own forward (None)."""
    import torch

    from harness.prefix import pair_plan

    def batch(rows):
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return ids, torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])

    prompt = list(range(1, 21))  # 20 tokens, then short answers
    rows = [prompt + [50, 51], prompt[:15] + [60], prompt + [52, 53, 54], prompt[:15] + [61, 62]]
    plens, lens = pair_plan(*batch(rows))
    assert plens.tolist() == [20, 15] and lens.tolist() == [22, 16, 23, 17]
    same = pair_plan(*batch([prompt + [7], prompt + [7]]))  # identical rows keep their last token
    assert same is not None and same[0].tolist() == [20]
    assert pair_plan(*batch(rows[:3])) is None  # odd rows
    assert pair_plan(*batch([prompt + [1], [99] + prompt])) is None  # nothing in common
    assert pair_plan(*batch([[1] + [2] * 9, [1] + [3] * 9])) is None  # 19 token slots instead of 20: too little
    ids, mask = batch(rows)
    assert pair_plan(ids, mask.flip(1)) is None  # left padding
    assert pair_plan(ids, None) is None


@pytest.mark.model
def test_a_pairs_prompt_run_once_gives_the_log_probs_and_gradients_of_a_whole_forward():
    """The train stage's CPU step (harness.prefix.shared_prompt_forward) on a batch from TRL's own DPO collator: the
    same per-sequence log-probs and parameter gradients as the plain forward, in float32, while running each
    pair's prompt once; outside the context the body's own forward is back."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from harness.data import load_english_prefs
    from harness.prefix import shared_prompt_forward
    from harness.stages.train import load_train_model, trainer_rows, training_tokenizer

    spec = resolve_model("smollm2-135m-instruct")
    tok, eot = training_tokenizer(spec)
    pairs, _ = load_english_prefs("builtin:english_prefs", 4)
    rows = trainer_rows([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs], spec, tok,
                        eot)
    examples = [{"prompt_ids": tok(r["prompt"], add_special_tokens=False).input_ids,
                 **{f"{k}_ids": tok(r[k], add_special_tokens=False).input_ids for k in ("chosen", "rejected")}}
                for r in rows]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=96)(examples)  # some cut at 96
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model = load_train_model(spec.local_path(), torch.float32)
    add_fused_lm_head(model)
    body = model.model
    out = {}
    for share in (False, True):
        model.zero_grad()
        with shared_prompt_forward(model, share) as f:
            lp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                       fused_lm_head=True, use_cache=False).log_probs.sum(1)
            (lp[:4] - lp[4:]).sum().backward()
        out[share] = lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, f and f.shared
    (a, ga, _), (b, gb, shared) = out[False], out[True]
    assert shared == 1 and "forward" not in vars(body)
    worst_grad = max(float((ga[n] - gb[n]).norm() / ga[n].norm()) for n in ga)
    print(f"\nmax |log-prob diff| {float((a - b).abs().max()):.1e} nats; worst relative gradient diff {worst_grad:.1e}")
    assert torch.allclose(a, b, atol=2e-4, rtol=0) and float(a.abs().min()) > 1
    assert worst_grad < 1e-4
    # training under gradient checkpointing: the body's own forward (recomputed layers would write the cache twice)
    model.gradient_checkpointing_enable()
    model.train()
    with torch.no_grad(), shared_prompt_forward(model) as f:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
              fused_lm_head=True, use_cache=False)
    assert f.shared == 0
